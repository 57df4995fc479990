"""Per-call cost of small calls (`normgen bench --small`): microseconds per call against PyTorch.

At small sizes a call's time is mostly host work (argument checks, plan lookup, dispatch,
allocation), so each case is timed along four paths, each against its PyTorch twin in the
same run:

    ops           normgen.ops (NumPy arrays)                 vs torch.nn.functional, no grad
    module        normgen.torch module under no_grad         vs the torch.nn module
    module+grad   the module's forward and backward           vs the torch.nn module's
    compiled      torch.compile(normgen.torch module)         vs torch.compile(torch.nn module), no grad

Providers are interleaved: every round runs a block of `inner` calls of each provider in turn,
and a provider's time is the median of its single calls (`measure`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PATHS = ("ops", "module", "module+grad", "compiled")


@dataclass(frozen=True)
class SmallCase:
    name: str
    spec: str
    shape: tuple[int, ...]


def cases() -> list[SmallCase]:
    """The sizes of issue 12 (item 3)."""
    out = []
    for spec in ("layer_norm", "rms_norm"):
        for shape in ((1, 4096), (16, 4096), (128, 768)):
            out.append(SmallCase(f"{spec} {list(shape)}", spec, shape))
    out.append(SmallCase("group_norm [1,64,16,16] G=32", "group_norm", (1, 64, 16, 16)))
    out.append(SmallCase("weight_norm [512,256,3,3]", "weight_norm", (512, 256, 3, 3)))
    return out


@dataclass
class SmallResult:
    case: str
    spec: str
    shape: tuple[int, ...]
    path: str
    us: dict[str, float] = field(default_factory=dict)  # provider ("normgen", "torch") -> median µs per call
    nbytes: int = 0  # bytes of x

    @property
    def ratio(self) -> float:
        """normgen's time over PyTorch's (below 1: normgen is faster)."""
        return self.us["normgen"] / self.us["torch"]


def _modules(case: SmallCase, dtype):
    """(normgen.torch module, torch.nn module), their parameters equal."""
    import torch

    import normgen.torch as nt

    torch.manual_seed(0)
    if case.spec == "weight_norm":  # the parametrizations' modules: forward(g, v)
        from torch.nn.utils.parametrizations import _WeightNorm as TorchWeightNorm

        from ..torch.parametrizations import _WeightNorm
        return _WeightNorm(0), TorchWeightNorm(0)
    d = case.shape[-1]
    pairs = {"layer_norm": (lambda: nt.LayerNorm(d), lambda: torch.nn.LayerNorm(d)),
             "rms_norm": (lambda: nt.RMSNorm(d), lambda: torch.nn.RMSNorm(d)),
             "group_norm": (lambda: nt.GroupNorm(32, case.shape[1]), lambda: torch.nn.GroupNorm(32, case.shape[1]))}
    ng, tm = (f().to(dtype) for f in pairs[case.spec])
    with torch.no_grad():
        for p in tm.parameters():
            p.uniform_(0.5, 1.5)
        ng.load_state_dict(tm.state_dict())
    return ng, tm


def _functional(case: SmallCase, x: np.ndarray):
    """(normgen.ops call, PyTorch functional call) on the same data."""
    import torch
    import torch.nn.functional as F

    from .. import ops

    tx = torch.from_numpy(x)
    if case.spec == "weight_norm":
        g = np.full(x.shape[0], 1.5, x.dtype)
        tg = torch.from_numpy(g).reshape(-1, 1, 1, 1)
        return (lambda: ops.weight_norm(x, g, 0)), (lambda: torch._weight_norm(tx, tg, 0))
    d = x.shape[-1]
    w = np.full(x.shape[1] if case.spec == "group_norm" else d, 1.5, x.dtype)
    b = np.full_like(w, 0.25)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    if case.spec == "layer_norm":
        return (lambda: ops.layer_norm(x, (d,), w, b)), (lambda: F.layer_norm(tx, (d,), tw, tb))
    if case.spec == "rms_norm":
        return (lambda: ops.rms_norm(x, (d,), w, eps=1e-6)), (lambda: F.rms_norm(tx, (d,), tw, eps=1e-6))
    return (lambda: ops.group_norm(x, 32, w, b)), (lambda: F.group_norm(tx, 32, tw, tb))


def setup(case: SmallCase, path: str, dtype: str, compiled: dict[Any, Any]) -> dict[str, Callable[[], Any]]:
    """One callable per provider ("normgen", "torch"), each doing one call of the path."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.shape).astype(dtype)
    if path == "ops":
        ng, tf = _functional(case, x)
        return {"normgen": ng, "torch": lambda: _no_grad(tf)}
    ng_mod, t_mod = _modules(case, getattr(torch, dtype))
    if case.spec == "weight_norm":  # g shaped as torch keeps it
        v = torch.from_numpy(x)
        args: tuple = (torch.full((case.shape[0], 1, 1, 1), 1.5, dtype=v.dtype), v)
    else:
        args = (torch.from_numpy(x),)
    if path == "compiled":
        key = (case.name, dtype)
        if key not in compiled:
            compiled[key] = (torch.compile(ng_mod, dynamic=False), torch.compile(t_mod, dynamic=False))
        cng, ctm = compiled[key]
        return {"normgen": lambda: _no_grad(lambda: cng(*args)), "torch": lambda: _no_grad(lambda: ctm(*args))}
    if path == "module":
        return {"normgen": lambda: _no_grad(lambda: ng_mod(*args)), "torch": lambda: _no_grad(lambda: t_mod(*args))}
    # module+grad: forward and backward, gradients of the inputs and the parameters
    gargs = tuple(a.detach().clone().requires_grad_(True) for a in args)
    dy = torch.from_numpy(rng.standard_normal(case.shape).astype(dtype))

    def train(mod):
        def step():
            mod(*gargs).backward(dy)
        return step
    return {"normgen": train(ng_mod), "torch": train(t_mod)}


