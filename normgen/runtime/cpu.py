"""The CPU backend: Numba-compiled modules generated from a Plan, launched as the plan says.

Arrays reach the kernels as flat 1-D views of their own memory (element 0 first), with
element strides in the geometry vector, so sliced, transposed and channels_last inputs
are used in place. Arguments are passed by name and ordered by the kernel ABI table
(codegen/abi.py). Numba compiles each kernel on first call and caches the machine code on
disk beside the generated module (runtime/cache.py).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Callable

import numpy as np

from ..codegen import PRELUDE_DIR
from ..codegen.abi import order
from ..codegen.render import render
from ..plan.geometry import geometry_values
from ..plan.model import Direction, Options, Plan, Strategy
from ..plan.planner import make_plan
from . import alloc, cache, jitcache
from .arrays import dense_strides, elem_strides, flat
from .moments import merge_parts
from .threads import split, threads


@functools.lru_cache(maxsize=None)
def target_id() -> str:
    """What compiled CPU code depends on besides its source: Numba, the CPU, the prelude it imports."""
    import llvmlite.binding as ll
    import numba

    prelude = hashlib.sha256((PRELUDE_DIR / "cpu_prelude.py").read_bytes()).hexdigest()[:16]
    return f"cpu|numba={numba.__version__}|cpu={ll.get_host_cpu_name()}|prelude={prelude}"


@functools.lru_cache(maxsize=1024)
def _source(kernel):
    return render(kernel)


def module_key(kernel) -> str:
    """The cache key of a kernel structure's module: kernels with identical bodies share it."""
    return cache.module_key(_source(kernel).key, target_id())


@functools.lru_cache(maxsize=1024)
def module(kernel):
    """The compiled module for a kernel structure (disk-cached, keyed by its rendered body).

    Its Numba functions load and save machine code under the cache folder's lock, so
    processes that compile at once cannot mix up each other's entries (jitcache.py)."""
    mod = cache.load_module(module_key(kernel), "cpu", lambda: _source(kernel).text)
    jitcache.guard(mod)
    return mod


def geometry(plan: Plan) -> np.ndarray:
    """The int64 geometry vector of a plan, made once per plan."""
    g = plan.__dict__.get("_geometry")
    if g is None:
        g = plan.__dict__["_geometry"] = np.asarray(geometry_values(plan), dtype=np.int64)
    return g


def run(plan: Plan, entry: str, **values) -> None:
    """Run the kernel `entry` over the plan's blocks, on as many threads as the plan says."""
    k, la = plan.kernel, plan.launch
    values["g"] = geometry(plan)
    if k.strategy is Strategy.COLUMNS:
        values["scratch"], values["scratch_dt"] = _scratch(plan, values["x"].dtype)
    args = order(k, entry, values, skip=("blk_lo", "blk_hi"))
    fn = getattr(module(k), entry)
    if la.threads <= 1:
        fn(*args, 0, la.n_blocks)
    else:
        split(fn, la.n_blocks, la.threads, *args)


