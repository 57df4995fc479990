"""`normgen check`: a representative part of the matrix by default, all of it with --full,
a status line on stderr unless --quiet; `generate` shows one too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from normgen.op import load
from normgen.verify import matrix

REPO = Path(__file__).resolve().parent.parent
ARGS = ("check", "layer_norm", "--dtype", "float64", "--layout", "contiguous", "--layout", "sliced")


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "normgen", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def _checks(stdout: str) -> int:
    row = re.search(r"^layer_norm +(\d+) +(\d+) ", stdout, re.M)
    assert row, stdout
    assert row.group(2) == "0", stdout  # none failed
    return int(row.group(1))


def test_default_full_and_quiet():
    every = len(matrix.full(load("layer_norm").spec, ("contiguous", "sliced"), ("float64",)))
    out = run(*ARGS, "--full")
    assert out.returncode == 0, out.stdout + out.stderr
    assert _checks(out.stdout) == every and "of the full matrix" not in out.stdout
    out = run(*ARGS)
    assert out.returncode == 0, out.stdout + out.stderr
    n = _checks(out.stdout)
    assert 0 < n < every and f"{n} of the {every} checks of the full matrix, --full runs all" in out.stdout
    # not a terminal: plain status lines on stderr, the first one at once
    lines = out.stderr.splitlines()
    assert lines[0] == "check · planning · 0s", out.stderr
    assert any(re.fullmatch(r"check layer_norm · kernels .* · checks \d+/\d+ · \d+s", ln) for ln in lines), lines
    out = run(*ARGS, "--quiet")
    assert out.returncode == 0 and out.stderr == "" and _checks(out.stdout) == n


def test_generate_shows_progress_and_quiet_silences_it(tmp_path):
    args = ("generate", "layer_norm", "--shape", "8,16", "--size", "normalized_shape=16", "-o", str(tmp_path))
    out = run(*args)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("generate: rendering the plans · ")
    assert "wrote" in out.stdout
    out = run(*args, "--quiet")
    assert out.returncode == 0 and out.stderr == "" and "unchanged" in out.stdout
