"""The planner: (binding, strides, dtype, target) -> Plan. Every decision lives here.

The passes, in order (see `make_plan`):

1. `logical_dims`   one dimension per spec axis, with its element stride in every array
                    the kernel touches (x, y or dy/dx, statistics, parameters)
2. `drop_unit_dims` size-1 dimensions index nothing
3. `memory_order`   sort by x's strides, outermost first, so loops walk memory forward
4. `coalesce`       merge neighbours that are both kept or both reduced and whose strides
                    compose in *every* array (so no index arithmetic is lost)
5. `choose_strategy`
      rows:    the innermost dimension is reduced and long: one group of statistics per
               work unit, its reduced dimensions walked as contiguous rows
               (LayerNorm, GroupNorm/InstanceNorm on NCHW, BatchNorm on NCHW)
      columns: the innermost dimension is kept (or kept with a short reduced tail): each
               unit accumulates one vector of statistics per column over a block of rows
               (BatchNorm on NHWC, feature standardization, InstanceNorm on NHWC)
6. `choose_launch`  how units split over threads: fused (statistics, then normalize while
                    the group is hot in cache) when there are enough groups; otherwise the
                    reduction is split into parts, merged with Chan's formula, then applied.

The Plan has two halves. `Kernel` is structural (dims, roles, order, stride classes,
strategy): it is what the generated code depends on, and what the cache key hashes.
`Launch` holds the numbers (sizes, strides, parts, chunk lengths), passed at run time, so
one compiled kernel serves every shape with the same structure.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from dataclasses import dataclass, field

from .bind import Binding
from ..spec.loader import Center, Scale, Spec

#: elements per exact two-pass chunk of a row (16 KiB of float32: stays in L1 between the passes)
CHUNK = 4096
#: elements per two-pass chunk of rows in the columns strategy: large enough that folding
#: and merging each column's moments once per chunk costs little (128 KiB of float32, in L2)
COL_CHUNK = 32768
#: a reduced tail shorter than this makes rows too short to pay for per-row work
ROW_MIN = 64
#: columns accumulated together by one unit in the columns strategy
COL_SEG = 1024
#: columns strategy, apply passes: when whole rows lie back to back, this many elements of
#: consecutive rows are normalized in one vector loop (short rows cost a call each otherwise)
COL_APPLY = 1024


def col_apply_rows(tile: int) -> int:
    """Rows per apply step when rows are back to back (the kernels and their scratch agree)."""
    return max(1, COL_APPLY // max(tile, 1))
#: tests set this to split every reduction into parts (exercising the phased kernels on small shapes)
FORCE_PARTS: int | None = None


class Strategy(enum.Enum):
    ROWS = "rows"
    COLUMNS = "columns"


class Direction(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"


#: the arrays each direction touches, besides statistics ("stat") and parameters ("param")
ARRAYS = {Direction.FORWARD: ("x", "y"), Direction.BACKWARD: ("x", "dy", "dx")}


@dataclass(frozen=True)
class Dim:
    """One loop dimension after coalescing: its name in code and the spec axes it walks."""

    name: str  # identifier in generated code, e.g. "C" or "spatial" or "N_G"
    axes: tuple[str, ...]  # logical dimensions merged into it, outer first
    kept: bool
    affine: bool  # the parameters vary along it

    @property
    def label(self) -> str:
        return "·".join(self.axes)


@dataclass(frozen=True)
class Kernel:
    """The structure of a plan: what the generated source depends on (and the cache key)."""

    spec: str  # the spec's name
    spec_from: str  # its file name, input and kept sets, for the generated header
    direction: Direction
    target: str
    dtype: str
    strategy: Strategy
    dims: tuple[Dim, ...]  # loop dimensions, outermost first
    groups: tuple[int, ...]  # dims walked by the unit index (rows: all kept; columns: other kept)
    rows: tuple[int, ...]  # reduced dims walked as rows inside a unit
    inner: int  # rows: the contiguous reduced dim; columns: the kept column dim
    tail: int | None  # columns: a short reduced dim inside the column dim, if any
    unit_stride: tuple[tuple[str, str], ...]  # (array@dim, "1"|"s"|"0") for the inner loop dims
    center: Center
    scale: Scale
    has_weight: bool
    has_bias: bool
    reduce_by: str = "stats"  # "params": groups are parameter indices (the parameter-gradient reduction)

    def stride_class(self, array: str, dim: int | None) -> str:
        """'1' contiguous, '0' constant, 's' strided: how `array` moves along `dim`."""
        if dim is None:
            return "0"
        return dict(self.unit_stride)[f"{array}@{self.dims[dim].name}"]

    @property
    def arrays(self) -> tuple[str, ...]:
        return ARRAYS[self.direction]

    def canonical(self) -> str:
        """A stable text form, hashed into the cache key."""
        dims = ";".join(f"{d.name}:{'K' if d.kept else 'R'}{'A' if d.affine else ''}" for d in self.dims)
        return (f"spec={self.spec}|from={self.spec_from}|dir={self.direction.value}|target={self.target}|dtype={self.dtype}|"
                f"strategy={self.strategy.value}|dims={dims}|groups={self.groups}|rows={self.rows}|"
                f"inner={self.inner}|tail={self.tail}|strides={self.unit_stride}|center={self.center.value}|"
                f"scale={self.scale.value}|w={self.has_weight}|b={self.has_bias}|by={self.reduce_by}")


@dataclass(frozen=True)
class Launch:
    """The numbers of a plan, passed to the kernels at run time."""

    sizes: tuple[int, ...]  # per loop dim
    strides: tuple[tuple[str, tuple[int, ...]], ...]  # array -> element stride per loop dim
    n_parts: int  # units per group of statistics (1: fused)
    n_blocks: int  # parallel blocks of units
    seg: int  # rows: elements per chunk of a row; columns: columns per unit
    row_chunk: int  # columns: rows per two-pass chunk
    threads: int
    gpu: tuple[int, ...] = ()  # cuda: (grid, block x, block y, threads per unit)

    @property
    def fused(self) -> bool:
        return self.n_parts == 1

    def stride(self, array: str) -> tuple[int, ...]:
        return dict(self.strides)[array]


@dataclass(frozen=True)
class Plan:
    kernel: Kernel
    launch: Launch
    binding: Binding = field(compare=False, repr=False)

    def __str__(self) -> str:
        from .describe import describe_plan

        return describe_plan(self)


# ---- passes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _LDim:
    """A dimension during planning: size, role, and its stride in every array."""

    name: str
    axes: tuple[str, ...]
    size: int
    kept: bool
    strides: tuple[tuple[str, int], ...]  # array name -> element stride

    def s(self, array: str) -> int:
        return dict(self.strides)[array]


def logical_dims(binding: Binding, arrays: dict[str, tuple[int, ...]], reduce_by: str = "stats") -> list[_LDim]:
    """Pass 1: one _LDim per logical dim, with strides in x-like arrays, stats and params.

    reduce_by="params" plans the parameter-gradient reduction: its groups are the affine
    axes (sum over every element with the same parameter index), a second reduction with a
    different kept set that gets the same care as the first.
    """
    per_array = {name: binding.strides(s) for name, s in arrays.items()}
    out = []
    for i, d in enumerate(binding.dims):
        strides = [(name, per_array[name][i]) for name in arrays]
        strides += [("stat", d.stat_stride), ("param", d.param_stride)]
        kept = d.kept if reduce_by == "stats" else d.param_stride != 0
        out.append(_LDim(d.name, (d.name,), d.size, kept, tuple(strides)))
    return out


def drop_unit_dims(dims: list[_LDim]) -> list[_LDim]:
    """Pass 2: drop size-1 dims, keeping one reduced dim so every group has a loop."""
    kept = [d for d in dims if d.size != 1]
    if not any(not d.kept for d in kept):
        unit = next((d for d in reversed(dims) if not d.kept), None)
        name = unit.name if unit else "one"
        strides = tuple((a, 1 if a not in ("stat", "param") else 0) for a, _ in dims[0].strides)
        kept.append(_LDim(name, (name,), 1, False, strides))
    return kept


def memory_order(dims: list[_LDim]) -> list[_LDim]:
    """Pass 3: outermost (largest x stride) first; ties keep the spec's order."""
    return sorted(dims, key=lambda d: -abs(d.s("x")))


