"""Output buffers recycled across calls instead of page-faulted in on every call.

Why: a fresh multi-megabyte array costs a page fault per 4 KiB page the first time it is
written, and the kernel zeroes each page: for a bandwidth-bound op that is as much time as
the op itself (layer_norm [8192, 1024] float32: ~3 ms of faults for a ~3.5 ms kernel on a
2-core machine). So normgen keeps the memory of outputs that died and hands it out again,
the way PyTorch's CUDA caching allocator does, but it must not quietly keep a gigabyte:

- **Size classes and best fit.** A request of n bytes maps n rounded up to its size class
  (1/8 of its power of two: at most 12.5% more). A free buffer serves any request that fits
  in it and fills at least half of it (`MIN_FILL`), the smallest such buffer first, so a
  workload whose shapes vary (sequence lengths, batch sizes) reuses memory across shapes.
- **A relative cap.** Free buffers are held up to `CAP_FACTOR` (4) times the largest request
  among the last `WINDOW` (256 to 512) requests, so the pool follows the workload rather
  than a fixed size; `NORMGEN_POOL_BYTES` fixes the cap instead. Over the cap, or over
  `MAX_FREE` buffers, the least recently returned buffers are unmapped.
- **Memory from anonymous mmap**, page aligned, with transparent huge pages where the kernel
  allows them: an unmapped buffer goes back to the OS at once (not into malloc's free lists,
  where glibc keeps freed heap memory resident), and a miss faults 2 MiB pages, not 4 KiB.
- **Ownership.** The array handed out is built on a `_Lease` (its `.base`). NumPy makes every
  view of the array, and every view of a view, keep the array itself alive (base collapsing
  stops at an array whose base is not an ndarray), as do `torch.from_numpy`, DLPack
  capsules and memoryviews; the array keeps the lease. So the buffer returns only when
  nothing can reach its memory (a raw pointer such as `.ctypes.data` is the caller's risk,
  as with any NumPy array). The return is a deque append without a lock: a finalizer may
  run in any thread, even inside the pool's own critical section when GC strikes there; the
  pool takes returned buffers in on its next request.

Settings, read on first use: `NORMGEN_POOL=0` turns the pool off (outputs are plain
`np.empty_like`); `NORMGEN_POOL_BYTES` (bytes, or with a K/M/G suffix: `256M`) fixes the cap,
and 0 turns the pool off too. `stats()` says what it holds, reused and missed.

    >>> from normgen.runtime import alloc
    >>> s = alloc.stats()        # Stats(held=..., buffers=..., lent=..., cap=..., reused=..., missed=..., released=...)
    >>> s.reused, s.missed       # requests served from held memory, and requests that mapped new memory
"""

from __future__ import annotations

import math
import mmap
import os
import re
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import NormgenError

MIN_BYTES = 1 << 20  # smaller outputs come from malloc's own free lists without faults
CLASSES_PER_DOUBLING = 8
MIN_FILL = 0.5  # a buffer serves a request that fills at least this much of it
CAP_FACTOR = 4
WINDOW = 256  # requests over which "the largest request" is remembered (between WINDOW and 2x)
MAX_FREE = 64  # free buffers at most: keeps the best-fit scan short
PAGE = mmap.PAGESIZE
_POOLED_KINDS = "biufc"  # plain numbers: memory that starts as zero pages is a valid value


