"""Output buffers that are recycled instead of page-faulted in on every call.

A fresh multi-megabyte array from the OS costs a page fault per 4 KiB page the first
time it is written, and the kernel zeroes each page: for a bandwidth-bound op that is as
much time as the op itself (layer_norm [8192, 1024] float32: ~3 ms of faults for a
~3.5 ms kernel on a 2-core machine). Training loops allocate the same output shapes every
step, so normgen keeps the memory of outputs that were garbage-collected and hands it out
again, the way PyTorch's CUDA caching allocator does.

Only arrays of at least `MIN_BYTES` are pooled; the pool holds at most `CAP_BYTES`
(oldest buffers are released first). A buffer returns to the pool when the array normgen
returned, and every view of it, is gone. `NORMGEN_POOL=0` turns the pool off.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 20
CAP_BYTES = int(os.environ.get("NORMGEN_POOL_BYTES", str(1 << 30)))
ENABLED = os.environ.get("NORMGEN_POOL", "1") != "0"

_lock = threading.Lock()
_free: OrderedDict[int, list[np.ndarray]] = OrderedDict()  # nbytes -> free byte buffers
_held = 0


def _give_back(buf: np.ndarray) -> None:
    global _held
    with _lock:
        _free.setdefault(buf.nbytes, []).append(buf)
        _free.move_to_end(buf.nbytes)
        _held += buf.nbytes
        while _held > CAP_BYTES and _free:
            nbytes, bufs = next(iter(_free.items()))
            bufs.pop(0)
            _held -= nbytes
            if not bufs:
                del _free[nbytes]


def _take(nbytes: int) -> np.ndarray | None:
    global _held
    with _lock:
        bufs = _free.get(nbytes)
        if not bufs:
            return None
        buf = bufs.pop()
        if not bufs:
            del _free[nbytes]
        _held -= nbytes
        return buf


def empty_like(x: np.ndarray) -> np.ndarray:
    """np.empty_like(x) (same shape, dtype and dimension order), from the pool when large."""
    if not ENABLED or x.nbytes < MIN_BYTES:
        return np.empty_like(x)
    buf = _take(x.nbytes)
    if buf is None:
        buf = np.empty(x.nbytes, np.uint8)
    order = sorted(range(x.ndim), key=lambda d: (-abs(x.strides[d]), d))
    strides = [0] * x.ndim
    step = x.itemsize
    for d in reversed(order):
        strides[d] = step
        step *= x.shape[d]
    out = np.lib.stride_tricks.as_strided(buf.view(x.dtype), shape=x.shape, strides=tuple(strides))
    weakref.finalize(out, _give_back, buf)
    return out


def held_bytes() -> int:
    """Bytes the pool holds for reuse."""
    return _held


def release() -> None:
    """Drop every pooled buffer (their memory goes back to the OS)."""
    global _held
    with _lock:
        _free.clear()
        _held = 0
