"""Memory benchmark (`normgen bench --memory`): resident memory of normgen against PyTorch eager.

Two loops per spec (layer_norm, group_norm, batch_norm), each run by every provider in a
fresh Python process, so that no run inherits another's heap, imports or buffer pool:

    train   a fixed shape, forward then backward every step. The forward's saved state
            (normgen's `Forward`, PyTorch's autograd graph) lives until the backward, as in
            training, so it is in the peak.
    infer   forward only, a new input of a new shape every call (the sequence lengths and
            batch sizes of inference). The previous output lives until the call returns.

Providers: `normgen` (NumPy arrays through `normgen.ops` / `Op.forward` + `Op.backward`;
the process never imports torch), `normgen.torch` (the drop-in functions on torch tensors)
and `torch` (torch.nn.functional, eager; the process never imports numba).

Per run, from /proc/self/status: `ready` (VmRSS once inputs exist, before the first call),
`peak` (VmHWM over the loop: reset through /proc/self/clear_refs after setup) and `held`
(VmRSS after the loop once its last outputs are dropped and garbage collected). Time and
minor page faults per call are taken over the second half of the loop (steady state).

`steady()` answers "does the pool still do its job": the fixed training shapes timed with
both providers interleaved in one process, with page faults per call.

    >>> rows = run_all(("layer_norm",), calls=None)     # a subprocess per (spec, loop, provider)
    >>> print(table(rows))
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SPECS = ("layer_norm", "group_norm", "batch_norm")
LOOPS = ("train", "infer")
PROVIDERS = ("normgen", "normgen.torch", "torch")
CALLS = {"train": 50, "infer": 400}  # infer: the loop of the memory issue (400 calls)

# Training shapes: the CPU bench's reference shapes (batch_norm and group_norm at half batch,
# to keep a 2-core run short). Inference shapes vary per call over the ranges below.
TRAIN_SHAPE = {"layer_norm": (8192, 1024), "group_norm": (4, 256, 64, 64), "batch_norm": (16, 128, 56, 56)}
CHANNELS = {"layer_norm": 1024, "group_norm": 256, "batch_norm": 128}
GROUPS = 32


def infer_shape(spec: str, rng: np.random.Generator) -> tuple[int, ...]:
    """A new inference shape: rows 1000-5000 (layer_norm), images 32-96 px (group_norm),
    batch 8-64 (batch_norm, evaluation mode)."""
    if spec == "layer_norm":
        return (int(rng.integers(1000, 5001)), 1024)
    if spec == "group_norm":
        side = int(rng.integers(32, 97))
        return (2, 256, side, side)
    return (int(rng.integers(8, 65)), 128, 28, 28)


INFER_MAX = {"layer_norm": (5000, 1024), "group_norm": (2, 256, 96, 96), "batch_norm": (64, 128, 28, 28)}


# ---- what a process measures about itself ---------------------------------------------------


def _status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes (Linux /proc; psutil is not a dependency)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _threads() -> int:
    # normgen's rule (runtime.cpu.threads) without importing it: the torch process must not load numba
    env = os.environ.get("NORMGEN_NUM_THREADS")
    return max(1, int(env)) if env else max(1, len(os.sched_getaffinity(0)))


# ---- the loops ---------------------------------------------------------------------------------


def _step_fns(spec: str, provider: str, rng: np.random.Generator) -> tuple[Callable, Callable, Callable]:
    """(wrap, infer, train): wrap turns a NumPy array into the provider's array; infer(x) -> y;
    train(x, dy) -> gradients, with the forward's state alive until the backward is done."""
    c = CHANNELS[spec]
    w_np = (rng.standard_normal(c) * 0.1 + 1).astype(np.float32)
    b_np = (rng.standard_normal(c) * 0.1).astype(np.float32)
    rm_np, rv_np = np.zeros(c, np.float32), np.ones(c, np.float32)
    if provider == "normgen":
        import normgen
        from normgen import ops

        op = normgen.load(spec)
        sizes = {"layer_norm": {"normalized_shape": (c,)}, "group_norm": {"num_groups": GROUPS},
                 "batch_norm": {"running_mean": rm_np, "running_var": rv_np}}[spec]
        infer = {"layer_norm": lambda x: ops.layer_norm(x, (c,), w_np, b_np),
                 "group_norm": lambda x: ops.group_norm(x, GROUPS, w_np, b_np),
                 "batch_norm": lambda x: ops.batch_norm(x, rm_np, rv_np, w_np, b_np, training=False)}[spec]

        def train(x, dy):
            fwd = op.forward(x, weight=w_np, bias=b_np, training=True, **sizes)
            return op.backward(dy, fwd)

        return (lambda a: a), infer, train
    import torch

    torch.set_num_threads(_threads())
    if provider == "torch":
        F = torch.nn.functional
    else:
        import normgen.torch as F  # the drop-in functions, same signatures
    w, b = torch.from_numpy(w_np).requires_grad_(), torch.from_numpy(b_np).requires_grad_()
    rm, rv = torch.from_numpy(rm_np), torch.from_numpy(rv_np)
    forward = {"layer_norm": lambda x, training: F.layer_norm(x, (c,), w, b),
               "group_norm": lambda x, training: F.group_norm(x, GROUPS, w, b),
               "batch_norm": lambda x, training: F.batch_norm(x, rm, rv, w, b, training=training)}[spec]

    def infer(x):
        with torch.no_grad():
            return forward(x, False)

    def train(x, dy):
        y = forward(x, True)
        return torch.autograd.grad(y, (x, w, b), dy)

    def wrap(a):
        return torch.from_numpy(a)

    return wrap, infer, train


