"""Backends compile and launch generated kernels: `cpu` (Numba) and `cuda` (CuPy)."""


def select(x, target: str | None = None):
    """The backend for an array: NumPy -> cpu, CuPy (or BF16 of CuPy) -> cuda.

    target="cuda" with NumPy arrays runs the CUDA kernels on the CPU emulator (testing).
    """
    if target not in (None, "cpu", "cuda"):
        raise TypeError(f"unknown target {target!r}: 'cpu' or 'cuda'")
    bits = getattr(x, "bits", x) if type(x).__name__ == "BF16" else x
    on_gpu = type(bits).__module__.startswith("cupy")
    if target == "cuda" or on_gpu:
        if not on_gpu:
            return _emulated()
        if target == "cpu":
            raise TypeError("a CuPy array cannot run on target='cpu'")
        from .cuda import cupy_device

        device = cupy_device()
        if device is None:
            raise TypeError("CuPy arrays need a CUDA device, and none is available")
        return _gpu(device)
    from .cpu import BACKEND

    return BACKEND


_EMU = None
_GPU = None


def _emulated():
    global _EMU
    if _EMU is None:
        from .cuda import CudaBackend, EmuDevice

        _EMU = CudaBackend(EmuDevice())
    return _EMU


def _gpu(device):
    global _GPU
    if _GPU is None:
        from .cuda import CudaBackend

        _GPU = CudaBackend(device)
    return _GPU
