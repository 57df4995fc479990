"""The command line's user errors, in process: each exits 2 with a message that names what it
received and what it accepts, writes nothing, and starts no kernel; and the outputs issue 19
found wrong (file names, modes, plans of copies, backward formulas, --version)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from normgen import __version__, cli, cli_args
from normgen.runtime import cpu as cpu_runtime


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `normgen argv` in this process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse: usage errors, --version
        code = e.code
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"normgen {__version__}"


@pytest.mark.parametrize("shape, said", [("4,-3", "every dimension must be >= 1, got '4,-3'"),
                                         ("4,0", "a call runs no kernels"),
                                         ("4,,8", "integers separated by commas"),
                                         ("4,a", "integers separated by commas"),
                                         ("100000000000,100000000000", "expected at most 2**63 - 1")])
def test_bad_shapes_are_usage_errors(capsys, shape, said):
    code, out, err = run(capsys, "plan", "standardize", "--shape", shape)
    assert code == 2 and out == ""
    assert "argument --shape: " in err and said in err


def test_unknown_and_malformed_sizes_name_the_allowed_ones(capsys):
    code, _, err = run(capsys, "plan", "layer_norm", "--shape", "4,8", "--size", "normalized_shape=8",
                       "--size", "bogus=3")
    assert code == 2
    assert "--size bogus: layer_norm has no call-time size named 'bogus'" in err
    assert "allowed: normalized_shape (the shape of '*normalized')" in err
    code, _, err = run(capsys, "plan", "group_norm", "--shape", "4,8,3", "--size", "num_groups=2,3")
    assert code == 2 and "num_groups sizes axis 'G' and takes one integer" in err
    code, _, err = run(capsys, "plan", "standardize", "--shape", "4,8", "--size", "num_groups=2")
    assert code == 2 and "allowed: none: standardize takes no call-time sizes" in err
    code, _, err = run(capsys, "plan", "group_norm", "--shape", "4,8,3", "--size", "num_groups=2",
                       "--size", "num_groups=4")
    assert code == 2 and "--size num_groups given twice" in err


def test_bench_size_reaches_torch_as_a_shape(capsys, monkeypatch):
    """`bench --shape 256,1024 --size normalized_shape=1024` (its help's form) handed torch an int."""
    from normgen.bench import cpu as bench

    cases = []
    monkeypatch.setattr(bench, "run_cases", lambda cs, **kw: cases.extend(cs) or [])
    monkeypatch.setattr(bench, "table", lambda results: "")
    code, _, err = run(capsys, "bench", "--spec", "layer_norm", "--shape", "8,16", "--size", "normalized_shape=16",
                       "-q")
    assert code == 0, err
    (case,) = cases
    assert case.sizes == (("normalized_shape", (16,)),)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.shape).astype(np.float32)
    p = bench._params(case, rng, "float32")
    fn = bench._torch_runner(case, "forward", x, p, dict(case.sizes), True, None)
    y = np.asarray(fn().detach())
    xd = x.astype(np.float64)
    want = (xd - xd.mean(1, keepdims=True)) / np.sqrt(xd.var(1, keepdims=True) + 1e-5) * p["weight"] + p["bias"]
    assert np.abs(y - want).max() < 1e-4


