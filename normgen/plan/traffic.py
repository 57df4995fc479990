"""The kernels a CUDA call launches, with the planner's model of their DRAM traffic.

What `normgen plan --target cuda` prints (and `--json` writes) for each step: its grid,
block, static shared memory, and the bytes it reads from and writes to DRAM. The model:

* each pass a kernel makes over an x-like array in global memory reads it once from
  DRAM: the fused rows kernels that keep their share of a group in registers read x
  once, those that stream it read it twice (statistics, then normalization);
* units sharing a group (`Launch.n_copies`) read all of it, but the copies after the
  first are served by L2 (the units run side by side): not DRAM traffic;
* weight and bias are read once per kernel; statistics, partial moments and sums are
  counted exactly.

`min_bytes` is what any implementation moves: the x-like inputs read once (x; x and dy
backward) and every output written once (y or dx; mean and rstd per group forward; the
parameter gradients backward).
"""

from __future__ import annotations

import math

from .bind import Binding
from .launch_cuda import ITEMSIZE
from .model import Direction, Kernel, Launch, ParamGrads, Plan, Step, Strategy

_M, _S = 3 * 8, 4 * 8  # float64 (count, mean, M2) per part; float64 sums per part (g, g x_hat, dy x_hat, dy)


def shared_doubles(kernel: Kernel, entry: str) -> dict[str, int]:
    """The NG_SHARED arrays (doubles) of an entry point: the templates declare exactly these."""
    if entry.endswith(("_merge", "_apply")):
        return {}
    if kernel.strategy is Strategy.ROWS:
        values = 4 if entry.startswith("backward") else 2  # sums reduced together over a unit
        return {"scratch": values * 32}  # per warp of a block of at most 1024 threads
    tile = kernel.tile[0] * kernel.vec  # elements of a row a block takes
    red = {"red": 2 * tile * kernel.tile[1]}  # two sums per element per row of threads
    return red if entry == "param_partial" else {**red, "fold": 2 * tile}  # ... then per element, for the columns


def shared_bytes(kernel: Kernel, entry: str) -> int:
    return 8 * sum(shared_doubles(kernel, entry).values())


def pgrad_entries(kernel: Kernel, la: Launch) -> int:
    """Entries of the columns kernels' per-element partial sums (dy x_hat, dy) of parameter gradients."""
    n_groups = math.prod(la.sizes[i] for i in kernel.groups)
    tail = la.sizes[kernel.tail] if kernel.tail is not None else 1
    return n_groups * la.n_parts * la.sizes[kernel.inner] * tail


def param_partial_entries(plan: Plan) -> int:
    """Entries (dy x_hat, dy) the parameter-gradient reduction writes."""
    k, la = plan.kernel, plan.launch
    if k.strategy is Strategy.COLUMNS:
        return pgrad_entries(k, la)
    return max(1, math.prod(la.sizes[i] for i in k.groups)) * la.n_parts


class _Model:
    """Byte counts of one plan's arrays."""

    def __init__(self, kernel: Kernel, la: Launch, binding: Binding):
        self.k, self.la = kernel, la
        it = ITEMSIZE[kernel.dtype]
        self.X = math.prod(la.sizes) * it
        self.st = 8 if kernel.dtype == "float64" else 4
        self.ng = max(1, math.prod(binding.stats_shape))
        n_param = math.prod(binding.param_shape) if binding.param_shape else 0
        self.P = (int(kernel.has_weight) + int(kernel.has_bias)) * n_param * it
        self.grads = 2 * n_param * (4 if kernel.dtype in ("float16", "bfloat16") else it)
        self.kstats = self.ng * 3 * self.st

    def step(self, entry: str, what: str, read: int, written: int, merge: bool = False) -> Step:
        la = self.la
        grid = (la.merge_grid, 1, 1) if merge else (la.grid, 1, 1)
        block = (la.merge_block, 1, 1) if merge else (la.block[0], la.block[1], 1)
        return Step(entry, f"grid {grid[0]} x block ({block[0]}, {block[1]})", what, grid, block,
                    shared_bytes(self.k, entry), read, written)


