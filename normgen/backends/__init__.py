"""Backends compile and launch generated kernels: `cpu` (Numba) and `cuda` (CuPy)."""
