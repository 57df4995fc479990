"""Pass 6 on the GPU: how the units of a plan run on a `Device` (device.py).

The rules keep a memory-bound kernel's bytes in flight (DESIGN.md, "GPU device model"):

* Every kernel that moves at least `BIG_BYTES` launches at least two waves of 1024-thread
  SM slots (`Device.full_waves`); smaller ones one thread per `BYTES_PER_THREAD` bytes.
* Loads along a contiguous inner dim are 16 bytes wide (`Kernel.vec` elements) when
  sizes and strides allow (`Launch.vec_ok`; the kernels check pointer alignment and fall
  back to scalar loads).
* rows: a unit of `threads_per_unit` threads (32 .. 1024) reduces a group. When its
  share of the group fits in `CACHE_REGS` registers per thread, the fused kernels keep it
  there (`Kernel.cache` vector slots), so x is read from DRAM once; units grow until the
  device is filled, and when one unit per group cannot fill it, two units (`n_copies`)
  share a group: each reads all of it for the statistics and normalizes its half, the
  other half reaching it from L2 (the two run side by side). Groups too large to keep are
  streamed twice (fused) when there are enough of them, or split into `n_parts` parts
  (partial moments -> merge -> apply) when there are not.
* columns: a block of `tile` = (x, y) threads takes a tile of whole columns (x threads of
  `vec` elements along the row) over a part of the rows; rows are split into parts until
  the device is filled; the parts are merged by a warp per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .device import Device
from .launch import sizes_strides
from .model import Direction, Kernel, Launch, Options, Reduction, Strategy
from .passes import Layout, PDim

#: bytes per element of each dtype
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
#: kernels moving at least this many bytes launch `Device.full_waves` threads or more
BIG_BYTES = 4_000_000
#: ... smaller ones one thread per this many bytes moved (latency, not bandwidth, bounds them)
BYTES_PER_THREAD = 64
#: registers a thread of a fused rows kernel may give to the elements it keeps, forward (x) and
#: backward (x and dy: dx's coefficients and stores need more of the rest), of the 64 that
#: __launch_bounds__(1024, 1) allows; measured with ptxas -v (tests/test_cuda_ptx.py)
CACHE_REGS = {Direction.FORWARD: 32, Direction.BACKWARD: 16}
#: at most this many units read one group (each reads all of it; the others' reads hit L2)
MAX_COPIES = 2
#: 16-byte slots a thread of a streaming loop loads before it uses them (bytes in flight), and
#: that its compute-type sums take before they are added to the thread's float64 totals ...
FLUSH = 2
#: ... and elements, when it loads them one by one (arrays not aligned for 16-byte loads)
SCALAR_BATCH = 4
#: threads of a block of rows units (units of fewer threads share a block)
ROWS_BLOCK = 256
#: threads per unit of the phased rows kernels (a part of a group, streamed)
PART_THREADS = 256
#: columns: bytes of the block's shared partial sums (two doubles per tile element per row of threads)
COL_SHARED = 32 * 1024
#: columns: threads per block, at most
COL_BLOCK = 512
#: columns: rows per thread per part, at least (fewer make the partials outweigh the reads) ...
COL_MIN_ROWS = 4
#: ... and at most: a thread adds its rows in the compute type (float32 for the half types), so
#: their count bounds the rounding; the block adds its threads' sums in float64
COL_MAX_ROWS = 64
#: registers per thread the kernels are compiled for (of the 64K of an SM: 1024 threads resident or more)
MAX_REGS = 64
REGS_PER_SM = 65536
#: threads of the merge kernels' blocks (a warp per group)
MERGE_BLOCK = 256


@dataclass(frozen=True)
class CudaChoice:
    """The structural choices (compiled into the kernels) and the numbers of a CUDA plan."""

    launch: Launch
    vec: int
    cache: int = 0
    tile: tuple[int, int] = (0, 0)
    copies: int = 1
    span: int = 1
    wide: bool = False


def launch_bounds(kernel: Kernel) -> tuple[int, int]:
    """__launch_bounds__ of a plan's kernels: (threads per block, blocks per SM) such that a
    thread may use MAX_REGS registers (ptxas would otherwise trade spills for occupancy)."""
    block = kernel.tile[0] * kernel.tile[1] if kernel.strategy is Strategy.COLUMNS else 1024
    return block, max(1, REGS_PER_SM // (MAX_REGS * block))


def stream_batch(kernel: Kernel) -> tuple[int, int]:
    """(vector slots, elements) a streaming loop loads before it uses them, on the 16-byte and the
    element-by-element paths: half of that for float64, whose compute type takes two registers."""
    return (1, SCALAR_BATCH // 2) if kernel.dtype == "float64" else (FLUSH, SCALAR_BATCH)


def target_threads(device: Device, moved: int) -> int:
    """Threads a kernel moving `moved` bytes should launch."""
    return device.full_waves if moved >= BIG_BYTES else max(32, -(-moved // BYTES_PER_THREAD))


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _arrays(dims: tuple[PDim, ...]) -> list[str]:
    return [a for a, _ in dims[0].strides if a not in ("stat", "param")]


def _merge(n_groups: int) -> dict:
    return {"merge_grid": -(-n_groups * 32 // MERGE_BLOCK), "merge_block": MERGE_BLOCK}


def cuda_launch(dims: tuple[PDim, ...], lay: Layout, device: Device, direction: Direction, dtype: str,
                reduction: Reduction, phased: bool, options: Options) -> CudaChoice:
    """The launch of a plan on `device`. `phased`: statistics are merged on the host between
    the moments and the normalization (mixtures), so nothing is fused."""
    n_arrays = len(_arrays(dims)) if reduction is Reduction.STATS else 2  # the parameter reduction reads x, dy
    moved = n_arrays * math.prod(d.size for d in dims) * ITEMSIZE[dtype]
    if lay.strategy is Strategy.ROWS:
        return _rows(dims, lay, device, direction, dtype, moved, phased or reduction is Reduction.PARAMS, options)
    return _columns(dims, lay, device, dtype, moved, options)


def _rows(dims, lay, device, direction, dtype, moved, phased, options) -> CudaChoice:
    arrays = _arrays(dims)
    inner = dims[lay.inner]
    vec = 16 // ITEMSIZE[dtype] if all(inner.s(a) == 1 for a in arrays) else 1
    n_groups = math.prod(dims[i].size for i in lay.groups)
    elems = math.prod(dims[i].size for i in lay.rows) * inner.size
    want = target_threads(device, moved)
    vec_ok = _rows_vec_ok(dims, lay, vec)
    base = dict(**sizes_strides(dims), vec_ok=vec_ok, **_merge(n_groups))
    fusing = options.parts is None and not phased
    if fusing and vec_ok and options.registers:  # keep groups in registers (16-byte loads only)
        kept = _kept(device, n_groups, elems, vec, want, direction, dtype, options)
        if kept is not None:
            copies, tpu, slots = kept
            return _rows_choice(_rows_launch(base, n_groups, 1, copies, tpu, fused=True), vec, elems, n_groups,
                                cache=slots, copies=copies)
    if fusing:
        tpu = min(1024, max(32, _pow2(-(-elems // 64))))
        if n_groups * tpu >= want:  # enough groups: one unit each, x streamed twice
            return _rows_choice(_rows_launch(base, n_groups, 1, 1, tpu, fused=True), vec, elems, n_groups)
    tpu = min(PART_THREADS, max(32, _pow2(-(-elems // (vec * 4)))))
    if options.parts is not None:
        n_parts = max(1, min(options.parts, elems))
    else:
        n_parts = max(1, min(-(-want // (n_groups * tpu)), elems // tpu))  # an element a thread, at least
    fused = n_parts == 1 and not phased
    return _rows_choice(_rows_launch(base, n_groups, n_parts, 1, tpu, fused=fused), vec, elems, n_groups)


def _kept(device, n_groups, elems, vec, want, direction, dtype, options) -> tuple[int, int, int] | None:
    """(copies, threads per unit, vector slots per thread) of fused units that keep their share
    of a group in registers and launch `want` threads; None when no such units exist. Units
    share a group only while the groups resident on the device fit in half of L2 (the second
    read of each is then an L2 hit)."""
    kept = 2 if direction is Direction.BACKWARD else 1  # arrays a unit keeps: x (and dy)
    per_thread = 0 if dtype == "float64" else CACHE_REGS[direction] // kept  # float64 (double registers): streamed
    for copies in (options.copies,) if options.copies else range(1, MAX_COPIES + 1):
        share = -(-elems // copies)
        tpu = 32
        while tpu < 1024 and share > tpu * per_thread:
            tpu *= 2
        if share > tpu * per_thread:
            continue  # too large to keep: a smaller share may fit
        while n_groups * copies * tpu < want and tpu < 1024 and share >= 2 * tpu:
            tpu *= 2
        resident = device.sms * device.threads_per_sm // (copies * tpu)  # groups in flight
        if copies > 1 and resident * elems * ITEMSIZE[dtype] * kept > device.l2_bytes // 2 and not options.copies:
            continue
        if n_groups * copies * tpu >= want or options.copies:
            return copies, tpu, -(-share // (tpu * vec))
    return None


def _rows_choice(la: Launch, vec: int, elems: int, n_groups: int, cache: int = 0, copies: int = 1) -> CudaChoice:
    """... with 64-bit indices inside groups when a group's elements or the units reach 2**31."""
    wide = max(elems, n_groups * la.pieces) >= 2**31
    return CudaChoice(la, vec, cache=cache, copies=copies, wide=wide)


