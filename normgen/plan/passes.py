"""The structural passes of the planner, in the order `make_plan` runs them.

1. `logical_dims`    one dimension per spec axis, with its element stride in every array
                     the kernel touches (x-like arrays, statistics, parameters)
2. `drop_unit_dims`  size-1 dimensions index nothing
3. `memory_order`    sort by x's strides, outermost first, so loops walk memory forward
4. `coalesce`        merge neighbours that are both kept or both reduced and whose strides
                     compose in *every* array (so no index arithmetic is lost)
5. `choose_strategy` rows or columns, and which dims are groups, rows, inner (and tail)

Each is a pure function of the previous one's result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bind import Binding
from .model import Reduction, Strategy

#: a reduced tail shorter than this makes rows too short to pay for per-row work
ROW_MIN = 64


@dataclass(frozen=True)
class PDim:
    """A dimension during planning: size, role, and its stride in every array."""

    name: str
    axes: tuple[str, ...]
    size: int
    kept: bool
    strides: tuple[tuple[str, int], ...]  # array name -> element stride

    def s(self, array: str) -> int:
        return dict(self.strides)[array]


@dataclass(frozen=True)
class Layout:
    """The result of pass 5: the strategy and the role of each dim (indices into the dims)."""

    strategy: Strategy
    groups: tuple[int, ...]  # walked by the unit index
    rows: tuple[int, ...]  # reduced dims walked as rows inside a unit
    inner: int  # rows: the contiguous reduced dim; columns: the kept column dim
    tail: int | None  # columns: a short reduced dim inside the column dim


def logical_dims(binding: Binding, arrays: dict[str, tuple[int, ...]], reduction: Reduction) -> tuple[PDim, ...]:
    """Pass 1: one PDim per logical dim, with strides in x-like arrays, stats and params.

    Reduction.PARAMS plans the parameter-gradient reduction: its groups are the affine
    axes (sum over every element with the same parameter index), a second reduction with a
    different kept set that gets the same care as the first.
    """
    per_array = {name: binding.strides(s) for name, s in arrays.items()}
    out = []
    for i, d in enumerate(binding.dims):
        strides = tuple((name, per_array[name][i]) for name in arrays) + (("stat", d.stat_stride),
                                                                          ("param", d.param_stride))
        kept = d.kept if reduction is Reduction.STATS else d.param_stride != 0
        out.append(PDim(d.name, (d.name,), d.size, kept, strides))
    return tuple(out)


def drop_unit_dims(dims: tuple[PDim, ...]) -> tuple[PDim, ...]:
    """Pass 2: drop size-1 dims, keeping one reduced dim so every group has a loop."""
    kept = [d for d in dims if d.size != 1]
    if not any(not d.kept for d in kept):
        unit = next((d for d in reversed(dims) if not d.kept), None)
        name = unit.name if unit else "one"
        strides = tuple((a, 1 if a not in ("stat", "param") else 0) for a, _ in dims[0].strides)
        kept.append(PDim(name, (name,), 1, False, strides))
    return tuple(kept)


def memory_order(dims: tuple[PDim, ...]) -> tuple[PDim, ...]:
    """Pass 3: outermost (largest x stride) first; ties keep the spec's order."""
    return tuple(sorted(dims, key=lambda d: -abs(d.s("x"))))


def coalesce(dims: tuple[PDim, ...], binding: Binding) -> tuple[PDim, ...]:
    """Pass 4: merge neighbours with the same role whose strides compose in every array."""
    out: list[PDim] = []
    for d in dims:
        if out:
            prev = out[-1]
            if prev.kept == d.kept and all(prev.s(a) == d.s(a) * d.size for a, _ in d.strides):
                axes = prev.axes + d.axes
                out[-1] = PDim(_name(axes, binding), axes, prev.size * d.size, d.kept, d.strides)
                continue
        out.append(d)
    return tuple(out)


def _name(axes: tuple[str, ...], binding: Binding) -> str:
    """Code name of merged logical dims: a whole variadic group (spatial0, spatial1) by its name."""
    of = {d.name: d.axis for d in binding.dims}
    parts: list[str] = []
    i = 0
    while i < len(axes):
        group = of.get(axes[i], axes[i])
        members = [d.name for d in binding.dims if d.axis == group]
        if len(members) > 1 and tuple(axes[i:i + len(members)]) == tuple(members):
            parts.append(group)
            i += len(members)
        else:
            parts.append(axes[i])
            i += 1
    return "_".join(parts)


def choose_strategy(dims: tuple[PDim, ...], columns: bool = True) -> Layout:
    """Pass 5: rows or columns, and which dims are groups, rows, inner (and tail).

    Columns when a kept dim is innermost (or has a reduced tail shorter than ROW_MIN), its
    row tile is contiguous in every array, there are reduced dims outside it to walk as
    rows, and the parameters do not vary along those rows; rows otherwise (any strides),
    and always when `columns` is False (a quantized output needs whole groups per unit).
    """
    kept = [i for i, d in enumerate(dims) if d.kept]
    last_kept = kept[-1] if kept else None
    tail = list(range(last_kept + 1, len(dims))) if last_kept is not None else []
    tail_size = math.prod(dims[i].size for i in tail)
    outer_reduced = [i for i, d in enumerate(dims) if not d.kept and (last_kept is None or i < last_kept)]
    columns = (columns and last_kept is not None and outer_reduced and len(tail) <= 1
               and (not tail or tail_size < ROW_MIN)
               and _dense_tile(dims, last_kept, tail[0] if tail else None)
               and not any(dims[i].s("param") for i in outer_reduced))
    if columns:
        groups = tuple(i for i in kept if i != last_kept)
        return Layout(Strategy.COLUMNS, groups, tuple(outer_reduced), last_kept, tail[0] if tail else None)
    reduced = [i for i, d in enumerate(dims) if not d.kept]
    return Layout(Strategy.ROWS, tuple(kept), tuple(reduced[:-1]), reduced[-1], None)


def _dense_tile(dims: tuple[PDim, ...], col: int, tail: int | None) -> bool:
    """One row's tile (columns x tail) is contiguous in every x-like array."""
    arrays = [a for a, _ in dims[col].strides if a not in ("stat", "param")]
    if tail is None:
        return all(dims[col].s(a) == 1 for a in arrays)
    return all(dims[tail].s(a) == 1 and dims[col].s(a) == dims[tail].size for a in arrays)


def stride_class(stride: int) -> str:
    """'1' contiguous, '0' constant (does not move), 's' strided."""
    return "1" if stride == 1 else "0" if stride == 0 else "s"
