"""The normgen command line: commands work, user errors exit 2 with a message and no
traceback, a failed check exits 1. In process (cli.main), but for one smoke test of
`python -m normgen` itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from normgen import cli
from normgen.verify import oracle

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys):
    """`normgen ARGS` in this process: its exit code, stdout and stderr."""
    def run(*args) -> Ran:
        try:
            code = cli.main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)
    return run


def test_python_m_normgen_runs_the_cli():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "normgen", "list"], capture_output=True, text=True, env=env,
                         check=False)
    assert out.returncode == 0 and "group_norm" in out.stdout and "switchable_norm" in out.stdout
    out = subprocess.run([sys.executable, "-m", "normgen", "frobnicate"], capture_output=True, text=True, env=env,
                         check=False)
    assert out.returncode == 2 and "invalid choice: 'frobnicate'" in out.stderr and "Traceback" not in out.stderr


def test_list_and_show(run):
    out = run("list")
    assert out.returncode == 0 and "group_norm" in out.stdout and "switchable_norm" in out.stdout
    out = run("show", "group_norm")
    assert out.returncode == 0
    assert "kept       N G   reduced: c *spatial" in out.stdout
    assert "num_groups= gives G" in out.stdout


def test_plan_prints_the_loop_nest(run):
    out = run("plan", "batch_norm", "--shape", "32,128,56,56", "--layout", "channels_last")
    assert out.returncode == 0, out.stderr
    assert "strategy columns" in out.stdout and "loop nest:" in out.stdout
    out = run("plan", "batch_norm", "--shape", "32,128,56,56", "--strides", "401408,1,7168,128", "--backward")
    assert out.returncode == 0 and "backward" in out.stdout


def test_bad_spec_file_exits_2_with_a_located_message(run, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('input = "N C *spatial"\nkept = "N K"\n')
    for cmd in (["show", str(bad)], ["check", str(bad)], ["plan", str(bad), "--shape", "2,3"]):
        out = run(*cmd)
        assert out.returncode == 2, (cmd, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
        assert f"{bad}:2:11: key 'kept': unknown axis 'K'" in out.stderr
        assert "          ^" in out.stderr


def test_bad_call_exits_2(run):
    out = run("plan", "group_norm", "--shape", "2,6,4", "--size", "num_groups=4")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "which G=4 does not divide" in out.stderr
    out = run("show", "no_such_norm")
    assert out.returncode == 2 and "no bundled spec named 'no_such_norm'" in out.stderr


def test_usage_errors_exit_2(run):
    assert run("plan", "group_norm").returncode == 2
    assert run("frobnicate").returncode == 2


def test_generate_and_check_a_user_spec(run, tmp_path):
    spec = tmp_path / "pos_norm.toml"
    spec.write_text(textwrap.dedent('''
        name = "pos_norm"
        doc = "Statistics per position (H, W) over the batch and the channels."
        input = "N C H W"
        kept = "H W"
        [affine]
        axes = "C"
    '''))
    out = run("generate", str(spec), "--shape", "8,16,4,4", "-o", str(tmp_path / "gen"), "-q")
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "gen").iterdir())
    assert files == ["pos_norm.contiguous.float32.rows.backward.py", "pos_norm.contiguous.float32.rows.forward.py"]
    out = run("check", str(spec), "--dtype", "float64", "--layout", "contiguous")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pos_norm" in out.stdout and "OK" in out.stdout


def test_a_mismatch_fails_the_check(monkeypatch, capsys):
    real = oracle.forward

    def wrong(*args, **kwargs):
        out = real(*args, **kwargs)
        out.y = out.y + 1e-3
        return out

    monkeypatch.setattr(oracle, "forward", wrong)
    code = cli.main(["check", "standardize", "--dtype", "float64", "--layout", "contiguous"])
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL small (3, 4) contiguous float64 train" in out and "y = 7.07e-04 > 1e-09" in out
    assert "standardize: 2 FAILED" in out


def test_cache_info(run, tmp_path, monkeypatch):
    env_dir = tmp_path / "c"
    monkeypatch.setenv("NORMGEN_CACHE_DIR", str(env_dir))
    out = run("cache", "info")
    assert out.returncode == 0 and str(env_dir) in out.stdout


def test_main_returns_2_for_errors_in_process(capsys):
    assert cli.main(["show", "nope"]) == 2
    assert "no bundled spec" in capsys.readouterr().err
