"""Running generated kernels: the disk cache, the CPU and CUDA launchers, memory, arrays.

    cache.py     compiled modules on disk, keyed by their source and their target
    cpu.py       Numba modules, run over blocks of units on threads (threads.py)
    cuda.py      CUDA C through CuPy on a GPU, or on the CPU emulator (emulated.py)
    alloc.py     output buffers recycled instead of page-faulted in
    arrays.py    element strides, flat views, bfloat16 bits
    moments.py   parts of a group's moments merged on the host (Chan)

`select(x, target)` picks the backend an array belongs to.
"""

from __future__ import annotations

import functools

from .arrays import bits
from .cpu import BACKEND as CPU
from .cuda import CudaBackend, cupy_device
from .emulated import EmuDevice


def select(x, target: str | None = None):
    """The backend for an array: NumPy -> cpu, CuPy (or BF16 of CuPy) -> cuda.

    target="cuda" with NumPy arrays runs the CUDA kernels on the CPU emulator (testing).
    """
    if target not in (None, "cpu", "cuda"):
        raise TypeError(f"unknown target {target!r}: 'cpu' or 'cuda'")
    device = getattr(bits(x), "normgen_device", None)
    if device is not None:  # an array that names its Device (normgen.testing.devicesync's instrumented emulator)
        return _of_device(device)
    on_gpu = type(bits(x)).__module__.startswith("cupy")
    if not on_gpu:
        return _emulated() if target == "cuda" else CPU
    if target == "cpu":
        raise TypeError("a CuPy array cannot run on target='cpu'")
    device = cupy_device()
    if device is None:
        raise TypeError("CuPy arrays need a CUDA device, and none is available")
    return _gpu(device)


@functools.lru_cache(maxsize=1)
def _emulated() -> CudaBackend:
    return CudaBackend(EmuDevice())


@functools.lru_cache(maxsize=16)
def _of_device(device) -> CudaBackend:
    return CudaBackend(device)


@functools.lru_cache(maxsize=1)
def _gpu(device) -> CudaBackend:
    return CudaBackend(device)
