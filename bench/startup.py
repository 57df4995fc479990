"""A newcomer's first run, timed: README command 1 (after the install) cold and warm.

    python bench/startup.py [--repeat 2] [--full] [--jobs N] [--repo DIR] [--json FILE]
    python bench/startup.py --op [--repeat 3]         # one op: build vs load in a new process

Default: `normgen generate --reference && normgen check --all` with fresh, empty
NORMGEN_CACHE_DIR and NUMBA_CACHE_DIR (so neither the kernels nor the prelude are
cached: what a fresh clone sees), then again with the same folders (warm). `--repo DIR`
runs another checkout's normgen (`python -m normgen` with DIR first on PYTHONPATH, in DIR):
a clone of main, for the time before. For each run:
the wall time, the CPU time (all processes: on a shared machine the wall time follows
the load, the CPU time much less), when the first line of output appeared, when the
first status line of `check` appeared, and the exit status. Output is piped, so the status comes as plain
lines. Run it on an otherwise idle machine, or say that it was not.

`--op`: the cold build vs the warm load of one op (layer_norm [256, 1024]) in a new
process: import time, first forward, first backward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def normgen_command(repo: Path | None) -> list[str]:
    """The `normgen` script of this Python (what the README runs), else `python -m normgen`."""
    script = Path(sys.executable).parent / "normgen"
    return [str(script)] if script.exists() and repo is None else [sys.executable, "-m", "normgen"]


def timed(cmds: list[list[str]], env: dict[str, str], cwd: Path) -> dict:
    """Run the commands one after another (stopping at a failure, like `&&`), timing their output."""
    t0 = time.perf_counter()
    cpu0 = _children_cpu()
    first: dict[str, float] = {}
    tail: list[str] = []
    code = 0
    for cmd in cmds:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def read(stream, name: str) -> None:
            for line in stream:
                now = time.perf_counter() - t0
                first.setdefault("output", now)
                if name == "stderr" and line.startswith("check "):
                    first.setdefault("check status", now)
                tail.append(line.rstrip("\n"))
                del tail[:-6]

        readers = [threading.Thread(target=read, args=(proc.stdout, "stdout")),
                   threading.Thread(target=read, args=(proc.stderr, "stderr"))]
        for r in readers:
            r.start()
        code = proc.wait()
        for r in readers:
            r.join()
        if code:
            break
    return {"seconds": time.perf_counter() - t0, "cpu seconds": _children_cpu() - cpu0,
            "first output": first.get("output"),
            "first check status": first.get("check status"), "exit": code, "tail": tail}


def _children_cpu() -> float:
    """User + system seconds of the finished child processes (and the workers they waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def readme(args: argparse.Namespace) -> None:
    repo = Path(args.repo).resolve() if args.repo else None
    ng = normgen_command(repo)
    check = [*ng, "check", "--all"] + (["--full"] if args.full else []) + \
        (["--jobs", str(args.jobs)] if args.jobs else [])
    cmds = [[*ng, "generate", "--reference"], check]
    print("README command 1 after the install: " + " && ".join("normgen " + " ".join(c[len(ng):]) for c in cmds))
    print(f"in {repo or REPO}, on {os.cpu_count()} CPUs (load average now {os.getloadavg()[0]:.1f})")
    rows = []
    for i in range(args.repeat):
        base = Path(tempfile.mkdtemp(prefix="normgen-startup-"))
        env = dict(os.environ, NORMGEN_CACHE_DIR=str(base / "normgen"), NUMBA_CACHE_DIR=str(base / "numba"))
        if repo is not None:
            env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
        try:
            for state in ("cold", "warm"):
                r = timed(cmds, env, repo or REPO)
                r.update(run=i + 1, cache=state, load=os.getloadavg()[0])
                rows.append(r)
                status = "" if r["exit"] == 0 else f"  EXIT {r['exit']}: " + " | ".join(r["tail"])
                print(f"  run {i + 1} {state}: {r['seconds']:6.1f} s wall, {r['cpu seconds']:6.1f} s CPU   "
                      f"first output {_s(r['first output'])}   "
                      f"first check status {_s(r['first check status'])}   load after {r['load']:.1f}{status}",
                      flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _s(t: float | None) -> str:
    return "  never" if t is None else f"{t:5.1f} s"


# ---- one op, in a new process -----------------------------------------------------------
CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import normgen
    t1 = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    w, b = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    op = normgen.load("layer_norm")
    t2 = time.perf_counter()
    fwd = op.forward(x, w, b, normalized_shape=(1024,))
    t3 = time.perf_counter()
    op.backward(np.ones_like(x), fwd)
    t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "forward": t3 - t2, "backward": t4 - t3}))
""")


def one_op(cache: Path) -> dict:
    env = dict(os.environ, NORMGEN_CACHE_DIR=str(cache / "normgen"), NUMBA_CACHE_DIR=str(cache / "numba"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def op(args: argparse.Namespace) -> None:
    rows = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            rows.append((one_op(Path(d)), one_op(Path(d))))
    best = {k: min(r[0][k] for r in rows) for k in ("import", "forward", "backward")}
    bestw = {k: min(r[1][k] for r in rows) for k in ("import", "forward", "backward")}
    print(f"layer_norm [256, 1024] float32, new process (best of {args.repeat}):")
    print(f"  import normgen                 {best['import']:.3f} s")
    print(f"  cold: first forward (build)    {best['forward']:.3f} s   first backward {best['backward']:.3f} s")
    print(f"  warm: first forward (load)     {bestw['forward']:.3f} s   first backward {bestw['backward']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"cold": best, "warm": bestw}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", action="store_true", help="time one op's build and load instead")
    ap.add_argument("--repeat", type=int, default=2, help="cold + warm pairs (--op: best of)")
    ap.add_argument("--full", action="store_true", help="check --all --full (the whole matrix)")
    ap.add_argument("--jobs", type=int, help="check --jobs N (default: every CPU)")
    ap.add_argument("--repo", help="time this checkout's normgen instead (e.g. a clone of main)")
    ap.add_argument("--json", help="write the runs to this file")
    args = ap.parse_args()
    (op if args.op else readme)(args)


if __name__ == "__main__":
    main()
