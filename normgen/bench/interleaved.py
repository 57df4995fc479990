"""normgen between PyTorch CPU ops (`normgen bench --interleaved`): alone against interleaved.

In a model a norm layer runs right after PyTorch ops (a matmul, a GELU), whose OpenMP
workers keep spinning for a while after each op and so compete with whatever runs next.
Each case times one call of a provider in two settings, in the same run:

    alone        the provider's call, again and again
    interleaved  a PyTorch op (GELU of a tensor as large as x, on PyTorch's threads) before
                 every call; only the provider's call is timed

and reports both and interleaved / alone, for normgen.torch and for PyTorch's own layer.
Busy cores are the process's CPU time (user + system) over wall time while normgen's call
runs alone: at most the thread budget when normgen keeps to it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InterleavedCase:
    name: str
    spec: str
    shape: tuple[int, ...]


def cases() -> list[InterleavedCase]:
    return [InterleavedCase("layer_norm [8192,1024]", "layer_norm", (8192, 1024)),
            InterleavedCase("group_norm [8,256,64,64] G=32", "group_norm", (8, 256, 64, 64))]


@dataclass
class InterleavedResult:
    case: str
    direction: str  # forward | backward
    ms: dict[str, dict[str, float]] = field(default_factory=dict)  # provider -> {"alone", "interleaved"} median ms
    busy_cores: float = 0.0  # normgen alone: CPU time over wall time

    def slowdown(self, provider: str) -> float:
        m = self.ms[provider]
        return m["interleaved"] / m["alone"]


def _layers(case: InterleavedCase):
    import torch

    import normgen.torch as nt

    if case.spec == "layer_norm":
        d = case.shape[-1]
        ng, tm = nt.LayerNorm(d), torch.nn.LayerNorm(d)
    else:
        ng, tm = nt.GroupNorm(32, case.shape[1]), torch.nn.GroupNorm(32, case.shape[1])
    ng.load_state_dict(tm.state_dict())
    return {"normgen": ng, "torch": tm}


def setup(case: InterleavedCase, direction: str) -> tuple[dict[str, Callable[[], Any]], Callable[[], Any]]:
    """(one call per provider, the PyTorch op run between calls)."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(case.shape)
    between_in = torch.randn(case.shape)
    gelu = torch.nn.functional.gelu

    def between():
        return gelu(between_in)
    calls: dict[str, Callable[[], Any]] = {}
    for name, layer in _layers(case).items():
        if direction == "forward":
            def call(layer=layer):
                with torch.no_grad():
                    return layer(x)
        else:
            xg = x.clone().requires_grad_(True)
            y = layer(xg)
            dy = torch.randn(case.shape)
            wrt = [xg, *layer.parameters()]

            def call(y=y, wrt=wrt, dy=dy):
                return torch.autograd.grad(y, wrt, dy, retain_graph=True)
        calls[name] = call
    return calls, between


def measure(calls: dict[str, Callable[[], Any]], between: Callable[[], Any], repeat: int,
            warmup: int) -> tuple[dict[str, dict[str, float]], float]:
    """Median ms per provider and setting (settings and providers interleaved in every round),
    and normgen's busy cores alone."""
    for _ in range(warmup):
        for fn in calls.values():
            between()
            fn()
    times: dict[str, dict[str, list[float]]] = {n: {"alone": [], "interleaved": []} for n in calls}
    clock = time.perf_counter
    busy_cpu = busy_wall = 0.0
    for _ in range(repeat):
        for name, fn in calls.items():
            fn()  # after a call of its own: no PyTorch op just ran (for PyTorch: its own op did)
            c0, t0 = time.process_time(), clock()
            fn()
            t1 = clock()
            if name == "normgen":
                busy_cpu += time.process_time() - c0
                busy_wall += t1 - t0
            times[name]["alone"].append(t1 - t0)
            between()
            t0 = clock()
            fn()
            times[name]["interleaved"].append(clock() - t0)
    ms = {n: {k: statistics.median(v) * 1e3 for k, v in d.items()} for n, d in times.items()}
    return ms, (busy_cpu / busy_wall if busy_wall else 0.0)


def run(directions=("forward", "backward"), repeat: int = 15, warmup: int = 3, only: list[str] | None = None,
        progress: Callable[[InterleavedResult], None] | None = None) -> list[InterleavedResult]:
    results = []
    for case in cases():
        if only and not any(k in case.name for k in only):
            continue
        for direction in directions:
            calls, between = setup(case, direction)
            ms, busy = measure(calls, between, repeat, warmup)
            r = InterleavedResult(case.name, direction, ms, busy)
            results.append(r)
            if progress:
                progress(r)
    return results


def table(results: list[InterleavedResult]) -> str:
    head = (f"{'case':<30} {'dir':<4} {'normgen ms':>10} {'interleaved':>11} {'ratio':>6} "
            f"{'torch ms':>9} {'interleaved':>11} {'ratio':>6} {'busy cores':>10}")
    lines = [head]
    for r in results:
        ng, tm = r.ms["normgen"], r.ms["torch"]
        lines.append(f"{r.case:<30} {r.direction[:3]:<4} {ng['alone']:10.2f} {ng['interleaved']:11.2f} "
                     f"{r.slowdown('normgen'):5.2f}x {tm['alone']:9.2f} {tm['interleaved']:11.2f} "
                     f"{r.slowdown('torch'):5.2f}x {r.busy_cores:10.2f}")
    return "\n".join(lines)
