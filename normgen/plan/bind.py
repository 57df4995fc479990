"""Binding: a Spec meets a concrete call (the shape of x and the call-time sizes).

`bind(spec, shape, sizes)` names every logical dimension of x: a split "(G c)" becomes two
dimensions G and c of one physical dimension, a variadic group "*spatial" becomes
spatial0, spatial1, ... It works out the shapes the call's other arrays must have
(statistics, parameters, running statistics) and the element strides of each logical
dimension in those arrays. The planner takes it from there; the binding decides nothing
about loops or hardware.

    >>> b = bind(load_spec("specs/group_norm.toml"), (8, 256, 64, 64), {"num_groups": 32})
    >>> [(d.name, d.size) for d in b.dims]
    [('N', 8), ('G', 32), ('c', 8), ('spatial0', 64), ('spatial1', 64)]
    >>> b.stats_shape, b.param_shape
    ((8, 32), (256,))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CallError
from ..spec import Spec


@dataclass(frozen=True)
class LogicalDim:
    """One logical dimension of x, after splits and variadic groups are spelled out."""

    name: str  # identifier used in generated code: "C", "G", "spatial0"
    axis: str  # the spec axis it belongs to ("spatial" for spatial0)
    size: int
    phys: int  # the dimension of x it lives in
    inner: int  # product of the sizes of split parts inside it (x stride = strides[phys] * inner)
    kept: bool  # indexes the statistics
    stat_stride: int  # element stride in the (contiguous, kept-order) statistics; 0 if reduced
    param_stride: int  # element stride in a contiguous affine parameter; 0 if not an affine axis
    run_stride: int  # element stride in the running statistics; 0 if not a running axis


@dataclass(frozen=True)
class Binding:
    spec: Spec
    shape: tuple[int, ...]
    dims: tuple[LogicalDim, ...]
    stats_shape: tuple[int, ...]  # kept axes in kept order
    param_shape: tuple[int, ...] | None  # shape of each affine parameter
    running_shape: tuple[int, ...] | None
    component_dims: tuple[tuple[int, ...], ...]  # for a mixture: stats dims each component keeps
    running_dims: tuple[int, ...] | None  # the stats dims the running statistics index, in running order

    @functools.cached_property
    def group_size(self) -> int:
        """Elements per statistic (the product of the reduced sizes)."""
        return math.prod(d.size for d in self.dims if not d.kept)

    @functools.cached_property
    def n_groups(self) -> int:
        return math.prod(self.stats_shape)

    def strides(self, elem_strides: tuple[int, ...]) -> tuple[int, ...]:
        """Element strides of each logical dimension, for an array shaped like x."""
        return tuple(elem_strides[d.phys] * d.inner for d in self.dims)

    def describe(self) -> str:
        return ", ".join(f"{d.name}={d.size}" for d in self.dims)


def bind(spec: Spec, shape: tuple[int, ...], sizes: Mapping[str, Any] | None = None) -> Binding:
    """Name the logical dimensions of an input of `shape`; raise CallError if it cannot fit."""
    sizes = dict(sizes or {})
    shape = tuple(int(n) for n in shape)
    given = dict(spec.sizes)
    items = spec.input.items

    # 1. how many dimensions of x each input item takes
    ranks: list[int | None] = []
    var_shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        if item.variadic and item.names[0] in given:
            name = item.names[0]
            var_shapes[name] = _shape_arg(spec, sizes, given[name], name)
            ranks.append(len(var_shapes[name]))
        elif item.variadic:
            ranks.append(None)
        else:
            ranks.append(1)
    fixed = sum(r for r in ranks if r is not None)
    has_free = None in ranks
    if len(shape) < fixed or (not has_free and len(shape) != fixed):
        need = f"at least {fixed}" if has_free else f"exactly {fixed}"
        raise CallError(f"{spec.name}: input has {len(shape)} dimensions {shape}, but '{spec.input}' "
                        f"needs {need}")
    ranks = [len(shape) - fixed if r is None else r for r in ranks]

    # 2. logical dimensions (sizes, which physical dim, inner multiplier)
    raw: list[tuple[str, str, int, int, int]] = []  # name, axis, size, phys, inner
    d = 0
    for item, rank in zip(items, ranks):
        dims = shape[d: d + rank]
        if item.variadic:
            name = item.names[0]
            if name in var_shapes and dims != var_shapes[name]:
                arg = given[name]
                raise CallError(f"{spec.name}: {arg}={var_shapes[name]} does not match the trailing "
                                f"dimensions {dims} of the input {shape}",
                                allowed=f"{arg}={dims} (the input's dimensions that '*{name}' takes) for this input")
            for k, n in enumerate(dims):
                code = name if rank == 1 else f"{name}{k}"
                raw.append((code, name, n, d + k, 1))
        elif item.is_split:
            total = dims[0]
            part_sizes = {p: _const_or_arg(spec, sizes, given[p], p) for p in item.names if p in given}
            known = math.prod(part_sizes.values())
            missing = [p for p in item.names if p not in part_sizes]
            if missing:
                if known <= 0 or total % known:
                    what = " * ".join(f"{p}={part_sizes[p]}" for p in part_sizes)
                    raise CallError(f"{spec.name}: dimension {d} of the input has size {total}, which "
                                    f"{what} does not divide (split '{item}')",
                                    allowed=f"sizes whose product divides {total}")
                part_sizes[missing[0]] = total // known
            elif known != total:
                raise CallError(f"{spec.name}: split '{item}' gives {known}, but dimension {d} has size {total}",
                                allowed=f"sizes whose product is {total}")
            inner = 1
            for p in reversed(item.names):
                raw.append((p, p, part_sizes[p], d, inner))
                inner *= part_sizes[p]
            raw[-len(item.names):] = reversed(raw[-len(item.names):])
        else:
            raw.append((item.names[0], item.names[0], dims[0], d, 1))
        d += rank

    if not raw:
        raise CallError(f"{spec.name}: an input of shape {shape} has no axes to normalize over",
                        allowed=f"an input with a dimension for at least one axis of '{spec.input}'")

    # 3. strides in the statistics, the parameters and the running statistics
    def dims_of(names: tuple[str, ...]) -> list[int]:
        return [i for a in names for i, r in enumerate(raw) if r[1] == a]

    kept_idx = dims_of(spec.kept_axes)
    stat_strides = _contiguous({i: raw[i][2] for i in kept_idx}, kept_idx)
    param_strides: dict[int, int] = {}
    param_shape = None
    if spec.affine:
        param_shape, pdims = [], []
        for item in spec.affine.axes.items:
            idx = dims_of(item.names)
            if item.variadic:
                for i in idx:
                    param_shape.append(raw[i][2])
                    pdims.append([i])
            else:
                param_shape.append(math.prod(raw[i][2] for i in idx))
                pdims.append(idx)
        stride = 1
        for idx in reversed(pdims):  # C order over the parameter's own dimensions
            for i in reversed(idx):
                param_strides[i] = stride
                stride *= raw[i][2]
        param_shape = tuple(param_shape)
    run_strides: dict[int, int] = {}
    running_shape = running_dims = None
    if spec.running:
        ridx = dims_of(spec.running.axes)
        run_strides = _contiguous({i: raw[i][2] for i in ridx}, ridx)
        running_shape = tuple(raw[i][2] for i in ridx)
        running_dims = tuple(kept_idx.index(i) for i in ridx)

    dims = tuple(LogicalDim(name=r[0], axis=r[1], size=r[2], phys=r[3], inner=r[4], kept=i in stat_strides,
                            stat_stride=stat_strides.get(i, 0), param_stride=param_strides.get(i, 0),
                            run_stride=run_strides.get(i, 0)) for i, r in enumerate(raw))
    stats_shape = tuple(raw[i][2] for i in kept_idx)
    components = tuple(tuple(kept_idx.index(i) for i in dims_of(k)) for k in spec.kept)
    return Binding(spec, shape, dims, stats_shape, param_shape, running_shape, components, running_dims)


def _contiguous(sizes: dict[int, int], order: list[int]) -> dict[int, int]:
    out, stride = {}, 1
    for i in reversed(order):
        out[i] = stride
        stride *= sizes[i]
    return out


def _const_or_arg(spec: Spec, sizes: Mapping[str, Any], value: int | str, axis: str) -> int:
    if isinstance(value, int):
        return value
    if value not in sizes or sizes[value] is None:
        raise CallError(f"{spec.name}: missing call argument {value}= (the size of axis '{axis}')")
    v = sizes[value]
    if isinstance(v, bool) or not isinstance(v, (int,)) and not (hasattr(v, "__index__")):
        raise CallError(f"{spec.name}: {value}= must be a positive integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if v <= 0:
        raise CallError(f"{spec.name}: {value}= must be a positive integer, got {v}")
    return v


def _shape_arg(spec: Spec, sizes: Mapping[str, Any], arg: str, axis: str) -> tuple[int, ...]:
    if arg not in sizes or sizes[arg] is None:
        raise CallError(f"{spec.name}: missing call argument {arg}= (the shape of '*{axis}')")
    v = sizes[arg]
    if hasattr(v, "__index__") and not isinstance(v, bool):
        return (int(v),)
    try:
        out = tuple(int(n) for n in v)
    except (TypeError, ValueError):
        raise CallError(f"{spec.name}: {arg}= must be an int or a sequence of ints, got {v!r}") from None
    if not out or any(n < 0 for n in out):
        raise CallError(f"{spec.name}: {arg}= must be a non-empty shape of sizes >= 0, got {out}")
    return out