@pytest.mark.parametrize("argv, said", [
    (["--spec", "layer_norm", "--shape", "8,16", "--size", "bogus=3"], "allowed: normalized_shape"),
    (["--spec", "nosuch", "--shape", "8,16"], "no bundled spec named 'nosuch'"),
    (["--spec", "layer_norm", "--providers", "normgen,foo"], "allowed: normgen, torch, numpy, copy"),
    (["--spec", "layer_norm", "--memory", "--target", "cuda"], "bench --memory measures CPU processes"),
    (["--spec", "layer_norm", "--device", "h100"], "--device is for --target cuda"),
    (["--spec", "layer_norm", "--eval"], "allowed: --eval with --shape"),
    (["--spec", "layer_norm", "--size", "normalized_shape=8"], "allowed: --size with --shape"),
    (["--case", "nothing like it"], "no benchmark case matches"),
    (["--spec", "layer_norm", "--shape", "8,16", "--size", "normalized_shape=16", "--eval"],
     "layer_norm has no running statistics to evaluate with"),
    (["--json", "/proc/normgen_nowhere/r.json"], "--json /proc/normgen_nowhere/r.json: cannot write there"),
    (["--memory", "--json", "/proc/normgen_nowhere/r.json"], "cannot write there (No such file or directory)"),
    (["--json", "x" * 300 + ".json"], "cannot write there (File name too long)"),
    (["--plot", "/"], "--plot /: is a folder"),
    (["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
    (["--repeat", "-1"], "argument --repeat: expected an integer >= 1"),
    (["--compile-budget", "nan"], "expected a number of seconds >= 0"),
])
def test_bench_refuses_before_timing_anything(capsys, monkeypatch, argv, said):
    from normgen.bench import cpu as bench

    monkeypatch.setattr(bench, "run_cases", lambda *a, **kw: pytest.fail("a refused benchmark ran"))
    code, _, err = run(capsys, "bench", *argv)
    assert code == 2 and said in err, err


def test_plot_without_matplotlib_is_an_error_before_the_benchmark(capsys, monkeypatch, tmp_path):
    from normgen.bench import cpu as bench

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr(bench, "run_cases", lambda *a, **kw: pytest.fail("ran before saying matplotlib is missing"))
    code, _, err = run(capsys, "bench", "--spec", "layer_norm", "--plot", str(tmp_path / "p.png"))
    assert code == 2 and "--plot draws with matplotlib, which is not installed" in err
    assert "pip install 'normgen[bench]'" in err and not (tmp_path / "p.png").exists()


def test_check_usage_errors(capsys, monkeypatch):
    from normgen.verify import session

    monkeypatch.setattr(session, "run", lambda *a, **kw: pytest.fail("a refused check ran"))
    code, _, err = run(capsys, "check", "layer_norm", "--layout", "channel_last")
    assert code == 2 and "invalid choice: 'channel_last' (choose from 'contiguous', 'channels_last'" in err
    code, _, err = run(capsys, "check", "--all", "layer_norm")
    assert code == 2 and "check got both --all and the spec 'layer_norm'" in err
    code, _, err = run(capsys, "check")
    assert code == 2 and "check needs SPEC or --all" in err
    code, _, err = run(capsys, "check", "layer_norm", "-j", "0")
    assert code == 2 and "expected an integer >= 1, got '0'" in err


def test_dtypes_follow_what_the_backend_runs(capsys, monkeypatch):
    """The refusal reads the backend's own list: a CPU backend without float32 refuses it."""
    from normgen.verify import session

    monkeypatch.setattr(session, "run", lambda *a, **kw: pytest.fail("a refused check ran"))
    missing = [d for d in cli.DTYPES if d not in cpu_runtime.BACKEND.dtypes]
    for d in missing:  # whatever this CPU backend lacks (float16 and bfloat16 unless it gained them)
        code, _, err = run(capsys, "check", "layer_norm", "--dtype", d)
        assert code == 2 and f"--dtype {d}: the CPU kernels do not run {d}" in err
    monkeypatch.setattr(cpu_runtime.BACKEND, "dtypes", ("float64",))
    for argv in (["check", "layer_norm", "--dtype", "float32"],
                 ["plan", "standardize", "--shape", "4,8"],
                 ["generate", "standardize", "--shape", "4,8", "-o", "unused"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "the CPU kernels do not run float32" in err and "allowed: float64 (with --target cpu)" in err
    assert not os.path.exists("unused")


def test_generate_names_files_by_dtype_and_strategy_with_mode_0644(capsys, tmp_path):
    old = os.umask(0o022)
    try:
        for dtype in ("float32", "float64"):
            code, _, err = run(capsys, "generate", "layer_norm", "--shape", "8,16", "--size", "normalized_shape=16",
                               "--dtype", dtype, "-o", str(tmp_path), "-q")
            assert code == 0, err
        code, _, err = run(capsys, "generate", "batch_norm", "--shape", "8,4,3,3", "--layout", "channels_last",
                           "-o", str(tmp_path), "-q")
        assert code == 0, err
    finally:
        os.umask(old)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["batch_norm.channels_last.float32.columns.backward.py",
                     "batch_norm.channels_last.float32.columns.forward.py",
                     "layer_norm.contiguous.float32.rows.backward.py", "layer_norm.contiguous.float32.rows.forward.py",
                     "layer_norm.contiguous.float64.rows.backward.py", "layer_norm.contiguous.float64.rows.forward.py"]
    assert "float64" in (tmp_path / files[-1]).read_text().split("\n\n")[0]  # the header names the dtype
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o644}


def test_generate_output_errors_write_nothing(capsys, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    code, _, err = run(capsys, "generate", "standardize", "--shape", "4,8", "-o", str(a_file), "-q")
    assert code == 2 and f"-o {a_file}: exists and is not a folder" in err
    assert a_file.read_text() == "mine"
    below = a_file / "sub"
    code, _, err = run(capsys, "generate", "standardize", "--shape", "4,8", "-o", str(below), "-q")
    assert code == 2 and f"-o {below}: cannot create the folder" in err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere: let the check see the folder as a user would
        monkeypatch.setattr(cli_args.os, "access", lambda path, mode: Path(path) != locked)
    code, _, err = run(capsys, "generate", "standardize", "--shape", "4,8", "-o", str(locked), "-q")
    assert code == 2 and f"-o {locked}: the folder is not writable" in err and not any(locked.iterdir())
    code, _, err = run(capsys, "generate", "--reference", "layer_norm")
    assert code == 2 and "it takes no SPEC or --shape" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked"]


def test_paths_no_file_system_takes(capsys, tmp_path):
    long = tmp_path / ("x" * 300)
    code, _, err = run(capsys, "generate", "standardize", "--shape", "4,8", "-o", str(long), "-q")
    assert code == 2 and "cannot create the folder (File name too long)" in err
    code, _, err = run(capsys, "show", "a\0b.toml")  # in process only: an OS argv cannot hold NUL
    assert code == 2 and "an argument holds a NUL character" in err
    assert list(tmp_path.iterdir()) == []


def test_plan_of_strides_a_call_copies(capsys):
    code, out, err = run(capsys, "plan", "standardize", "--shape", "4,8", "--strides=-8,1")
    assert code == 0, err
    first, *rest = out.splitlines()
    assert first == ("copy     a call copies x to a contiguous array first (dim 0 (size 4) has stride -8: the kernels "
                     "walk only positive strides in place); the plan below is for the copy, strides (8, 1)")
    assert "    N              reduced  row    size 4        strides x:8 y:8 stat:0 param:0" in rest
    code, out, _ = run(capsys, "plan", "standardize", "--shape", "4,8", "--strides", "0,1")
    assert code == 0 and "dim 0 (size 4) has stride 0" in out
    code, out, _ = run(capsys, "plan", "standardize", "--shape", "1,8", "--strides", "0,1")
    assert code == 0 and not out.startswith("copy")  # a size-1 dim's stride is never walked
    code, _, err = run(capsys, "plan", "standardize", "--shape", "4,8", "--strides", "1")
    assert code == 2 and "--strides has 1 entries for a shape of 2 dims" in err


def test_plan_backward_prints_the_backward_formula(capsys):
    code, out, _ = run(capsys, "plan", "layer_norm", "--shape", "4,8", "--size", "normalized_shape=8", "--backward")
    assert code == 0
    assert "dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))" in out and "g = dy · weight" in out
    assert "dweight = Σ dy · x̂, dbias = Σ dy" in out and "y = " not in out
    code, out, _ = run(capsys, "plan", "rms_norm", "--shape", "4,8", "--size", "normalized_shape=8", "--backward")
    assert "dx = rstd · (g − x̂ · mean(g · x̂))" in out and "x̂ = x · rstd, rstd = 1/√(mean(x²) + eps)" in out
    code, out, _ = run(capsys, "plan", "weight_norm", "--shape", "4,8", "--backward")
    assert "dx = rstd · (g − x̂ · Σ(g · x̂))" in out
    code, out, _ = run(capsys, "plan", "rms_norm", "--shape", "4,8", "--size", "normalized_shape=8")
    assert "y = x̂ · weight   # contiguous over normalized" in out and "dx" not in out


def test_plan_label_plans_for_the_gpu_present(monkeypatch):
    """check's plan label on a GPU: that GPU's profile, not the emulator's."""
    from normgen.op import load
    from normgen.plan.device import profile
    from normgen.verify import check

    gpu = type("Gpu", (), {"profile": profile("l40s")})()
    monkeypatch.setattr(check, "cupy_device", lambda: gpu)
    op, seen = load("layer_norm"), []

    class Spy:
        name, spec = op.name, op.spec

        def plan(self, *a, **kw):
            seen.append(kw.get("device"))
            return op.plan(*a, **kw)

    check._plan_label(Spy(), np.zeros((4, 8)), {"normalized_shape": (8,)}, "cuda", "float32")
    check._plan_label(Spy(), np.zeros((4, 8)), {"normalized_shape": (8,)}, "cpu", "float32")
    assert seen == [profile("l40s"), None]