def _rows_launch(base: dict, n_groups: int, n_parts: int, copies: int, tpu: int, fused: bool) -> Launch:
    block = max(tpu, ROWS_BLOCK)
    units = n_groups * n_parts * copies
    return Launch(**base, n_parts=n_parts, fused=fused, grid=-(-units // (block // tpu)), block=(block, 1),
                  threads_per_unit=tpu, n_copies=copies)


def _rows_vec_ok(dims: tuple[PDim, ...], lay: Layout, vec: int) -> bool:
    """Every vector of a unit lies in one row and starts on a multiple of `vec` elements."""
    if vec == 1 or dims[lay.inner].size % vec:
        return False
    moving = _arrays(dims) + (["param"] if dims[lay.inner].s("param") == 1 else [])
    return all(d.s(a) % vec == 0 for i, d in enumerate(dims) if i != lay.inner for a in moving)


def _columns(dims, lay, device, dtype, moved, options) -> CudaChoice:
    arrays = _arrays(dims)
    n_col = dims[lay.inner].size
    tail = dims[lay.tail].size if lay.tail is not None else 1
    width = n_col * tail  # elements of one row, contiguous (the strategy's dense tile)
    # a tile holds whole columns (the block folds each column's tail), in threads of `vec` elements;
    # a thread keeps the statistics of each column among them: 8 bytes of the half types
    # (4 elements) keep that within MAX_REGS registers, 16 bytes of the others
    vec = 16 // ITEMSIZE[dtype] if ITEMSIZE[dtype] >= 4 else 4
    if tail % vec == 0:  # a column is tail / vec threads: 32 x vec elements of whole columns
        bx = min(n_col, max(1, 32 * vec // tail)) * tail // vec
    elif vec % tail == 0:  # a thread takes vec / tail whole columns
        bx = min(32, _pow2(-(-width // vec)))
    else:  # columns straddle 16-byte vectors: element by element
        vec, bx = 1, min(max(1, 32 // tail), n_col) * tail
    tile = bx * vec
    shared = min(COL_SHARED, device.shared_per_block - 16 * tile)  # the rows' sums; the columns' (fold) apart
    by = max(1, min(1024 // bx, shared // (16 * tile), max(1, COL_BLOCK // bx)))
    n_groups = math.prod(dims[i].size for i in lay.groups)
    n_rows = math.prod(dims[i].size for i in lay.rows)
    tiles = -(-width // tile) * n_groups
    if options.parts is not None:
        n_parts = max(1, min(options.parts, n_rows))
    else:
        want = target_threads(device, moved)
        n_parts = max(1, min(-(-want // (tiles * bx * by)), n_rows // (by * COL_MIN_ROWS)))
    n_parts = max(n_parts, -(-n_rows // (by * COL_MAX_ROWS)))
    vec_ok = vec > 1 and width % vec == 0 and all(
        d.s(a) % vec == 0 for i, d in enumerate(dims) if i not in (lay.inner, lay.tail) for a in arrays)
    # the columns kernels always merge their parts in a kernel of their own
    la = Launch(**sizes_strides(dims), n_parts=n_parts, fused=False, grid=tiles * n_parts, block=(bx, by),
                threads_per_unit=bx * by, vec_ok=vec_ok, **_merge(n_groups * n_col))
    span = vec // tail if vec % tail == 0 else 1
    return CudaChoice(la, vec, tile=(bx, by), span=span, wide=max(n_rows, width) >= 2**31)
