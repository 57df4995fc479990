"""The CPU backend: Numba-compiled modules generated from a Plan, launched as the plan says.

Arrays reach the kernels as flat 1-D views of their own memory (element 0 first), with
element strides in the geometry vector, so sliced, transposed and channels_last inputs
are used in place. Arguments are passed by name and ordered by the kernel ABI table
(codegen/abi.py). Numba compiles each kernel on first call and caches the machine code on
disk beside the generated module (runtime/cache.py).

Half types (NumPy float16, and bfloat16 as `BF16` bits) reach the kernels as uint16 views
of their bits; the kernels compute in float32 (codegen/cpu_prelude.py converts chunks), so
the arrays they take beside x (parameters, statistics, coefficients, scratch) are float32.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable

import numpy as np

from ..codegen import PRELUDE_DIR
from ..codegen.abi import arguments
from ..codegen.render import render
from ..errors import CallError
from ..plan.fusion import hold_elements
from ..plan.geometry import geometry_values
from ..plan.model import Direction, Options, Plan, Strategy
from ..plan.planner import make_plan
from . import alloc, cache, jitcache
from .arrays import BF16, bits, dense_strides, elem_strides, flat, from_bits
from .moments import merge_parts
from .threads import split, threads

#: threads claim pieces of a call's blocks (threads.split) from this many elements of x (about
#: a millisecond of work on a core); smaller calls take one share per thread
CLAIM_MIN_ELEMENTS = 1 << 20


@functools.cache
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
    fn, names, g = launcher(plan, entry)
    values["g"] = g
    if plan.kernel.strategy is Strategy.COLUMNS:
        values["scratch"], values["scratch_dt"] = _scratch(plan, compute_dtype(plan.kernel.dtype))
    elif plan.kernel.fusion is not None:  # a fused rows kernel: h held between passes
        values["scratch_dt"] = np.empty(max(1, plan.launch.n_blocks * hold_elements(plan)),
                                        compute_dtype(plan.kernel.dtype))
    args = [values[n] for n in names]
    la = plan.launch
    if la.threads <= 1:
        fn(*args, 0, la.n_blocks)
    else:
        split(fn, la.n_blocks, la.threads, *args, claim=_elements(plan) >= CLAIM_MIN_ELEMENTS)


def _elements(plan: Plan) -> int:
    b = plan.binding
    return b.group_size * b.n_groups


def launcher(plan: Plan, entry: str):
    """(compiled kernel, argument names in order, geometry vector) of a plan's entry point,
    worked out once per plan: repeated calls only gather their arrays."""
    cache = plan.__dict__.setdefault("_launchers", {})
    found = cache.get(entry)
    if found is None:
        k = plan.kernel
        names = tuple(a.name for a in arguments(k, entry) if a.name not in ("blk_lo", "blk_hi"))
        found = cache[entry] = (getattr(module(k), entry), names, geometry(plan))
    return found


def _scratch(plan: Plan, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-block working memory of the columns kernels: float64 accumulators and dtype-typed
    per-element constants, for kb rows of a tile of seg columns x tail elements."""
    la, k = plan.launch, plan.kernel
    td = la.seg * (la.sizes[k.tail] if k.tail is not None else 1) * la.kb
    f64 = 6 if k.fusion is not None and k.direction is Direction.BACKWARD else 5  # fused: the bias per element too
    return np.empty(la.n_blocks * (f64 * td + 2 * la.seg), np.float64), np.empty(la.n_blocks * 4 * td, dtype)


