"""One training step of a small transformer block under torch.compile, with torch.nn's norms
and with normgen's, in one process; and the per-call cost of a small eager normgen layer.

    python bench/compile_block.py [--tokens 4096] [--dim 1024] [--steps 10] [--json FILE]
    OMP_NUM_THREADS=1 NORMGEN_NUM_THREADS=1 python bench/compile_block.py --small   # µs per small call

The block is x + Linear(GELU(LayerNorm(x))) followed by RMSNorm, float32; a step is forward
and backward (dy given). Four providers: torch eager, torch.compile, normgen eager
(`nt.convert` of the same block) and normgen under torch.compile (default Inductor backend,
fullgraph=True). After compiling and warming up, the providers take turns step by step and
each one's median step time is reported, with its ratio to torch eager. `--small` reports
the process CPU time of small calls (best of 15 rounds of 300), for torch.nn and
normgen.torch: the host work per call, which one thread each shows best (with more, idle
workers that spin count too).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

import normgen.torch as nt


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln, self.proj, self.rms = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.RMSNorm(dim)

    def forward(self, x):
        return self.rms(x + self.proj(nn.functional.gelu(self.ln(x))))


def step(model: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).backward(dy)


def block(tokens: int, dim: int, steps: int) -> dict:
    torch.manual_seed(0)
    ref = Block(dim)
    providers = {"torch eager": ref, "torch.compile": torch.compile(copy.deepcopy(ref), fullgraph=True),
                 "normgen eager": nt.convert(copy.deepcopy(ref))}
    providers["normgen + torch.compile"] = torch.compile(nt.convert(copy.deepcopy(ref)), fullgraph=True)
    x = torch.randn(tokens, dim, requires_grad=True)
    dy = torch.randn(tokens, dim)
    compile_s = {}
    for name, model in providers.items():
        t = time.perf_counter()
        for _ in range(3):  # compile (the compiled providers), then warm up
            step(model, x, dy)
        compile_s[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(steps):
        for name, model in providers.items():
            t = time.perf_counter()
            step(model, x, dy)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["torch eager"])
    rows = {name: {"ms": statistics.median(ts) * 1e3, "x_torch_eager": base / statistics.median(ts),
                   "first_3_steps_s": compile_s[name]} for name, ts in times.items()}
    for name, r in rows.items():
        print(f"{name:24s} {r['ms']:8.1f} ms/step   {r['x_torch_eager']:.2f}x torch eager   "
              f"(first 3 steps: {r['first_3_steps_s']:.1f} s)")
    return rows


def small(rounds: int = 15, calls: int = 300) -> dict:
    """µs of process CPU time per call (best round): small calls, torch.nn and normgen.torch."""
    x, xb = torch.randn(16, 4096), torch.randn(8, 16, 8, 8)
    xg, dy = x.clone().requires_grad_(), torch.randn(16, 4096)
    out = {}
    for ns in (nn, nt):
        ln, bn = ns.LayerNorm(4096), ns.BatchNorm2d(16)
        cases = {"LayerNorm [16, 4096] forward": lambda ln=ln: ln(x),
                 "LayerNorm [16, 4096] forward + backward": lambda ln=ln: ln(xg).backward(dy),
                 "BatchNorm2d [8, 16, 8, 8] training forward": lambda bn=bn: bn(xb)}
        for case, f in cases.items():
            for _ in range(50):
                f()
            best = min(_round(f, calls) for _ in range(rounds))
            out[f"{ns.__name__} {case}"] = best * 1e6
            print(f"{ns.__name__:17s} {case:42s} {best * 1e6:7.1f} us per call")
    return out


def _round(f, calls: int) -> float:
    t = time.process_time()  # CPU time: less disturbed by other work on a shared machine
    for _ in range(calls):
        f()
    return (time.process_time() - t) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--small", action="store_true", help="the per-call cost of small layers instead")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    result = small() if args.small else block(args.tokens, args.dim, args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), **vars(args),
                       "results": result}, f, indent=1)


if __name__ == "__main__":
    main()