def measure(spec: str, loop: str, provider: str, calls: int, seed: int = 0) -> dict[str, Any]:
    """Run one loop in this process and report its memory, time and page faults per call."""
    rng = np.random.default_rng(seed)
    wrap, infer, train = _step_fns(spec, provider, rng)
    if loop == "train":
        x = wrap(rng.standard_normal(TRAIN_SHAPE[spec], dtype=np.float32))
        dy = wrap(rng.standard_normal(TRAIN_SHAPE[spec], dtype=np.float32))
        if provider != "normgen":
            x.requires_grad_()
        source = None
    else:
        # inputs are fresh arrays every call (copies of one random block: no RNG time in the loop)
        source = rng.standard_normal(int(np.prod(INFER_MAX[spec])), dtype=np.float32)
        shapes = [infer_shape(spec, rng) for _ in range(calls)]
    gc.collect()
    ready = _status()["VmRSS"]
    reset = _reset_peak()
    times, faults = [], []
    last = None
    for i in range(calls):
        if loop == "infer":
            n = int(np.prod(shapes[i]))
            xi = wrap(source[:n].reshape(shapes[i]).copy())
        f0, t0 = _faults(), time.perf_counter()
        last = train(x, dy) if loop == "train" else infer(xi)
        times.append(time.perf_counter() - t0)
        faults.append(_faults() - f0)
    status = _status()
    del last
    xi = None
    gc.collect()
    held = _status()["VmRSS"]
    half = calls // 2
    row = {"spec": spec, "loop": loop, "provider": provider, "calls": calls,
           "shape": list(TRAIN_SHAPE[spec]) if loop == "train" else f"{spec} varying, see infer_shape()",
           "ready_mib": ready / 2**20, "peak_mib": (status["VmHWM"] if reset else status["VmRSS"]) / 2**20,
           "peak_is_lifetime": not reset, "held_mib": held / 2**20,
           "ms_per_call": 1e3 * statistics.median(times[half:]),
           "faults_per_call": statistics.mean(faults[half:])}
    if provider != "torch":
        from normgen.runtime import alloc

        stats = getattr(alloc, "stats", None)  # absent before the pool redesign
        row["pool"] = vars(stats()) if stats else {"held": alloc.held_bytes()}
    return row


def steady(specs: tuple[str, ...], calls: int = 30, warmup: int = 5) -> list[dict[str, Any]]:
    """Fixed training shapes, normgen (NumPy) and torch interleaved in this process: median ms
    and mean minor page faults per call, forward alone and forward + backward."""
    rows = []
    for spec in specs:
        fns = {p: _step_fns(spec, p, np.random.default_rng(0)) for p in ("normgen", "torch")}
        base = np.random.default_rng(1).standard_normal(TRAIN_SHAPE[spec], dtype=np.float32)
        grad = np.random.default_rng(2).standard_normal(TRAIN_SHAPE[spec], dtype=np.float32)
        for mode in ("forward", "train"):
            runs = {}
            for p, (wrap, infer, train) in fns.items():
                x, dy = wrap(base), wrap(grad)
                if mode == "train" and p == "torch":
                    x = x.clone().requires_grad_()
                runs[p] = (lambda f=infer, x=x: f(x)) if mode == "forward" else (lambda f=train, x=x, dy=dy: f(x, dy))
            times: dict[str, list[float]] = {p: [] for p in runs}
            faults: dict[str, list[int]] = {p: [] for p in runs}
            kept = {}
            for i in range(warmup + calls):
                for p, run in runs.items():
                    f0, t0 = _faults(), time.perf_counter()
                    kept[p] = run()  # the previous result is freed after the call, as in a loop
                    dt, df = time.perf_counter() - t0, _faults() - f0
                    if i >= warmup:
                        times[p].append(dt)
                        faults[p].append(df)
            kept.clear()
            ms = {p: 1e3 * statistics.median(v) for p, v in times.items()}
            rows.append({"spec": spec, "shape": list(TRAIN_SHAPE[spec]), "mode": mode, "ms": ms,
                         "faults": {p: statistics.mean(v) for p, v in faults.items()},
                         "x_torch": ms["torch"] / ms["normgen"]})
    return rows


