"""The CPU backend: Numba-compiled modules generated from a Plan, and how to launch them.

Arrays reach the kernels as flat 1-D views of their own memory (element 0 first), with
element strides in the geometry vector, so sliced, transposed and channels_last inputs
are used in place. Numba compiles each kernel on first call and caches the machine code
on disk beside the generated module.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import cache
from ..plan.planner import Plan, Strategy, col_apply_rows, geometry_values
from ..codegen.render import render


_pool: ThreadPoolExecutor | None = None
_threads: int | None = None


def threads() -> int:
    """Threads the CPU kernels use: NORMGEN_NUM_THREADS, else the CPUs this process may use."""
    global _threads
    if _threads is None:
        env = os.environ.get("NORMGEN_NUM_THREADS")
        _threads = max(1, int(env)) if env else max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                    else (os.cpu_count() or 1))
    return _threads


def set_num_threads(n: int) -> None:
    """Use n threads from now on (plans made afterwards split their work for n)."""
    global _threads, _pool
    _threads = max(1, int(n))
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


#: below this many elements one thread is faster than waking the others
PARALLEL_MIN = 32 * 1024


def launch(kernel, plan: Plan, *args) -> None:
    """Run kernel(*args, blk_lo, blk_hi) over the plan's blocks, split evenly over threads.

    The kernels release the GIL, so the threads run in parallel. Which thread runs which
    block does not change any result: each block writes its own outputs and partials.
    """
    if math.prod(plan.launch.sizes) < PARALLEL_MIN:
        kernel(*args, 0, plan.launch.n_blocks)
    else:
        split(kernel, plan.launch.n_blocks, *args)


def split(fn, n: int, *args) -> None:
    """fn(*args, lo, hi) over [0, n) cut into one contiguous range per thread."""
    global _pool
    t = min(threads(), n)
    if t <= 1:
        fn(*args, 0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="normgen")
    futures = [_pool.submit(fn, *args, i * n // t, (i + 1) * n // t) for i in range(1, t)]
    fn(*args, 0, n // t)
    for f in futures:
        f.result()


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
    if a.flags.c_contiguous:
        return a.reshape(-1)
    span = 1 + sum((n - 1) * (s // a.itemsize) for n, s in zip(a.shape, a.strides))
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))


def module(plan: Plan):
    """The compiled module for the plan's kernel structure (disk-cached)."""
    return _module(plan.kernel)


@functools.lru_cache(maxsize=1024)
def _module(k):
    canonical = k.canonical()
    key = cache.cache_key(canonical, k.target)
    return cache.load_module(key, k.target, lambda: render(k, cache.source_key(canonical)))


def geometry(plan: Plan) -> np.ndarray:
    """The int64 geometry vector (sizes, strides, launch numbers) of a plan, made once per plan."""
    g = plan.__dict__.get("_geometry")
    if g is None:
        g = np.asarray(geometry_values(plan), dtype=np.int64)
        plan.__dict__["_geometry"] = g
    return g


