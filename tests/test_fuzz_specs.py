"""Hostile spec files: random text, random TOML of the right and wrong shapes, and
mutations of the bundled specs. Each one loads, or raises SpecError with a location in
the file; never another exception, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normgen import Spec, SpecError, parse_spec
from normgen.testing.hostile import mutated_bundled, toml_specs

REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> None:
    try:
        spec = parse_spec(text, "fuzz.toml", default_name="fuzz")
    except SpecError as e:
        assert e.location is not None and e.location.file == "fuzz.toml", str(e)
        assert str(e).startswith("fuzz.toml"), str(e)
        return
    assert isinstance(spec, Spec)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


@FUZZ
@given(toml_specs())
def test_random_toml_with_spec_keys(text):
    check(text)


@FUZZ
@given(mutated_bundled())
def test_mutated_bundled_specs(text):
    check(text)


def test_deep_nesting_huge_numbers_and_unicode():
    check("input = " + "[" * 5000 + "]" * 5000 + "\n")
    check("input = {" + "a = {" * 500 + "}" * 501 + "\n")
    check('input = "N C"\nkept = "N"\neps = 1e999999\n')
    check('input = "N (G c)"\nkept = "N G"\n[sizes]\nG = 99999999999999999999999\n')
    check('input = "Ñ Ç"\nkept = "Ñ"\n')
    check('input = "N C"\nkept = "N"\nname = "名前"\n')
    check("\x00\x01\x02")
    check("﻿input = \"N C\"\nkept = \"N\"\n")  # byte-order mark


def test_cli_answers_exit_2_naming_the_file(tmp_path):
    bad = {"text.toml": "this is not toml", "binary.toml": None, "wrong.toml": 'input = 5\nkept = "N"\n',
           "nested.toml": "input = " + "[" * 100 + "]" * 100}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name, text in bad.items():
        path = tmp_path / name
        if text is None:
            path.write_bytes(os.urandom(64) + b"\xff\xfe")
        else:
            path.write_text(text)
        out = subprocess.run([sys.executable, "-m", "normgen", "show", str(path)], capture_output=True, text=True,
                             env=env)
        assert out.returncode == 2, (name, out.stderr)
        assert str(path) in out.stderr and "Traceback" not in out.stderr, (name, out.stderr)
