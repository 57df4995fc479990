"""The CPU backend: Numba-compiled modules generated from a Plan, and how to launch them.

Arrays reach the kernels as flat 1-D views of their own memory (element 0 first), with
element strides in the geometry vector, so sliced, transposed and channels_last inputs
are used in place. Numba compiles each kernel on first call and caches the machine code
on disk beside the generated module.
"""

from __future__ import annotations

import math

import numpy as np

from .. import cache
from ..plan import Plan, Strategy, geometry_values
from ..render import render


def threads() -> int:
    import numba

    return numba.get_num_threads()


def elem_strides(a: np.ndarray) -> tuple[int, ...] | None:
    """Strides in elements, or None when the kernels cannot walk `a` in place."""
    out = []
    for s, n in zip(a.strides, a.shape):
        if n == 1:
            out.append(0)
            continue
        if s <= 0 or s % a.itemsize:
            return None
        out.append(s // a.itemsize)
    return tuple(out)


def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a's memory from its first element to its last (strides must be >= 0)."""
    if a.size == 0:
        return np.zeros(1, a.dtype)
    span = 1 + sum((n - 1) * (s // a.itemsize) for n, s in zip(a.shape, a.strides))
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))


def module(plan: Plan):
    """The compiled module for the plan's kernel structure (disk-cached)."""
    k = plan.kernel
    key = cache.cache_key(k.canonical(), k.target)
    return cache.load_module(key, k.target, lambda: render(k, key))


def geometry(plan: Plan) -> np.ndarray:
    return np.asarray(geometry_values(plan), dtype=np.int64)


def _param(p: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    return np.zeros(1, dtype) if p is None else np.ascontiguousarray(p).reshape(-1)


def _scratch(plan: Plan, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    la = plan.launch
    return np.empty(la.n_blocks * 5 * la.seg, np.float64), np.empty(la.n_blocks * 3 * la.seg, dtype)


def n_stat(plan: Plan) -> int:
    return max(1, math.prod(plan.binding.stats_shape))


def forward_fused(plan: Plan, x, y, weight, bias, eps: float) -> np.ndarray:
    """Statistics and normalization in one launch; returns moments [groups, 1, 3]."""
    mod, g = module(plan), geometry(plan)
    moments = np.zeros(n_stat(plan) * 3, np.float64)
    args = (flat(x), flat(y), _param(weight, x.dtype), _param(bias, x.dtype), moments)
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += _scratch(plan, x.dtype)
    mod.forward_fused(*args, g, float(eps))
    return moments.reshape(-1, 1, 3)


def forward_partial(plan: Plan, x) -> np.ndarray:
    """Moments of every part of every group: [groups, parts, 3]."""
    mod, g = module(plan), geometry(plan)
    moments = np.zeros(n_stat(plan) * plan.launch.n_parts * 3, np.float64)
    args = (flat(x), moments)
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += (_scratch(plan, x.dtype)[0],)
    mod.forward_partial(*args, g)
    return moments.reshape(-1, plan.launch.n_parts, 3)


def forward_apply(plan: Plan, x, y, weight, bias, mu_hi, mu_lo, rstd) -> None:
    mod, g = module(plan), geometry(plan)
    mod.forward_apply(flat(x), flat(y), _param(weight, x.dtype), _param(bias, x.dtype),
                      _stat(mu_hi, x.dtype), _stat(mu_lo, x.dtype), _stat(rstd, x.dtype), g)


def _stat(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def _dparams(plan: Plan) -> np.ndarray:
    size = math.prod(plan.binding.param_shape) if plan.binding.param_shape else 0
    return np.zeros(max(1, plan.launch.n_blocks * 2 * size), np.float64)


def reduce_dparams(plan: Plan, dparams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the per-block parameter gradients in block order: (dweight, dbias), float64."""
    size = math.prod(plan.binding.param_shape)
    per = dparams[: plan.launch.n_blocks * 2 * size].reshape(plan.launch.n_blocks, 2, size)
    total = per[0].copy()
    for blk in range(1, per.shape[0]):
        total += per[blk]
    return total[0], total[1]


def backward_fused(plan: Plan, x, dy, dx, weight, mu_hi, mu_lo, rstd) -> np.ndarray:
    """dx and per-block parameter gradients in one launch; returns dparams."""
    mod, g = module(plan), geometry(plan)
    dparams = _dparams(plan)
    args = (flat(x), flat(dy), flat(dx), _param(weight, x.dtype), _stat(mu_hi, x.dtype),
            _stat(mu_lo, x.dtype), _stat(rstd, x.dtype), dparams)
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += _scratch(plan, x.dtype)
    mod.backward_fused(*args, g)
    return dparams


def backward_partial(plan: Plan, x, dy, weight, mu_hi, mu_lo, rstd) -> tuple[np.ndarray, np.ndarray]:
    """(sums [groups, parts, 2] of g and g * x_hat, dparams)."""
    mod, g = module(plan), geometry(plan)
    sums = np.zeros(n_stat(plan) * plan.launch.n_parts * 2, np.float64)
    dparams = _dparams(plan)
    args = (flat(x), flat(dy), _param(weight, x.dtype), _stat(mu_hi, x.dtype), _stat(mu_lo, x.dtype),
            _stat(rstd, x.dtype), sums, dparams)
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += (_scratch(plan, x.dtype)[0],)
    mod.backward_partial(*args, g)
    return sums.reshape(-1, plan.launch.n_parts, 2), dparams


def backward_apply(plan: Plan, x, dy, dx, weight, mu_hi, mu_lo, c0, c1, c2) -> None:
    mod, g = module(plan), geometry(plan)
    mod.backward_apply(flat(x), flat(dy), flat(dx), _param(weight, x.dtype), _stat(mu_hi, x.dtype),
                       _stat(mu_lo, x.dtype), _stat(c0, x.dtype), _stat(c1, x.dtype), _stat(c2, x.dtype), g)