def coalesce(dims: list[_LDim], binding: Binding) -> list[_LDim]:
    """Pass 4: merge neighbours with the same role whose strides compose in every array."""
    out: list[_LDim] = []
    for d in dims:
        if out:
            prev = out[-1]
            if prev.kept == d.kept and all(prev.s(a) == d.s(a) * d.size for a, _ in d.strides):
                axes = prev.axes + d.axes
                out[-1] = _LDim(_name(axes, binding), axes, prev.size * d.size, d.kept, d.strides)
                continue
        out.append(d)
    return out


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


def choose_strategy(dims: list[_LDim]) -> tuple[Strategy, tuple[int, ...], tuple[int, ...], int, int | None]:
    """Pass 5: rows or columns, and which dims are groups, rows, inner (and tail).

    Columns when a kept dim is innermost (or has a reduced tail shorter than ROW_MIN), its
    row tile is contiguous in every array, there are reduced dims outside it to walk as
    rows, and the parameters do not vary along those rows; rows otherwise (any strides).
    """
    kept = [i for i, d in enumerate(dims) if d.kept]
    last_kept = kept[-1] if kept else None
    tail = list(range(last_kept + 1, len(dims))) if last_kept is not None else []
    tail_size = math.prod(dims[i].size for i in tail)
    outer_reduced = [i for i, d in enumerate(dims) if not d.kept and (last_kept is None or i < last_kept)]
    columns = (last_kept is not None and outer_reduced and len(tail) <= 1
               and (not tail or tail_size < ROW_MIN)
               and _dense_tile(dims, last_kept, tail[0] if tail else None)
               and not any(dims[i].s("param") for i in outer_reduced))
    if columns:
        groups = tuple(i for i in kept if i != last_kept)
        return Strategy.COLUMNS, groups, tuple(outer_reduced), last_kept, (tail[0] if tail else None)
    reduced = [i for i, d in enumerate(dims) if not d.kept]
    return Strategy.ROWS, tuple(kept), tuple(reduced[:-1]), reduced[-1], None


