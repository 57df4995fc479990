"""The output pool of a git revision against the working tree's, and PyTorch, in one process.

    python bench/pool_ab.py [--rev main] [--calls 40] [--json FILE]

Fixed training shapes of `normgen bench --memory`, forward alone and forward + backward.
Every call rotates through the three arms (the revision's `alloc.empty_like`, the working
tree's, torch eager), so the machine's load falls on all of them alike; each arm's previous
result dies after its next call, as in a loop. Reports the median ms and the mean minor
page faults per call: a pool that does its job faults ~0 times per call in steady state.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from normgen.bench.memory import SPECS, TRAIN_SHAPE, _step_fns
from normgen.runtime import alloc, cpu

REPO = Path(__file__).resolve().parent.parent


def load_alloc(rev: str):
    """normgen/runtime/alloc.py as of `rev`, as a module beside the current one (its relative
    imports resolve in normgen.runtime)."""
    source = subprocess.run(["git", "show", f"{rev}:normgen/runtime/alloc.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="pool-ab-")) / "alloc.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("normgen.runtime._alloc_ab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="main")
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    old, new = load_alloc(args.rev).empty_like, alloc.empty_like
    torch.set_num_threads(cpu.threads())
    arms = {args.rev: ("normgen", old), "worktree": ("normgen", new), "torch": ("torch", None)}
    rows = []
    for spec in SPECS:
        fns = {prov: _step_fns(spec, prov, np.random.default_rng(0)) for prov in ("normgen", "torch")}
        x = np.random.default_rng(1).standard_normal(TRAIN_SHAPE[spec], dtype=np.float32)
        dy = np.random.default_rng(2).standard_normal(TRAIN_SHAPE[spec], dtype=np.float32)
        tx, tdy = torch.from_numpy(x).clone().requires_grad_(), torch.from_numpy(dy)
        for mode in ("forward", "train"):
            times: dict[str, list[float]] = {a: [] for a in arms}
            faults: dict[str, list[int]] = {a: [] for a in arms}
            kept = {}
            for i in range(args.warmup + args.calls):
                for arm, (prov, empty_like) in arms.items():
                    if empty_like is not None:
                        alloc.empty_like = empty_like  # the CPU backend looks it up on every call
                    _, infer, train = fns[prov]
                    a, d = (torch.from_numpy(x), tdy) if prov == "torch" else (x, dy)
                    if prov == "torch" and mode == "train":
                        a = tx
                    f0, t0 = _faults(), time.perf_counter()
                    kept[arm] = infer(a) if mode == "forward" else train(a, d)
                    dt, df = time.perf_counter() - t0, _faults() - f0
                    if i >= args.warmup:
                        times[arm].append(dt)
                        faults[arm].append(df)
            alloc.empty_like = new
            kept.clear()
            gc.collect()
            ms = {a: 1e3 * statistics.median(v) for a, v in times.items()}
            row = {"spec": spec, "shape": list(TRAIN_SHAPE[spec]), "mode": mode, "ms": ms,
                   "faults": {a: statistics.mean(v) for a, v in faults.items()}}
            rows.append(row)
            print(f"{spec:<11} {TRAIN_SHAPE[spec]!s:<18} {mode:<8} "
                  + "  ".join(f"{a} {ms[a]:6.2f} ms {row['faults'][a]:7.1f} faults" for a in arms)
                  + f"   worktree/{args.rev} {ms['worktree'] / ms[args.rev]:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rev": args.rev, "calls": args.calls, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