#: the dtype CPU kernels compute in, and take parameters and statistics in, per input dtype
_COMPUTE = {"float16": np.dtype(np.float32), "bfloat16": np.dtype(np.float32),
            "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
HALF = ("float16", "bfloat16")


def compute_dtype(dtype: str) -> np.dtype:
    """float32 for the half types (and float32); float64 for float64."""
    return _COMPUTE[dtype]


def raw(a) -> np.ndarray:
    """The flat 1-D view the kernels walk (`flat`): half types as uint16 bits."""
    if isinstance(a, BF16):
        return flat(a.bits).view(np.uint16)
    f = flat(a)
    return f.view(np.uint16) if f.dtype == np.float16 else f


def _cdt(x) -> np.dtype:
    """The compute dtype of the array x (float32 for half types)."""
    return np.dtype(np.float32) if isinstance(x, BF16) or x.dtype == np.float16 else x.dtype


def _param(p, dtype: np.dtype) -> np.ndarray:
    """A parameter as the kernels read it: flat, in the compute dtype (a half-type parameter,
    or a float32 one beside half-type x, becomes float32: exact, and small)."""
    if p is None:
        return np.zeros(1, dtype)
    if isinstance(p, BF16):
        return from_bits(p.bits).reshape(-1)
    return np.ascontiguousarray(p, dtype=dtype).reshape(-1)


def _fused(fx: dict | None, dtype: np.dtype) -> dict:
    """A fused call's other arrays as the kernels take them: x-like arrays as flat views, the
    bias (backward) as a parameter, a quantized output's scales as they are."""
    out = {}
    for name, a in (fx or {}).items():
        out[name] = _param(a, dtype) if name == "bias" else a.reshape(-1) if name == "qscale" else raw(a)
    return out


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


@functools.lru_cache(maxsize=64)
def dtype_name(dtype: np.dtype) -> str:
    """np.dtype.name, remembered (NumPy computes it in Python on every access)."""
    return dtype.name


class CpuBackend:
    """NumPy arrays on the CPU: Numba kernels, statistics merged and finalized on the host."""

    name = "cpu"
    dtypes = ("float32", "float64", "float16", "bfloat16")

    # ---- arrays (bfloat16: a BF16 of NumPy uint16 bits) ----
    def owns(self, a) -> bool:
        return isinstance(a, np.ndarray) or (isinstance(a, BF16) and isinstance(a.bits, np.ndarray))

    def dtype(self, a) -> str:
        return "bfloat16" if isinstance(a, BF16) else dtype_name(a.dtype)

    def stat_dtype(self, dtype: str) -> np.dtype:
        """Statistics are kept in the compute dtype: float32 for the half types."""
        return compute_dtype(dtype) if dtype in _COMPUTE else np.dtype(dtype)

    def strides(self, a):
        return elem_strides(a)

    def dense(self, a) -> bool:
        return elem_strides(a) == dense_strides(a.shape)

    def contiguous(self, a):
        return BF16(np.ascontiguousarray(a.bits)) if isinstance(a, BF16) else np.ascontiguousarray(a)

    def empty_like(self, a):
        return BF16(alloc.empty_like(a.bits)) if isinstance(a, BF16) else alloc.empty_like(a)

    def overlaps(self, a, b) -> bool:
        return np.may_share_memory(bits(a), bits(b))

    def writeable(self, a) -> bool:
        return bits(a).flags.writeable

    def to_host(self, a) -> np.ndarray:
        """The values of a as a NumPy array (bfloat16 as its float32 values)."""
        return from_bits(a.bits) if isinstance(a, BF16) else np.asarray(a)

    def from_host(self, a: np.ndarray):
        return a

    def plan(self, binding, arrays, direction: Direction, dtype: str, has_weight: bool, has_bias: bool,
             options: Options) -> Plan:
        if dtype in HALF and direction is Direction.BACKWARD and "y" in arrays:
            raise CallError(f"{binding.spec.name}: x has dtype {dtype}; save='y' takes float32 or float64 on the CPU "
                            "backend (its half-type kernels are not built yet)")
        plan = make_plan(binding, arrays, direction=direction, dtype=dtype, has_weight=has_weight,
                         has_bias=has_bias, threads=threads(), options=options)
        if dtype in HALF and plan.kernel.fusion is not None and plan.kernel.strategy is Strategy.COLUMNS:
            raise CallError(f"{binding.spec.name}: x has dtype {dtype}; a fused spec whose kept axis is innermost "
                            "(the columns strategy, e.g. channels_last) takes float32 or float64 on the CPU backend "
                            "(its half-type kernels are not built yet); the rows strategy (e.g. contiguous) takes "
                            "half types")
        return plan

    def plan_key(self) -> tuple:
        """What the plans of this backend depend on besides the call (the thread count)."""
        return ("cpu", threads())

    # ---- forward ----
    # A fused spec's other arrays come in `fx` by their names in the plan (plan/model.py ARRAYS):
    # "e_<name>" extra inputs, "h" (forward: written when kept; backward: read), "dh", "d_<name>",
    # "y" (backward of save="y"), "bias" (backward), "qscale" (a quantized forward's scales).
    def train_forward(self, plan: Plan, x, y, w, b, eps: float, finalize: Callable[[np.ndarray], np.ndarray],
                      fx: dict | None = None):
        """Statistics and normalization: (moments [g, 3] (count, mean, M2), kstats [g, 3]).

        `finalize(moments) -> kstats` turns merged moments into what the kernels use
        (mean hi, mean lo, rstd) when the plan is phased.
        """
        if plan.launch.fused:
            moments = np.empty(_n_stat(plan) * 3, np.float64)
            kstats = np.empty(_n_stat(plan) * 3, _cdt(x))
            run(plan, "forward_fused", x=raw(x), y=raw(y), weight=_param(w, _cdt(x)), bias=_param(b, _cdt(x)),
                moments=moments, kstats=kstats, eps=float(eps), **_fused(fx, _cdt(x)))
            return moments.reshape(-1, 3), kstats.reshape(-1, 3)
        moments = self.moments(plan, x, fx)
        kstats = finalize(moments)
        self.apply(plan, x, y, w, b, kstats, fx)
        return moments, kstats

    def moments(self, plan: Plan, x, fx: dict | None = None) -> np.ndarray:
        """(count, mean, M2) per group [g, 3], the parts merged in order."""
        parts = np.zeros(_n_stat(plan) * plan.launch.n_parts * 3, np.float64)
        run(plan, "forward_partial", x=raw(x), moments=parts, **_fused(fx, _cdt(x)))
        return merge_parts(parts.reshape(-1, plan.launch.n_parts, 3))

    def apply(self, plan: Plan, x, y, w, b, kstats, fx: dict | None = None) -> None:
        run(plan, "forward_apply", x=raw(x), y=raw(y), weight=_param(w, _cdt(x)), bias=_param(b, _cdt(x)),
            kstats=_flat_stats(kstats, _cdt(x)), **_fused(fx, _cdt(x)))

    # ---- backward ----
    def train_backward(self, plan: Plan, x, dy, dx, w, kstats, coefficients, fx: dict | None = None):
        """dx and (dweight, dbias) in training mode; `coefficients(a, b) -> [g, 3]` when phased."""
        if plan.launch.fused:
            dparams = _dparams(plan)
            run(plan, "backward_fused", x=raw(x), dy=raw(dy), dx=raw(dx), weight=_param(w, _cdt(x)),
                kstats=_flat_stats(kstats, _cdt(x)), dparams=dparams, **_fused(fx, _cdt(x)))
            return _reduce_dparams(plan, dparams)
        a, b, dw, db = self.grad_sums(plan, x, dy, w, kstats, fx)
        self.grad_apply(plan, x, dy, dx, w, kstats, coefficients(a, b), fx)
        return dw, db

    def grad_sums(self, plan: Plan, x, dy, w, kstats, fx: dict | None = None):
        """(sum g, sum g x_hat) per group on the host, and (dweight, dbias)."""
        sums = np.zeros(_n_stat(plan) * plan.launch.n_parts * 2, np.float64)
        dparams = _dparams(plan)
        run(plan, "backward_partial", x=raw(x), dy=raw(dy), weight=_param(w, _cdt(x)),
            kstats=_flat_stats(kstats, _cdt(x)), sums=sums, dparams=dparams, **_fused(fx, _cdt(x)))
        sums = sums.reshape(-1, plan.launch.n_parts, 2)
        return sums[:, :, 0].sum(axis=1), sums[:, :, 1].sum(axis=1), *_reduce_dparams(plan, dparams)

    def grad_apply(self, plan: Plan, x, dy, dx, w, kstats, coef: np.ndarray, fx: dict | None = None) -> None:
        run(plan, "backward_apply", x=raw(x), dy=raw(dy), dx=raw(dx), weight=_param(w, _cdt(x)),
            kstats=_flat_stats(kstats, _cdt(x)), coef=_flat_stats(coef, _cdt(x)), **_fused(fx, _cdt(x)))


BACKEND = CpuBackend()