def cuda_steps(plan: Plan, mixture: bool) -> tuple[tuple[Step, ...], tuple[Step, ...], int]:
    """(steps of a training call, steps of an evaluation call, min_bytes) of a CUDA plan."""
    k, la = plan.kernel, plan.launch
    m = _Model(k, la, plan.binding)
    X, P, ng, kst = m.X, m.P, m.ng, m.kstats
    pieces = la.pieces
    parts = f"{la.n_parts} parts per group" if la.n_copies == 1 else f"{la.pieces} shares per group"
    if k.direction is Direction.FORWARD:
        partial = m.step("forward_partial", f"moments of {parts}", X, ng * pieces * _M)
        merge = m.step("forward_merge", "a warp per group: merge the parts (Chan), finalize",
                       ng * pieces * _M, ng * _M + kst, merge=True)
        apply = m.step("forward_apply", "normalize", X + P + kst, X)
        host = Step("host", "", "mix the components' statistics" if mixture else "statistics from the running ones")
        if mixture:
            train = (partial, merge, host, apply)
        elif la.fused:
            kept = k.cache > 0
            what = ("moments of each group, then normalize it" + (" from registers" if kept else " (x read again)")
                    + (f"; {la.n_copies} units per group, each normalizing its share" if la.n_copies > 1 else ""))
            train = (m.step("forward_fused", what, (X if kept else 2 * X) + P, X + ng * _M + kst),)
        else:
            train = (partial, merge, apply)
        evaluate = (partial, merge, host, apply) if mixture else (host, apply)
        return train, evaluate, 2 * X + ng * 2 * m.st
    partial = m.step("backward_partial", f"sums of g and g·x̂ over {parts}", 2 * X + P + kst,
                     ng * pieces * _S + (pgrad_entries(k, la) * 16 if k.strategy is Strategy.COLUMNS else 0))
    apply = m.step("backward_apply", "dx", 2 * X + P + 2 * kst, X)
    if mixture:
        out = [partial, Step("host", "", "mix backward, coefficients of dx"), apply]
    elif la.fused:
        kept = k.cache > 0
        out = [m.step("backward_fused", "sums of g and g·x̂ per group, then dx" + (" from registers" if kept else ""),
                      (2 * X if kept else 4 * X) + P + kst, X + ng * _S)]
    else:
        out = [partial, m.step("backward_merge", "a warp per group: add the parts, coefficients of dx",
                               ng * pieces * _S + kst, ng * _S + kst, merge=True), apply]
    if plan.param_grads is ParamGrads.REDUCTION and plan.params is not None:
        pp = plan.params
        pm = _Model(pp.kernel, pp.launch, pp.binding)
        out.append(pm.step("param_partial", "sums of dy·x̂ and dy per parameter index (the parameter-gradient "
                           "reduction)", 2 * X + kst, param_partial_entries(pp) * 16))
    if plan.param_grads is not ParamGrads.NONE:
        out.append(Step("host", "", f"parameter gradients: {plan.param_grads.value} partials, summed in a fixed "
                                    "order"))
    grads = m.grads if plan.param_grads is not ParamGrads.NONE else 0
    return tuple(out), (), 3 * X + grads


def plan_json(plan: Plan, evaluation: bool = False) -> dict:
    """{"device", "kernels": [{name, grid, block, shared_bytes, bytes_read, bytes_written}], "min_bytes"}."""
    steps = plan.eval_steps if evaluation else plan.steps
    min_bytes = plan.min_bytes
    if evaluation:  # no statistics are written
        m = _Model(plan.kernel, plan.launch, plan.binding)
        min_bytes = 2 * m.X
    return {"device": plan.device.name if plan.device else "",
            "kernels": [{"name": s.entry, "grid": list(s.grid), "block": list(s.block), "shared_bytes": s.shared_bytes,
                         "bytes_read": s.bytes_read, "bytes_written": s.bytes_written}
                        for s in steps if s.entry != "host"],
            "min_bytes": min_bytes}