def size_class(nbytes: int) -> int:
    """The bytes a request of `nbytes` maps: rounded up to 1/8 of its power of two and to a page."""
    step = max((1 << (max(nbytes, 1).bit_length() - 1)) // CLASSES_PER_DOUBLING, PAGE)
    return -(-nbytes // step) * step


@dataclass(frozen=True)
class Stats:
    """The pool's state (bytes) and its counters since it was created."""

    held: int  # bytes of free buffers kept for reuse (resident at most this much)
    buffers: int  # how many free buffers
    lent: int  # bytes of pooled buffers behind live arrays
    cap: int  # the current limit on `held`
    reused: int  # requests served from a free buffer
    missed: int  # requests that mapped new memory
    released: int  # buffers unmapped (over the cap, or by release())


class _Block:
    """One mapped buffer: `size` bytes at `addr`, alive as long as `mem` is open."""

    __slots__ = ("addr", "mem", "size")

    def __init__(self, size: int):
        self.size = size
        if os.name == "posix":
            self.mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            advice = getattr(mmap, "MADV_HUGEPAGE", None)
            if advice is not None:
                try:
                    self.mem.madvise(advice)
                except OSError:  # a kernel without transparent huge pages: 4 KiB pages it is
                    pass
        else:
            self.mem = bytearray(size)
        view = np.frombuffer(self.mem, np.uint8)  # a temporary export, only to read the address
        self.addr = view.ctypes.data
        del view

    def unmap(self) -> None:
        if isinstance(self.mem, mmap.mmap):
            self.mem.close()


class _Lease:
    """The base of one array handed out: holds its block, and returns it when nothing refers to it."""

    __slots__ = ("__array_interface__", "_block", "_returns")

    def __init__(self, block: _Block, returns: deque, shape: tuple[int, ...], strides: tuple[int, ...],
                 dtype: np.dtype):
        self._block = block
        self._returns = returns  # bound here: __del__ must not need module globals (interpreter exit)
        self.__array_interface__ = {"version": 3, "shape": shape, "strides": strides, "typestr": dtype.str,
                                    "data": (block.addr, False)}

    def __del__(self) -> None:
        self._returns.append(self._block)


class Pool:
    """Free output buffers, reused across shapes under a cap.

    cap_bytes: a fixed cap on the free bytes held; None (the default) makes it relative:
    CAP_FACTOR x the largest recent request.

    >>> pool = Pool()
    >>> y = pool.empty((4096, 1024), np.float32)       # maps 16 MiB
    >>> del y
    >>> z = pool.empty((3000, 1024), np.float32)       # the same memory again
    >>> pool.stats().reused
    1
    """

    def __init__(self, cap_bytes: int | None = None, *, enabled: bool = True, min_bytes: int = MIN_BYTES):
        if cap_bytes is not None and cap_bytes < 0:
            raise ValueError(f"cap_bytes must be >= 0, got {cap_bytes}")
        self.fixed_cap = cap_bytes
        self.enabled = enabled and cap_bytes != 0
        self.min_bytes = max(1, min_bytes)  # a zero-byte mapping is an error
        self._lock = threading.Lock()
        self._free: list[_Block] = []  # oldest return first
        self._returns: deque[_Block] = deque()  # appended by _Lease.__del__, from any thread
        self._held = self._lent = 0
        self._reused = self._missed = self._released = 0
        self._requests = 0
        self._largest = [0, 0]  # the largest request in the previous and in the current half window

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Pool:
        """The pool NORMGEN_POOL and NORMGEN_POOL_BYTES ask for."""
        env = os.environ if env is None else env
        flag = env.get("NORMGEN_POOL", "1").strip()
        if flag not in ("0", "1"):
            raise NormgenError(f"NORMGEN_POOL={flag!r}: expected 0 (no output pool) or 1 (the default)",
                               allowed="0, 1")
        size = env.get("NORMGEN_POOL_BYTES", "").strip()
        return cls(parse_bytes(size, "NORMGEN_POOL_BYTES") if size else None, enabled=flag == "1")

    # ---- handing out ----
    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """np.empty(shape, dtype) in C order, from the pool when large."""
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if not self._pooled(nbytes, dtype):
            return np.empty(shape, dtype)
        return self._lease(shape, dtype, _dense_strides(shape, tuple(range(len(shape))), dtype.itemsize), nbytes)

    def empty_like(self, x: np.ndarray) -> np.ndarray:
        """np.empty_like(x): same shape, dtype and order of dimensions in memory."""
        if not self._pooled(x.nbytes, x.dtype):
            return np.empty_like(x)
        order = sorted(range(x.ndim), key=lambda d: (-abs(x.strides[d]), d))
        return self._lease(x.shape, x.dtype, _dense_strides(x.shape, tuple(order), x.itemsize), x.nbytes)

    def _pooled(self, nbytes: int, dtype: np.dtype) -> bool:
        return self.enabled and nbytes >= self.min_bytes and dtype.kind in _POOLED_KINDS and not dtype.fields

    def _lease(self, shape: tuple[int, ...], dtype: np.dtype, strides: tuple[int, ...], nbytes: int) -> np.ndarray:
        """An array of `shape` with dense byte `strides` on a pooled buffer of at least `nbytes`."""
        return np.asarray(_Lease(self._take(nbytes), self._returns, shape, strides, dtype))

    def _take(self, nbytes: int) -> _Block:
        with self._lock:
            self._note(nbytes)
            self._take_returns()  # and trims to the cap, which the window may just have lowered
            best = -1
            for i, b in enumerate(self._free):  # ties go to the later one: the most recently used memory
                if nbytes <= b.size <= nbytes / MIN_FILL and (best < 0 or b.size <= self._free[best].size):
                    best = i
            if best >= 0:
                block = self._free.pop(best)
                self._held -= block.size
                self._reused += 1
                self._lent += block.size
                return block
            self._missed += 1
            size = size_class(nbytes)
            self._lent += size
        try:  # outside the lock: mapping and its first faults take time
            return _Block(size)
        except OSError:
            self.release()  # the free buffers may be the memory that is missing
            try:
                return _Block(size)
            except OSError as e:
                with self._lock:
                    self._lent -= size
                raise MemoryError(f"normgen: unable to map {size} bytes for an output ({e})") from e

    # ---- taking back ----
    def _take_returns(self) -> None:
        """Move buffers whose arrays died into the free list (under the lock)."""
        while True:
            try:
                block = self._returns.popleft()
            except IndexError:
                break
            self._lent -= block.size
            self._free.append(block)
            self._held += block.size
        self._trim()

    def _note(self, nbytes: int) -> None:
        self._requests += 1
        if self._requests % WINDOW == 0:
            self._largest = [self._largest[1], 0]
        self._largest[1] = max(self._largest[1], nbytes)

    def cap(self) -> int:
        """The limit on free bytes held now."""
        return self.fixed_cap if self.fixed_cap is not None else CAP_FACTOR * max(self._largest)

    def _trim(self) -> None:
        cap = self.cap()
        while self._free and (self._held > cap or len(self._free) > MAX_FREE):
            block = self._free.pop(0)
            self._held -= block.size
            self._released += 1
            block.unmap()

    # ---- inspection ----
    def stats(self) -> Stats:
        with self._lock:
            self._take_returns()
            return Stats(held=self._held, buffers=len(self._free), lent=self._lent, cap=self.cap(),
                         reused=self._reused, missed=self._missed, released=self._released)

    def release(self) -> None:
        """Unmap every free buffer now (buffers behind live arrays come back later)."""
        with self._lock:
            self._take_returns()
            for block in self._free:
                block.unmap()
            self._released += len(self._free)
            self._free.clear()
            self._held = 0

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it at fork time


def _dense_strides(shape: tuple[int, ...], order: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Byte strides of a dense array whose dims lie in memory outermost-first as in `order`."""
    strides = [0] * len(shape)
    step = itemsize
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str, what: str) -> int:
    """'268435456', '256M', '256MiB', '1G' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise NormgenError(f"{what}={text!r} is not a size", allowed="bytes, or a number with K, M or G (e.g. 256M)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


# ---- the process's pool ---------------------------------------------------------------------

_default: Pool | None = None
_default_lock = threading.Lock()


def default_pool() -> Pool:
    """The pool normgen's outputs come from, made from the environment on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                pool = Pool.from_env()
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(after_in_child=pool._after_fork)
                _default = pool
    return _default


def empty_like(x: np.ndarray) -> np.ndarray:
    """np.empty_like(x) (same shape, dtype and dimension order), from the pool when large."""
    return (_default or default_pool()).empty_like(x)


def stats() -> Stats:
    """What the output pool holds and how often it reused memory.

    >>> normgen.runtime.alloc.stats().held     # bytes kept for reuse
    """
    return default_pool().stats()


def held_bytes() -> int:
    """Bytes the pool holds for reuse."""
    return stats().held


def release() -> None:
    """Unmap every free pooled buffer (their memory goes back to the OS)."""
    default_pool().release()
