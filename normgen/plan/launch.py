"""Pass 6 of the planner on the CPU: how the units of work of a plan run (the GPU's rules
are in launch_cuda.py).

cpu   fused (statistics, then normalize while the group is hot in cache) when there are
      enough groups to keep every thread busy; otherwise each group's reduction is split
      into parts, merged with Chan's formula, then applied. Work below `PARALLEL_MIN`
      elements runs on the calling thread (waking the others costs more). Columns plans
      also choose their tiles and whether rows lying back to back are taken `kb` at a time.

The steps a call runs and how parameter gradients are reduced (both targets) are decided
here too, so that `normgen plan` prints exactly what will run.
"""

from __future__ import annotations

import math

from .model import Direction, Launch, Options, ParamGrads, Reduction, Step, Strategy
from .passes import Layout, PDim

#: elements per exact two-pass chunk of a row (16 KiB of float32: stays in L1 between the passes)
CHUNK = 4096
#: elements per two-pass chunk of rows in the columns strategy: large enough that folding
#: and merging each column's moments once per chunk costs little (128 KiB of float32, in L2)
COL_CHUNK = 32768
#: columns accumulated together by one unit in the columns strategy
COL_SEG = 1024
#: columns strategy: when whole rows lie back to back, this many elements of consecutive
#: rows are processed in one vector loop (short rows cost a call each otherwise)
COL_APPLY = 1024
#: ... but the moments pass only for tiles of at most this many elements (wider tiles do as
#: well with two rows per call: measured on batch_norm NHWC, C = 128)
COL_READ_MAX_TILE = 64
#: below this many elements one thread is faster than waking the others
PARALLEL_MIN = 32 * 1024

_READS = {Direction.FORWARD: ("x",), Direction.BACKWARD: ("x", "dy")}
_WRITES = {Direction.FORWARD: ("x", "y"), Direction.BACKWARD: ("x", "dy", "dx")}


def sizes_strides(dims: tuple[PDim, ...]) -> dict:
    arrays = [a for a, _ in dims[0].strides]
    return {"sizes": tuple(d.size for d in dims),
            "strides": tuple((a, tuple(d.s(a) for d in dims)) for a in arrays)}


def cpu_launch(dims: tuple[PDim, ...], lay: Layout, direction: Direction, threads: int, options: Options,
               whole_groups: bool = False) -> Launch:
    """(parts, blocks, chunk sizes, row blocking) for the Numba kernels on `threads` threads;
    `whole_groups`: one unit per group (a quantized output needs the group's absmax before writing)."""
    parts = options.parts
    n_groups = math.prod(dims[i].size for i in lay.groups)
    n_rows = math.prod(dims[i].size for i in lay.rows)
    total = math.prod(d.size for d in dims)
    kb, kb_read, kb_write = 1, False, False
    if lay.strategy is Strategy.ROWS:
        n_inner = dims[lay.inner].size
        seg = min(n_inner, CHUNK) if parts is None else max(1, -(-n_inner // parts))
        units_per_group, row_chunk = n_rows * -(-n_inner // seg), 1
    else:
        n_col = dims[lay.inner].size
        seg = min(n_col, COL_SEG)
        n_groups *= -(-n_col // seg)
        tile = seg * (dims[lay.tail].size if lay.tail is not None else 1)
        row_chunk = 1 if parts is not None else max(1, COL_CHUNK // tile)
        units_per_group = -(-n_rows // row_chunk)
        kb = max(1, COL_APPLY // tile)
        # rows lie back to back when there is one row dim, one column segment, and every
        # array steps by exactly one tile from row to row
        whole = len(lay.rows) == 1 and seg == n_col and kb > 1

        def back_to_back(arrays: tuple[str, ...]) -> bool:
            return whole and all(dims[lay.rows[0]].s(a) == tile for a in arrays)

        # a fused spec's passes touch every x-like array (extras, h, gradients)
        fused_arrays = tuple(a for a, _ in dims[0].strides if a not in ("stat", "param") + _WRITES[direction])
        read_ok = direction is Direction.BACKWARD or tile <= COL_READ_MAX_TILE
        kb_read = read_ok and back_to_back(_READS[direction] + fused_arrays)
        kb_write = back_to_back(_WRITES[direction] + fused_arrays)
    want = 2 * threads
    if parts is not None:
        n_parts = max(1, min(units_per_group, parts))
    elif n_groups >= want or total < PARALLEL_MIN:
        n_parts = 1
    else:
        n_parts = max(1, min(units_per_group, -(-want // n_groups)))
    if whole_groups:
        n_parts = 1
    n_blocks = max(1, min(n_groups * n_parts, 4 * threads))
    return Launch(**sizes_strides(dims), n_parts=n_parts, fused=n_parts == 1, n_blocks=n_blocks,
                  threads=1 if total < PARALLEL_MIN else min(threads, n_blocks), seg=seg, row_chunk=row_chunk,
                  kb=kb, kb_read=kb_read, kb_write=kb_write)


def param_grads(target: str, lay: Layout, dims: tuple[PDim, ...], direction: Direction, has_params: bool,
                reduction: Reduction) -> ParamGrads:
    """How the backward reduces dweight and dbias."""
    if direction is Direction.FORWARD or not has_params or reduction is Reduction.PARAMS:
        return ParamGrads.NONE
    if target == "cpu":
        return ParamGrads.PER_BLOCK
    if lay.strategy is Strategy.COLUMNS:
        return ParamGrads.PER_ELEMENT
    affine_in_groups = all(i in lay.groups for i, d in enumerate(dims) if d.s("param"))
    return ParamGrads.PER_GROUP if affine_in_groups else ParamGrads.REDUCTION


def steps(direction: Direction, la: Launch, n_groups: int, grads: ParamGrads) -> tuple[Step, ...]:
    """The work of a training call on the CPU, in order (CUDA: traffic.py)."""
    where = (f"{la.n_blocks} blocks on the calling thread" if la.threads == 1
             else f"{la.n_blocks} blocks over {la.threads} threads")
    merge = Step("host", "", "merge the parts (Chan), finalize mean and rstd" if direction is Direction.FORWARD
                 else "add the parts, coefficients of dx")
    parts = f"{la.n_parts} parts per group"
    if direction is Direction.FORWARD:
        if la.fused:
            out = [Step("forward_fused", where, "moments of each group, then normalize it")]
        else:
            out = [Step("forward_partial", where, f"moments of {parts}"), merge,
                   Step("forward_apply", where, "normalize")]
    elif la.fused:
        out = [Step("backward_fused", where, "sums of g and g·x̂ per group, then dx")]
    else:
        out = [Step("backward_partial", where, f"sums of g and g·x̂ over {parts}"), merge,
               Step("backward_apply", where, "dx")]
    if grads is not ParamGrads.NONE:
        out.append(Step("host", "", f"parameter gradients: {grads.value} partials, summed in a fixed order"))
    return tuple(out)
