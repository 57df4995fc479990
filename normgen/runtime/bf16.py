"""bfloat16 as uint16 bit patterns (NumPy has no bfloat16 dtype): conversions for tests and checks."""

from __future__ import annotations

import numpy as np


def to_bits(values) -> np.ndarray:
    """float values -> bfloat16 bit patterns (round to nearest even; NaN stays NaN)."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FFF), rounded).astype(np.uint16)


def from_bits(bits) -> np.ndarray:
    """bfloat16 bit patterns -> float32 values (exact)."""
    b = np.ascontiguousarray(bits).astype(np.uint32) << 16
    return b.view(np.float32).reshape(np.shape(bits))
