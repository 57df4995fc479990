"""What a plan is: frozen values, from the loop dimensions to the kernel launches of a call.

A `Plan` has two halves. `Kernel` is structural (dims, roles, order, stride classes,
strategy): the generated source depends on it and nothing else. `Launch` holds the
numbers (sizes, strides, parts, blocks, tiles, grids), passed to the kernels at run time,
so one compiled kernel serves every shape with the same structure. Around them the plan
states what a call runs: the `steps` (kernel launches, in order), whether statistics and
normalization fuse, and how the backward's parameter gradients are reduced (`params`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..spec import Center, Scale
from ..spec.expr import Expr
from .bind import Binding
from .device import Device


class Strategy(enum.Enum):
    ROWS = "rows"  # the innermost dim is reduced: one group per unit, walked as contiguous rows
    COLUMNS = "columns"  # a kept dim is innermost: per-column accumulators over blocks of rows


class Direction(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"


class Reduction(enum.Enum):
    """What the groups of a plan are."""

    STATS = "stats"  # the kept axes: one group per statistic
    PARAMS = "params"  # the affine axes: one group per parameter index (the parameter-gradient reduction)


class ParamGrads(enum.Enum):
    """How a backward plan reduces dweight and dbias (sums over every non-affine axis)."""

    NONE = "none"  # no parameter was passed
    PER_BLOCK = "per block"  # cpu: each block of units accumulates its own copy; summed in block order
    PER_GROUP = "per group"  # cuda rows: parameters are constant over a group; its totals, by parameter index
    PER_ELEMENT = "per element"  # cuda columns: each tile element's partial sums, by parameter index
    REDUCTION = "second reduction"  # cuda rows, parameters vary inside a group: `Plan.params`, its own plan


#: the x-like arrays (shaped like x) each direction touches, besides statistics and parameters; a
#: fused spec adds its extra inputs "e_<name>", the prologue "h" (forward: written when kept;
#: backward: read), the prologue's incoming gradient "dh" and the extras' gradients "d_<name>"
ARRAYS = {Direction.FORWARD: ("x", "y"), Direction.BACKWARD: ("x", "dy", "dx")}


def extra_array(name: str) -> str:
    """The array name of a fused spec's extra input in plans and generated code."""
    return f"e_{name}"


def extra_grad(name: str) -> str:
    """The array name of an extra input's gradient."""
    return f"d_{name}"


class HSource(enum.Enum):
    """Where a pass finds h, the value that is normalized (x itself without a prologue)."""

    X = "x"  # no prologue: h is x
    RECOMPUTE = "recompute"  # evaluate the prologue again from x and the extra inputs
    STORED = "stored"  # read the h array (a kept prologue, written by the forward)
    HELD = "held"  # forward, rows, one unit per group: the moments pass held the group's h in scratch
    FROM_Y = "from y"  # backward of save="y": x_hat = (y - bias) / weight, no x at all


@dataclass(frozen=True)
class Fusion:
    """What a fused spec adds to a kernel, and where the plan takes h from (plan/fusion.py decides)."""

    prologue: Expr | None
    epilogue: Expr | None
    pro_inputs: tuple[str, ...]  # extra inputs the prologue reads
    epi_inputs: tuple[str, ...]  # extra inputs the epilogue reads
    keep: bool  # forward: h is written
    h_from: HSource  # forward: the normalizing pass; backward: every pass
    quantize: str | None = None  # forward: the output is quantized per group
    dh: bool = False  # backward: a gradient for h is added before the prologue's chain rule
    grads: tuple[str, ...] = ()  # backward: extras whose gradients are written (the others equal dx)
    reads_x: bool = True  # backward: the kernels read x (for h or for the prologue's derivatives)
    reads_pro: bool = True  # backward: ... and the prologue's extra inputs

    @property
    def extras(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.pro_inputs + self.epi_inputs))


@dataclass(frozen=True)
class Options:
    """Planner options that are not properties of the call (tests, experiments)."""

    parts: int | None = None  # split every reduction into this many parts (exercises the phased kernels)
    copies: int | None = None  # cuda: units per group of the fused kernels that keep groups in registers
    registers: bool = True  # cuda: False streams groups twice instead of keeping them in registers


@dataclass(frozen=True)
class Dim:
    """One loop dimension after coalescing: its name in code and the spec axes it walks."""

    name: str  # identifier in generated code, e.g. "C" or "spatial" or "N_G"
    axes: tuple[str, ...]  # logical dimensions merged into it, outer first
    kept: bool
    affine: bool  # the parameters vary along it
    stat: bool  # the statistics vary along it (a kept dim of the spec's statistics)

    @property
    def label(self) -> str:
        return "·".join(self.axes)


