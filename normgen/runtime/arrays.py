"""Arrays as the kernels see them: element strides, flat views, and bfloat16 as bits.

The kernels walk an array through its element strides from its first element, so any
layout with non-negative strides is used in place (sliced, transposed, channels_last).
NumPy and CuPy have no bfloat16 dtype: `BF16` wraps the uint16 bit patterns of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BF16:
    """bfloat16 data: `bits` is a uint16 (or int16) NumPy or CuPy array of the raw bit patterns."""

    bits: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    @property
    def size(self) -> int:
        return self.bits.size


def bits(a: Any) -> Any:
    """The array that holds `a`'s memory (its bits for a BF16)."""
    return a.bits if isinstance(a, BF16) else a


def elem_strides(a: Any) -> tuple[int, ...] | None:
    """Strides in elements (0 along size-1 dims), or None when the kernels cannot walk `a`
    in place (negative strides, or strides that are not a multiple of the item size)."""
    a = bits(a)
    out = []
    for s, n in zip(a.strides, a.shape):
        if n == 1:
            out.append(0)
        elif s <= 0 or s % a.itemsize:
            return None
        else:
            out.append(s // a.itemsize)
    return tuple(out)


def dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of `shape` (0 along size-1 dims, as elem_strides)."""
    out, s = [], 1
    for n in reversed(tuple(shape)):
        out.append(0 if n == 1 else s)
        s *= n
    return tuple(reversed(out))


def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a's memory from its first element to its last (strides must be >= 0)."""
    if a.size == 0:
        return np.zeros(1, a.dtype)
    if a.flags.c_contiguous:
        return a.reshape(-1)
    span = 1 + sum((n - 1) * (s // a.itemsize) for n, s in zip(a.shape, a.strides))
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))


def to_bits(values) -> np.ndarray:
    """float values -> bfloat16 bit patterns (round to nearest even; NaN stays NaN)."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FFF), rounded).astype(np.uint16)


def from_bits(b) -> np.ndarray:
    """bfloat16 bit patterns -> float32 values (exact)."""
    u = np.ascontiguousarray(b).astype(np.uint32) << 16
    return u.view(np.float32).reshape(np.shape(b))
