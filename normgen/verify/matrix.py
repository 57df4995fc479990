"""What `normgen check` runs: the matrix of checks of a spec, the kernels each one needs,
and a representative part of it that compiles few kernels.

The full matrix is every case (shapes drawn from the spec) x layout x dtype x mode
(train; eval too when the spec has running statistics), each check a forward and a
backward against the oracle. Compiling its kernels dominates a cold run, so the default
check is a cover: `representative` picks checks until each layout, dtype, mode and case
of the spec, each strategy (rows, columns) in each direction, and each kernel entry point
(fused; partial + apply, the phased path and evaluation) that the full matrix runs is
checked at least once, preferring checks whose kernels are needed already or cheap to
compile (a greedy weighted set cover; the price of a check is the compile time of the
entry points it adds, by strategy, per feature it covers). Then every other check that
needs no new kernel is added, free. Checks keep the seeds they have in the full matrix,
so a default check is a full one. (Covering every entry point of every strategy as well
needs 96 entry points instead of 83, 40 of them columns kernels instead of 22: about
30% more compile time; --full and the test suite run all of them.)

`needs(op, check)` plans the check's calls exactly as the op will (same strides, same
parameters) and names the kernel entry points they run, so they can be compiled first,
in parallel (runtime/prebuild.py); tests/test_prebuild.py runs checks and fails if
anything is compiled that `needs` did not name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codegen.abi import ENTRIES
from ..errors import CallError
from ..layouts import make_array
from ..op import Op
from ..op.fused import plan_arrays
from ..plan.bind import bind
from ..plan.model import Direction, Kernel, Plan, Strategy
from ..runtime.cpu import BACKEND as CPU
from ..spec import Spec


@dataclass(frozen=True)
class Case:
    label: str
    shape: tuple[int, ...]
    sizes: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Check:
    """One cell of the matrix: a case in a layout, dtype and mode, with its data's seed."""

    case: Case
    layout: str
    dtype: str
    training: bool
    seed: int

    @property
    def mode(self) -> str:
        return "train" if self.training else "eval"


@dataclass(frozen=True)
class Need:
    """Entry points of one kernel structure that a check runs."""

    kernel: Kernel
    entries: tuple[str, ...]


def cases(spec: Spec) -> list[Case]:
    """Shapes for a spec: a small one, one with other variadic ranks, a large few-groups one."""
    out: list[Case] = []
    for label, variant in (("small", 0), ("ranks", 1), ("large", 2)):
        case = _case(spec, label, variant)
        if all((c.shape, c.sizes) != (case.shape, case.sizes) for c in out):
            out.append(case)
    return out


def _case(spec: Spec, label: str, variant: int) -> Case:
    pool = iter([3, 4, 5, 2, 6, 7, 3, 4])
    given = dict(spec.sizes)
    kept = set(spec.kept_axes)
    shape: list[int] = []
    sizes: dict[str, Any] = {}
    grow: list[tuple[int, str | None]] = []  # reduced dims the large case may grow (and the size arg that names them)
    for item in spec.input.items:
        name = item.names[0]
        if item.variadic:
            arg = given.get(name)
            dims = [(4, 5), (6,), (8, 5)][variant] if arg else [(5, 6), (), (6, 7)][variant]
            if variant == 2 and name in kept:
                dims = tuple(2 for _ in dims)
            start = len(shape)
            shape.extend(dims)
            if name not in kept:
                grow.extend((i, arg) for i in range(start, len(shape)))
        elif item.is_split:
            total = 1
            for part in item.names:
                if part in given and isinstance(given[part], str):
                    value = 2
                    sizes[given[part]] = value
                elif part in given:
                    value = given[part]
                else:
                    value = 3 if variant != 2 or part in kept else 12
                total *= value
            shape.append(total)
        else:
            size = next(pool)
            if variant == 2:
                size = 2 if name in kept else size
            shape.append(size)
            if name not in kept:
                grow.append((len(shape) - 1, None))
    if variant == 2:
        while math.prod(shape) < 48 * 1024 and grow:
            d = min((i for i, _ in grow), key=lambda i: shape[i])
            shape[d] *= 4
    for arg in {a for _, a in grow if a}:  # a given variadic shape follows its (grown) dims
        sizes[arg] = tuple(shape[i] for i, a in grow if a == arg)
    if spec.running is not None and math.prod(shape) and bind(spec, tuple(shape), sizes).group_size < 2:
        # training with running statistics needs two or more values per statistic (n - 1 > 0)
        return _case(spec, label, variant=0)
    return Case(label, tuple(shape), tuple(sizes.items()))


def full(spec: Spec, layouts: Iterable[str], dtypes: Iterable[str]) -> list[Check]:
    """Every case x layout x dtype x mode, seeded 1, 2, ... in this order."""
    modes = (True, False) if spec.running is not None else (True,)
    grid = [(case, layout, dtype, training) for case in cases(spec) for layout in layouts for dtype in dtypes
            for training in modes]
    return [Check(*cell, seed=i) for i, cell in enumerate(grid, start=1)]