def _param(p: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    return np.zeros(1, dtype) if p is None else np.ascontiguousarray(p).reshape(-1)


def _scratch(plan: Plan, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-block working memory of the columns kernels: float64 accumulators and
    dtype-typed expanded constants, for a tile of seg columns x tail elements."""
    la, k = plan.launch, plan.kernel
    tile = la.seg * (la.sizes[k.tail] if k.tail is not None else 1)
    # room for col_apply_rows(tile) rows of the tile (rows processed together when back to back)
    rows = col_apply_rows(tile)
    return (np.empty(la.n_blocks * (5 * tile * rows + 5 * la.seg), np.float64),
            np.empty(la.n_blocks * 4 * tile * rows, dtype))


def n_stat(plan: Plan) -> int:
    return max(1, math.prod(plan.binding.stats_shape))


def forward_fused(plan: Plan, x, y, weight, bias, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Statistics and normalization in one launch.

    Returns moments [groups, 1, 3] (count, mean, M2 in float64) and what the kernels
    normalized with, [groups, 3] (mean hi, mean lo, rstd in x's dtype).
    """
    mod, g = module(plan), geometry(plan)
    moments = np.empty(n_stat(plan) * 3, np.float64)
    kstats = np.empty(n_stat(plan) * 3, x.dtype)
    args = (flat(x), flat(y), _param(weight, x.dtype), _param(bias, x.dtype), moments, kstats)
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += _scratch(plan, x.dtype)
    launch(mod.forward_fused, plan, *args, g, float(eps))
    return moments.reshape(-1, 1, 3), kstats.reshape(-1, 3)


def forward_partial(plan: Plan, x) -> np.ndarray:
    """Moments of every part of every group: [groups, parts, 3]."""
    mod, g = module(plan), geometry(plan)
    moments = np.zeros(n_stat(plan) * plan.launch.n_parts * 3, np.float64)
    args = (flat(x), moments)
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += (_scratch(plan, x.dtype)[0],)
    launch(mod.forward_partial, plan, *args, g)
    return moments.reshape(-1, plan.launch.n_parts, 3)


def forward_apply(plan: Plan, x, y, weight, bias, mu_hi, mu_lo, rstd) -> None:
    mod, g = module(plan), geometry(plan)
    args = (flat(x), flat(y), _param(weight, x.dtype), _param(bias, x.dtype),
            _stat(mu_hi, x.dtype), _stat(mu_lo, x.dtype), _stat(rstd, x.dtype))
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += (_scratch(plan, x.dtype)[1],)
    launch(mod.forward_apply, plan, *args, g)


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
    launch(mod.backward_fused, plan, *args, g)
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
    launch(mod.backward_partial, plan, *args, g)
    return sums.reshape(-1, plan.launch.n_parts, 2), dparams


def backward_apply(plan: Plan, x, dy, dx, weight, mu_hi, mu_lo, c0, c1, c2) -> None:
    mod, g = module(plan), geometry(plan)
    args = (flat(x), flat(dy), flat(dx), _param(weight, x.dtype), _stat(mu_hi, x.dtype),
            _stat(mu_lo, x.dtype), _stat(c0, x.dtype), _stat(c1, x.dtype), _stat(c2, x.dtype))
    if plan.kernel.strategy is Strategy.COLUMNS:
        args += _scratch(plan, x.dtype)
    launch(mod.backward_apply, plan, *args, g)


class CpuBackend:
    """NumPy arrays on the CPU: Numba kernels, statistics merged and finalized on the host."""

    name = "cpu"
    dtypes = ("float32", "float64")

    def owns(self, a) -> bool:
        return isinstance(a, np.ndarray)

    def dtype(self, a) -> str:
        return a.dtype.name

    def stat_dtype(self, dtype: str) -> np.dtype:
        return np.dtype(dtype)

    def strides(self, a):
        return elem_strides(a)

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def empty_like(self, a):
        from .alloc import empty_like

        return empty_like(a)

    def overlaps(self, a, b) -> bool:
        return np.may_share_memory(a, b)

    def writeable(self, a) -> bool:
        return a.flags.writeable

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def from_host(self, a: np.ndarray, like=None):
        return a

    def plan(self, binding, arrays, direction, dtype, has_weight, has_bias, reduce_by="stats") -> Plan:
        from ..plan.planner import make_plan

        return make_plan(binding, arrays, direction=direction, dtype=dtype, has_weight=has_weight,
                         has_bias=has_bias, threads=threads(), reduce_by=reduce_by)

    # ---- forward ----
    def train_forward(self, plan: Plan, x, y, w, b, eps: float, finalize):
        """Statistics and normalization. Returns (merged moments [g, 3] on the host, kstats [g, 3]).

        `finalize(moments) -> kstats` turns merged moments into what the kernels use.
        """
        if plan.launch.fused:
            moments, kstats = forward_fused(plan, x, y, w, b, eps)
            return moments[:, 0, :], kstats
        moments = self.moments(plan, x)
        kstats = finalize(moments)
        self.apply(plan, x, y, w, b, kstats)
        return moments, kstats

    def moments(self, plan: Plan, x) -> np.ndarray:
        from ..op.stats import merge_parts

        return np.stack(merge_parts(forward_partial(plan, x)), axis=1)

    def apply(self, plan: Plan, x, y, w, b, kstats) -> None:
        forward_apply(plan, x, y, w, b, kstats[:, 0], kstats[:, 1], kstats[:, 2])

    # ---- backward ----
    def train_backward(self, plan: Plan, x, dy, dx, w, kstats, coefficients):
        """dx and (dweight, dbias) for training mode; `coefficients(sums) -> [g, 3]` when phased."""
        if plan.launch.fused:
            dparams = backward_fused(plan, x, dy, dx, w, kstats[:, 0], kstats[:, 1], kstats[:, 2])
            return self._dparams(plan, dparams)
        a, b, dw, db = self.grad_sums(plan, x, dy, w, kstats)
        self.grad_apply(plan, x, dy, dx, w, kstats, coefficients(a, b))
        return dw, db

    def grad_sums(self, plan: Plan, x, dy, w, kstats):
        """(sum g, sum g x_hat) per group on the host, and (dweight, dbias)."""
        sums, dparams = backward_partial(plan, x, dy, w, kstats[:, 0], kstats[:, 1], kstats[:, 2])
        return sums[:, :, 0].sum(axis=1), sums[:, :, 1].sum(axis=1), *self._dparams(plan, dparams)

    def grad_apply(self, plan: Plan, x, dy, dx, w, kstats, coef: np.ndarray) -> None:
        backward_apply(plan, x, dy, dx, w, kstats[:, 0], kstats[:, 1], coef[:, 0], coef[:, 1], coef[:, 2])

    def _dparams(self, plan: Plan, dparams):
        if not (plan.kernel.has_weight or plan.kernel.has_bias):
            return None, None
        return reduce_dparams(plan, dparams)


BACKEND = CpuBackend()