def _scratch(plan: Plan, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-block working memory of the columns kernels: float64 accumulators and dtype-typed
    per-element constants, for kb rows of a tile of seg columns x tail elements."""
    la, k = plan.launch, plan.kernel
    td = la.seg * (la.sizes[k.tail] if k.tail is not None else 1) * la.kb
    return np.empty(la.n_blocks * (5 * td + 2 * la.seg), np.float64), np.empty(la.n_blocks * 4 * td, dtype)


def _param(p: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    return np.zeros(1, dtype) if p is None else np.ascontiguousarray(p).reshape(-1)


def _flat_stats(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def _n_stat(plan: Plan) -> int:
    return max(1, math.prod(plan.binding.stats_shape))


def _dparams(plan: Plan) -> np.ndarray:
    """Per-block parameter gradients [blocks, weight|bias, n_param] (float64)."""
    size = math.prod(plan.binding.param_shape) if plan.binding.param_shape else 0
    return np.zeros(max(1, plan.launch.n_blocks * 2 * size), np.float64)


def _reduce_dparams(plan: Plan, dparams: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Sum the per-block parameter gradients in block order: (dweight, dbias), float64."""
    if not plan.kernel.affine:
        return None, None
    size = math.prod(plan.binding.param_shape)
    per = dparams[: plan.launch.n_blocks * 2 * size].reshape(plan.launch.n_blocks, 2, size)
    total = per[0].copy()
    for blk in range(1, per.shape[0]):
        total += per[blk]
    return total[0], total[1]


class CpuBackend:
    """NumPy arrays on the CPU: Numba kernels, statistics merged and finalized on the host."""

    name = "cpu"
    dtypes = ("float32", "float64")

    # ---- arrays ----
    def owns(self, a) -> bool:
        return isinstance(a, np.ndarray)

    def dtype(self, a) -> str:
        return a.dtype.name

    def stat_dtype(self, dtype: str) -> np.dtype:
        return np.dtype(dtype)

    def strides(self, a):
        return elem_strides(a)

    def dense(self, a) -> bool:
        return elem_strides(a) == dense_strides(a.shape)

    def contiguous(self, a):
        return np.ascontiguousarray(a)

    def empty_like(self, a):
        return alloc.empty_like(a)

    def overlaps(self, a, b) -> bool:
        return np.may_share_memory(a, b)

    def writeable(self, a) -> bool:
        return a.flags.writeable

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def from_host(self, a: np.ndarray):
        return a

    def plan(self, binding, arrays, direction: Direction, dtype: str, has_weight: bool, has_bias: bool,
             options: Options) -> Plan:
        return make_plan(binding, arrays, direction=direction, dtype=dtype, has_weight=has_weight,
                         has_bias=has_bias, threads=threads(), options=options)

    def plan_key(self) -> tuple:
        """What the plans of this backend depend on besides the call (the thread count)."""
        return ("cpu", threads())

    # ---- forward ----
    def train_forward(self, plan: Plan, x, y, w, b, eps: float, finalize: Callable[[np.ndarray], np.ndarray]):
        """Statistics and normalization: (moments [g, 3] (count, mean, M2), kstats [g, 3]).

        `finalize(moments) -> kstats` turns merged moments into what the kernels use
        (mean hi, mean lo, rstd) when the plan is phased.
        """
        if plan.launch.fused:
            moments = np.empty(_n_stat(plan) * 3, np.float64)
            kstats = np.empty(_n_stat(plan) * 3, x.dtype)
            run(plan, "forward_fused", x=flat(x), y=flat(y), weight=_param(w, x.dtype), bias=_param(b, x.dtype),
                moments=moments, kstats=kstats, eps=float(eps))
            return moments.reshape(-1, 3), kstats.reshape(-1, 3)
        moments = self.moments(plan, x)
        kstats = finalize(moments)
        self.apply(plan, x, y, w, b, kstats)
        return moments, kstats

    def moments(self, plan: Plan, x) -> np.ndarray:
        """(count, mean, M2) per group [g, 3], the parts merged in order."""
        parts = np.zeros(_n_stat(plan) * plan.launch.n_parts * 3, np.float64)
        run(plan, "forward_partial", x=flat(x), moments=parts)
        return merge_parts(parts.reshape(-1, plan.launch.n_parts, 3))

    def apply(self, plan: Plan, x, y, w, b, kstats) -> None:
        run(plan, "forward_apply", x=flat(x), y=flat(y), weight=_param(w, x.dtype), bias=_param(b, x.dtype),
            kstats=_flat_stats(kstats, x.dtype))

    # ---- backward ----
    def train_backward(self, plan: Plan, x, dy, dx, w, kstats, coefficients):
        """dx and (dweight, dbias) in training mode; `coefficients(a, b) -> [g, 3]` when phased."""
        if plan.launch.fused:
            dparams = _dparams(plan)
            run(plan, "backward_fused", x=flat(x), dy=flat(dy), dx=flat(dx), weight=_param(w, x.dtype),
                kstats=_flat_stats(kstats, x.dtype), dparams=dparams)
            return _reduce_dparams(plan, dparams)
        a, b, dw, db = self.grad_sums(plan, x, dy, w, kstats)
        self.grad_apply(plan, x, dy, dx, w, kstats, coefficients(a, b))
        return dw, db

    def grad_sums(self, plan: Plan, x, dy, w, kstats):
        """(sum g, sum g x_hat) per group on the host, and (dweight, dbias)."""
        sums = np.zeros(_n_stat(plan) * plan.launch.n_parts * 2, np.float64)
        dparams = _dparams(plan)
        run(plan, "backward_partial", x=flat(x), dy=flat(dy), weight=_param(w, x.dtype),
            kstats=_flat_stats(kstats, x.dtype), sums=sums, dparams=dparams)
        sums = sums.reshape(-1, plan.launch.n_parts, 2)
        return sums[:, :, 0].sum(axis=1), sums[:, :, 1].sum(axis=1), *_reduce_dparams(plan, dparams)

    def grad_apply(self, plan: Plan, x, dy, dx, w, kstats, coef: np.ndarray) -> None:
        run(plan, "backward_apply", x=flat(x), dy=flat(dy), dx=flat(dx), weight=_param(w, x.dtype),
            kstats=_flat_stats(kstats, x.dtype), coef=_flat_stats(coef, x.dtype))


BACKEND = CpuBackend()
