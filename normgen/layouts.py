"""Memory layouts by name: the element strides of contiguous, channels_last, transposed
and sliced arrays, and arrays built in those layouts (for checks, plans and benchmarks)."""

from __future__ import annotations

import math

import numpy as np

LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")


def _dense(shape: tuple[int, ...], order: list[int]) -> list[int]:
    """Dense element strides when dims are laid out in `order` (outermost first)."""
    strides = [0] * len(shape)
    s = 1
    for d in reversed(order):
        strides[d] = s
        s *= shape[d]
    return strides


def layout_strides(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """Element strides of an array of `shape` in the named layout."""
    nd = len(shape)
    if layout == "contiguous" or (layout == "channels_last" and nd < 3):
        return tuple(_dense(shape, list(range(nd))))
    if layout == "channels_last":
        return tuple(_dense(shape, [0] + list(range(2, nd)) + [1]))
    if layout == "transposed":
        return tuple(_dense(shape, list(reversed(range(nd)))))
    if layout == "sliced":  # every other element of an array of size 2n + 1 per dim, from index 1
        big = tuple(2 * n + 1 for n in shape)
        return tuple(2 * s for s in _dense(big, list(range(nd))))
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def like_strides(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...]:
    """Dense strides in the same dim order as `strides` (what np.empty_like gives)."""
    order = sorted(range(len(shape)), key=lambda d: (-strides[d], d))
    return tuple(_dense(shape, order))


def make_array(values: np.ndarray, layout: str, dtype: str | np.dtype) -> np.ndarray:
    """`values` copied into an array of the named layout (same shape and values)."""
    dt = np.dtype(dtype)
    nd = values.ndim
    if layout == "contiguous" or nd == 0 or (layout == "channels_last" and nd < 3):
        return np.ascontiguousarray(values, dtype=dt)
    if layout == "channels_last":
        perm = (0,) + tuple(range(2, nd)) + (1,)
        return np.ascontiguousarray(values.transpose(perm), dtype=dt).transpose(np.argsort(perm))
    if layout == "transposed":
        return np.ascontiguousarray(values.T, dtype=dt).T
    if layout == "sliced":
        big = np.zeros(tuple(2 * n + 1 for n in values.shape), dt)
        view = big[tuple(slice(1, None, 2) for _ in values.shape)]
        view[...] = values
        return view
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def span(shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if math.prod(shape) else 0