def _dense_tile(dims: list[_LDim], col: int, tail: int | None) -> bool:
    """One row's tile (columns x tail) is contiguous in every x-like array."""
    arrays = [a for a, _ in dims[col].strides if a not in ("stat", "param")]
    if tail is None:
        return all(dims[col].s(a) == 1 for a in arrays)
    return all(dims[tail].s(a) == 1 and dims[col].s(a) == dims[tail].size for a in arrays)


def stride_class(stride: int) -> str:
    return "1" if stride == 1 else "0" if stride == 0 else "s"


def choose_launch(strategy: Strategy, dims: list[_LDim], groups: tuple[int, ...], rows: tuple[int, ...],
                  inner: int, tail: int | None, threads: int) -> tuple[int, int, int, int]:
    """Pass 6: (n_parts, n_blocks, seg, row_chunk).

    Fused (n_parts = 1) when there are at least two groups per thread or the whole tensor
    is small; otherwise each group's reduction is split into parts so every thread works.
    """
    n_groups = math.prod(dims[i].size for i in groups)
    n_rows = math.prod(dims[i].size for i in rows)
    total = math.prod(d.size for d in dims)
    if strategy is Strategy.ROWS:
        n_inner = dims[inner].size
        seg = min(n_inner, CHUNK) if FORCE_PARTS is None else max(1, -(-n_inner // FORCE_PARTS))
        chunks = n_rows * -(-n_inner // seg)
        units_per_group, row_chunk = chunks, 1
    else:
        n_col = dims[inner].size
        seg = min(n_col, COL_SEG)
        n_groups *= -(-n_col // seg)
        tile = seg * (dims[tail].size if tail is not None else 1)
        row_chunk = 1 if FORCE_PARTS is not None else max(1, COL_CHUNK // tile)
        units_per_group = -(-n_rows // row_chunk)
    want = 2 * threads
    if FORCE_PARTS is not None:
        n_parts = max(1, min(units_per_group, FORCE_PARTS))
    elif n_groups >= want or total < 32 * 1024:
        n_parts = 1
    else:
        n_parts = max(1, min(units_per_group, -(-want // n_groups)))
    n_units = n_groups * n_parts
    n_blocks = max(1, min(n_units, 4 * threads))
    return n_parts, n_blocks, seg, row_chunk


def spec_from(spec: Spec) -> str:
    kept = " | ".join(spec.axes_str(c) for c in spec.kept)
    return f"{Path(spec.source).name}: input '{spec.input}', kept '{kept}'"


def choose_gpu_launch(strategy: Strategy, dims: list[_LDim], groups: tuple[int, ...], rows: tuple[int, ...],
                      inner: int, tail: int | None, sms: int) -> tuple[int, tuple[int, ...]]:
    """(n_parts, (grid, block x, block y, threads per unit)) for the CUDA kernels.

    rows: a warp per group when a group has at most 4096 elements (8 groups a block),
    else a block of 256 or 512 threads per group; groups are split into parts when there
    are too few to fill every SM twice. columns: a 2-D block, x over a tile of whole
    columns (with their tail), y over rows; rows are split into parts to fill the GPU.
    """
    n_groups = math.prod(dims[i].size for i in groups)
    n_rows = math.prod(dims[i].size for i in rows)
    want = 2 * sms
    if strategy is Strategy.ROWS:
        elems = n_rows * dims[inner].size
        tpu = 32 if elems <= 4096 else (512 if elems >= 65536 else 256)
        block = 256 if tpu == 32 else tpu
        per_block = block // tpu
        n_parts = 1
        if FORCE_PARTS is not None:
            n_parts = max(1, min(FORCE_PARTS, elems))
        elif n_groups * 1 < want * per_block and elems >= 8 * tpu:
            n_parts = max(1, min(-(-want * per_block // max(n_groups, 1)), elems // (4 * tpu)))
        grid = -(-n_groups * n_parts // per_block)
        return n_parts, (grid, block, 1, tpu)
    tail_size = dims[tail].size if tail is not None else 1
    per_tile = max(1, 32 // tail_size)
    bx = min(per_tile, dims[inner].size) * tail_size
    by = max(1, min(8, 1024 // bx))
    tiles = -(-dims[inner].size // per_tile) * n_groups
    if FORCE_PARTS is not None:
        n_parts = max(1, min(FORCE_PARTS, n_rows))
    else:
        n_parts = max(1, min(-(-2 * want // tiles), max(1, n_rows // (4 * by))))
    return n_parts, (tiles * n_parts, bx, by, bx * by)


def make_plan(binding: Binding, arrays: dict[str, tuple[int, ...]], *, direction: Direction, dtype: str,
              has_weight: bool, has_bias: bool, target: str = "cpu", threads: int = 1, sms: int = 132,
              reduce_by: str = "stats") -> Plan:
    """Plan one call. `arrays` maps each x-like array to its element strides.

    >>> plan = make_plan(bind(spec, (32, 128, 56, 56)), {"x": ..., "y": ...},
    ...                  direction=Direction.FORWARD, dtype="float32", has_weight=True, has_bias=True)
    """
    dims = logical_dims(binding, arrays, reduce_by)
    dims = drop_unit_dims(dims)
    dims = memory_order(dims)
    dims = coalesce(dims, binding)
    strategy, groups, rows, inner, tail = choose_strategy(dims)
    gpu: tuple[int, ...] = ()
    if target == "cuda":
        n_parts, gpu = choose_gpu_launch(strategy, dims, groups, rows, inner, tail, sms)
        n_blocks, seg, row_chunk = gpu[0], 0, 0
    else:
        n_parts, n_blocks, seg, row_chunk = choose_launch(strategy, dims, groups, rows, inner, tail, threads)

    all_arrays = tuple(arrays) + ("stat", "param")
    loop_inner = [inner] + ([tail] if tail is not None else [])
    unit = tuple((f"{a}@{dims[i].name}", stride_class(dims[i].s(a))) for i in loop_inner for a in all_arrays)
    spec = binding.spec
    kernel = Kernel(
        spec=spec.name, spec_from=spec_from(spec), direction=direction, target=target, dtype=dtype, strategy=strategy,
        dims=tuple(Dim(d.name, d.axes, d.kept, d.s("param") != 0) for d in dims),
        groups=groups, rows=rows, inner=inner, tail=tail, unit_stride=unit,
        center=spec.center, scale=spec.scale,
        has_weight=has_weight, has_bias=has_bias, reduce_by=reduce_by)
    launch = Launch(
        sizes=tuple(d.size for d in dims),
        strides=tuple((a, tuple(d.s(a) for d in dims)) for a in all_arrays),
        n_parts=n_parts, n_blocks=n_blocks, seg=seg, row_chunk=row_chunk, threads=threads, gpu=gpu)
    return Plan(kernel, launch, binding)


# ---- the geometry vector: the run-time numbers, in the order the kernels unpack them ----

#: prefix of each array's stride variables in generated code
STRIDE_PREFIX = {"x": "xs", "y": "ys", "dy": "dys", "dx": "dxs", "stat": "ss", "param": "ps"}
LAUNCH_FIELDS = ("n_parts", "n_blocks", "seg", "row_chunk", "n_param")
GPU_LAUNCH_FIELDS = ("n_parts", "threads_per_unit", "n_param")


def geometry_names(kernel: Kernel) -> list[str]:
    """Names of the entries of the int64 geometry vector, as the generated code unpacks it.

    Sizes, then the element strides of every array along every loop dim (0 where the
    array does not move: statistics along reduced dims, parameters along non-affine
    dims), then the launch numbers.
    """
    names = [f"n_{d.name}" for d in kernel.dims]
    for a in kernel.arrays + ("stat", "param"):
        names += [f"{STRIDE_PREFIX[a]}_{d.name}" for d in kernel.dims]
    return names + list(GPU_LAUNCH_FIELDS if kernel.target == "cuda" else LAUNCH_FIELDS)


def geometry_values(plan: Plan) -> list[int]:
    """The geometry vector of a plan (same order as `geometry_names`)."""
    k, la = plan.kernel, plan.launch
    values = list(la.sizes)
    for a in k.arrays + ("stat", "param"):
        values += la.stride(a)
    n_param = math.prod(plan.binding.param_shape) if plan.binding.param_shape else 0
    if k.target == "cuda":
        return values + [la.n_parts, la.gpu[3], n_param]
    return values + [la.n_parts, la.n_blocks, la.seg, la.row_chunk, n_param]