@dataclass(frozen=True)
class Kernel:
    """The structure of a plan: what the generated source depends on."""

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
    reduction: Reduction = Reduction.STATS
    # cuda: what the CUDA kernels are compiled for (see launch_cuda.py)
    vec: int = 1  # elements per 16-byte load along the contiguous inner dim (1: the inner dim is strided)
    cache: int = 0  # rows: vector slots per thread per array the fused kernels keep in registers (0: stream)
    tile: tuple[int, int] = (0, 0)  # columns: a block's threads along the row tile (each `vec` elements) x rows
    copies: int = 1  # rows: units per group of the fused kernels (Launch.n_copies)
    span: int = 1  # columns: columns among a thread's `vec` elements of a row (1: they are in one column)
    wide: bool = False  # a group has 2**31 elements or more: 64-bit indices inside groups
    arrays: tuple[str, ...] = ()  # the x-like arrays of the call (ARRAYS[direction] unless fused)
    fusion: Fusion | None = None

    def stride_class(self, array: str, dim: int | None) -> str:
        """'1' contiguous, '0' constant, 's' strided: how `array` moves along `dim`."""
        if dim is None:
            return "0"
        return dict(self.unit_stride)[f"{array}@{self.dims[dim].name}"]

    @property
    def affine(self) -> bool:
        return self.has_weight or self.has_bias


@dataclass(frozen=True)
class Launch:
    """The numbers of a plan, passed to the kernels at run time (see geometry.py)."""

    sizes: tuple[int, ...]  # per loop dim
    strides: tuple[tuple[str, tuple[int, ...]], ...]  # array -> element stride per loop dim
    n_parts: int  # units per group of statistics (1: one unit reduces a whole group)
    fused: bool  # statistics and normalization (or the backward's sums and dx) in one kernel
    # cpu
    n_blocks: int = 1  # parallel blocks of units
    threads: int = 1
    seg: int = 0  # rows: elements per chunk of a row; columns: columns per unit
    row_chunk: int = 0  # columns: rows per two-pass chunk
    kb: int = 1  # columns: rows per block step; the scratch holds kb rows of a tile
    kb_read: bool = False  # columns: the reading pass (moments, gradient sums) takes kb rows a step
    kb_write: bool = False  # columns: the writing pass (y, dx) takes kb rows a step
    # cuda
    grid: int = 0  # blocks
    block: tuple[int, int] = (0, 0)  # threads (x, y)
    threads_per_unit: int = 0  # rows: a power of two from 32 (a warp) to 1024
    n_copies: int = 1  # rows, fused: units per group, each reading the whole group and normalizing its share
    vec_ok: bool = False  # sizes and strides allow `Kernel.vec`-wide loads (pointers are checked at run time)
    merge_grid: int = 0  # the merge kernels: a warp per group
    merge_block: int = 0

    def stride(self, array: str) -> tuple[int, ...]:
        return dict(self.strides)[array]

    @property
    def pieces(self) -> int:
        """Units per group in the partial and apply kernels: parts, and copies of fused plans."""
        return self.n_parts * self.n_copies


@dataclass(frozen=True)
class Step:
    """One kernel launch (or host work) of a call, in the order the call runs them."""

    entry: str  # the kernel's entry point, e.g. "forward_partial"; "host" for work on the host
    launch: str  # how it runs: "16 blocks over 2 threads", "grid 512 x block (256, 1)"
    what: str  # what it computes, in a few words
    # cuda: the launch, and the traffic model's bytes to and from DRAM (plan/traffic.py)
    grid: tuple[int, int, int] = (0, 0, 0)
    block: tuple[int, int, int] = (0, 0, 0)
    shared_bytes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def threads(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2] * self.block[0] * self.block[1] * self.block[2]


@dataclass(frozen=True)
class Plan:
    kernel: Kernel
    launch: Launch
    binding: Binding = field(compare=False, repr=False)
    steps: tuple[Step, ...] = ()  # a training call
    param_grads: ParamGrads = ParamGrads.NONE
    params: Plan | None = None  # the parameter-gradient reduction, when param_grads is REDUCTION
    device: Device | None = field(default=None, compare=False)  # cuda: the GPU planned for
    eval_steps: tuple[Step, ...] = ()  # an evaluation call (forward with running statistics)
    min_bytes: int = 0  # cuda: the inputs read once and every output written once (plan/traffic.py)