def _no_grad(fn):
    import torch

    with torch.no_grad():
        return fn()


def measure(run: dict[str, Callable[[], Any]], rounds: int, inner: int, warmup: int) -> dict[str, float]:
    """Median µs of single calls: `rounds` blocks of `inner` calls per provider, providers
    interleaved block by block. Each call is timed on its own: on a loaded machine the
    scheduler takes the core away every few milliseconds, and the median of single calls
    leaves those pauses out, where the mean of a block would charge them to whichever
    provider's block was longer."""
    names = list(run)
    for _ in range(warmup):
        for n in names:
            run[n]()
    per: dict[str, list[int]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for n in names:
            fn, times = run[n], per[n]
            for _ in range(inner):
                t0 = clock()
                fn()
                times.append(clock() - t0)
    return {n: statistics.median(v) / 1e3 for n, v in per.items()}


def run(paths=PATHS, dtype: str = "float32", rounds: int = 40, inner: int = 20, warmup: int = 20,
        only: list[str] | None = None, progress: Callable[[SmallResult], None] | None = None) -> list[SmallResult]:
    compiled: dict[Any, Any] = {}
    results = []
    for case in cases():
        if only and not any(k in case.name for k in only):
            continue
        for path in paths:
            us = measure(setup(case, path, dtype, compiled), rounds, inner, warmup)
            r = SmallResult(case.name, case.spec, case.shape, path, us,
                            int(np.prod(case.shape)) * np.dtype(dtype).itemsize)
            results.append(r)
            if progress:
                progress(r)
    return results


def table(results: list[SmallResult]) -> str:
    """µs per call and normgen's time over PyTorch's (the issue's target: at most 1.5)."""
    lines = [f"{'case':<30} {'path':<12} {'normgen µs':>11} {'torch µs':>9} {'ng/torch':>8}"]
    for r in results:
        lines.append(f"{r.case:<30} {r.path:<12} {r.us['normgen']:11.1f} {r.us['torch']:9.1f} {r.ratio:7.2f}x")
    return "\n".join(lines)