# ---- the parent: one fresh process per run -----------------------------------------------------


def _child(args: list[str]) -> Any:
    proc = subprocess.run([sys.executable, "-m", "normgen.bench.memory", *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(specs: tuple[str, ...] = SPECS, loops: tuple[str, ...] = LOOPS, providers: tuple[str, ...] = PROVIDERS,
            calls: int | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every (spec, loop, provider) in its own process, after one short normgen run per
    (spec, loop) so that kernels come from the disk cache rather than being compiled."""
    rows = []
    for spec in specs:
        for loop in loops:
            if any(p != "torch" for p in providers):
                _child(["run", spec, loop, "normgen", "--calls", "2"])
            for provider in providers:
                row = _child(["run", spec, loop, provider, "--calls", str(calls or CALLS[loop])])
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def run_steady(specs: tuple[str, ...] = SPECS, calls: int = 30) -> list[dict[str, Any]]:
    return _child(["steady", *specs, "--calls", str(calls)])


def table(rows: list[dict[str, Any]]) -> str:
    """Resident memory per run, and normgen's ratio to torch for each (spec, loop)."""
    lines = [(f"{'spec':<11} {'loop':<5} {'provider':<13} {'ready':>7} {'peak':>7} {'held':>7} {'peak/t':>6} "
              f"{'held/t':>6} {'ms/call':>8} {'faults':>8}  pool"),
             f"{'':<11} {'':<5} {'':<13} {'MiB':>7} {'MiB':>7} {'MiB':>7} {'':>6} {'':>6} {'':>8} {'/call':>8}"]
    torch_rows = {(r["spec"], r["loop"]): r for r in rows if r["provider"] == "torch"}
    for r in rows:
        t = torch_rows.get((r["spec"], r["loop"]))
        pr = f"{r['peak_mib'] / t['peak_mib']:6.2f}" if t else f"{'-':>6}"
        hr = f"{r['held_mib'] / t['held_mib']:6.2f}" if t else f"{'-':>6}"
        pool = r.get("pool", {})
        ptxt = ", ".join(f"{k} {v / 2**20:.0f} MiB" if k in ("held", "cap") else f"{k} {v}"
                         for k, v in pool.items() if k in ("held", "cap", "reused", "missed"))
        lines.append(f"{r['spec']:<11} {r['loop']:<5} {r['provider']:<13} {r['ready_mib']:7.0f} {r['peak_mib']:7.0f} "
                     f"{r['held_mib']:7.0f} {pr} {hr} {r['ms_per_call']:8.2f} {r['faults_per_call']:8.0f}  {ptxt}")
    return "\n".join(lines)


def steady_table(rows: list[dict[str, Any]]) -> str:
    lines = [(f"{'spec':<11} {'shape':<20} {'mode':<8} {'normgen ms':>10} {'torch ms':>9} {'x torch':>7} "
              f"{'normgen faults':>14} {'torch faults':>12}")]
    for r in rows:
        lines.append(f"{r['spec']:<11} {tuple(r['shape'])!s:<20} {r['mode']:<8} {r['ms']['normgen']:10.2f} "
                     f"{r['ms']['torch']:9.2f} {r['x_torch']:6.2f}x {r['faults']['normgen']:14.1f} "
                     f"{r['faults']['torch']:12.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m normgen.bench.memory", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="one loop in this process; prints a JSON line")
    r.add_argument("spec", choices=SPECS)
    r.add_argument("loop", choices=LOOPS)
    r.add_argument("provider", choices=PROVIDERS)
    r.add_argument("--calls", type=int)
    s = sub.add_parser("steady", help="fixed shapes, both providers in this process; prints a JSON line")
    s.add_argument("specs", nargs="+", choices=SPECS)
    s.add_argument("--calls", type=int, default=30)
    args = p.parse_args(argv)
    if args.what == "run":
        print(json.dumps(measure(args.spec, args.loop, args.provider, args.calls or CALLS[args.loop])))
    else:
        print(json.dumps(steady(tuple(args.specs), args.calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