# ---- the kernels a check runs ---------------------------------------------------------
def plans(op: Op, check: Check) -> tuple[Plan, Plan]:
    """The CPU plans of the check's forward and backward calls, made as the op makes them."""
    spec, case = op.spec, check.case
    storage = np.uint16 if check.dtype == "bfloat16" else check.dtype  # (strides are all a plan reads)
    x = make_array(np.zeros(case.shape), check.layout, storage)
    dy = make_array(np.zeros(case.shape), check.layout, storage)  # run_case lays dy out like x
    binding = bind(spec, case.shape, dict(case.sizes))
    has_w = bool(spec.affine and spec.affine.weight)  # run_case passes every parameter
    has_b = bool(spec.affine and spec.affine.bias)
    out = CPU.strides(CPU.empty_like(x))  # y and dx: allocated by the op
    # a fused spec's extras are laid out like x (run_case), its new arrays like the output; the
    # gradient of a kept prologue (dprologue) is made like dy, in x's layout
    fx = {d: plan_arrays(spec, d, CPU.strides(x), out) for d in ("forward", "backward")}
    if "dh" in fx["backward"]:
        fx["backward"]["dh"] = CPU.strides(dy)
    fwd = CPU.plan(binding, {"x": CPU.strides(x), "y": out, **fx["forward"]}, Direction.FORWARD, check.dtype,
                   has_w, has_b, op.options)
    bwd = CPU.plan(binding, {"x": CPU.strides(x), "dy": CPU.strides(dy), "dx": out, **fx["backward"]},
                   Direction.BACKWARD, check.dtype, has_w, has_b, op.options)
    return fwd, bwd


def entries(plan: Plan, training: bool, mixture: bool) -> tuple[str, ...]:
    """The entry points a call with this plan runs (op/op.py): a training call runs the
    plan's steps; evaluation normalizes with given statistics (forward_apply) and its
    backward, like a mixture's calls, takes the split path (partial sums, then apply)."""
    d = plan.kernel.direction
    if mixture or (not training and d is Direction.BACKWARD):
        return (f"{d.value}_partial", f"{d.value}_apply")
    if not training:
        return ("forward_apply",)
    return tuple(s.entry for s in plan.steps if s.entry in ENTRIES)


def needs(op: Op, check: Check) -> tuple[Need, ...]:
    """The kernel entry points the check's forward and backward run (none when the backend
    refuses the call, e.g. a half-type fused spec on channels_last: the check reports it)."""
    try:
        planned = plans(op, check)
    except CallError:
        return ()
    return tuple(Need(p.kernel, entries(p, check.training, op.spec.is_mixture)) for p in planned)


def body(kernel: Kernel) -> Kernel:
    """The kernel without the spec's name: what its module's code (below the header, which
    alone names the spec) and so its cache key depend on. Kernels of two specs with equal
    bodies share one compiled module; comparing bodies needs no rendering."""
    return dataclasses.replace(kernel, spec="", spec_from="")


#: relative compile time of an entry point by strategy (Numba, on this project's 2-core
#: machine: rows kernels 0.4-1 s of CPU, columns kernels 1-3.7 s)
COMPILE_COST = {Strategy.ROWS: 1.0, Strategy.COLUMNS: 3.0}


def features(check: Check, need: tuple[Need, ...]) -> frozenset[tuple[str, ...]]:
    """What a check covers: its layout, dtype, mode and case, each (strategy, direction)
    and each entry point its calls run."""
    out = {("layout", check.layout), ("dtype", check.dtype), ("mode", check.mode), ("case", check.case.label)}
    out.update(("strategy", n.kernel.strategy.value, n.kernel.direction.value) for n in need)
    out.update(("entry", e) for n in need for e in n.entries)
    return frozenset(out)


def representative(matrix: list[tuple[Check, frozenset, frozenset]], have: set) -> list[Check]:
    """A part of one spec's matrix that covers all of its features, compiling little.

    `matrix` holds (check, its features, the (kernel body, entry point) pairs it needs);
    `have` holds the pairs needed already (by the specs before), and grows by the choice's.
    """
    todo = set().union(*(f for _, f, _ in matrix))
    chosen: list[Check] = []
    while todo:
        # the lowest price: compile time added per feature still to cover (the first of equals)
        check, feats, keys = min(matrix, key=lambda item: _price(item, todo, have))
        chosen.append(check)
        have.update(keys)
        todo -= feats
    free = [c for c, _, keys in matrix if c not in chosen and keys <= have]
    return sorted(chosen + free, key=lambda c: c.seed)


def _price(item: tuple[Check, frozenset, frozenset], todo: set, have: set) -> tuple[float, int]:
    _, feats, keys = item
    gain = len(feats & todo)
    cost = sum(COMPILE_COST[kernel.strategy] for kernel, _ in keys - have)
    return (cost / gain if gain else math.inf, -gain)
