"""The CUDA backend: CUDA C generated from the same plans, built and launched by CuPy.

A `Device` compiles sources and launches kernels: `CupyDevice` on a GPU (cupy.RawModule,
arrays are CuPy arrays), or `EmuDevice`, which runs the very same sources on the CPU
through the emulator in normgen.testing.cuda_emu (arrays are NumPy arrays). The
emulator is how CI executes the CUDA kernels without a GPU and checks them against the
oracle; on a GPU machine the same tests run with CuPy.

bfloat16 has no NumPy or CuPy dtype: wrap its uint16 bit patterns in `BF16(array)`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cache
from ..plan.planner import Plan, Strategy, geometry_values
from ..codegen.render import render

_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(')


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


def _bits(a):
    return a.bits if isinstance(a, BF16) else a


def target_id() -> str:
    """What compiled CUDA code depends on: the GPU architecture and the NVRTC version."""
    try:
        import cupy

        dev = cupy.cuda.Device()
        major, minor = dev.compute_capability[:1], dev.compute_capability[1:]
        return f"cuda|sm_{major}{minor}|nvrtc={cupy.cuda.nvrtc.getVersion()}|cupy={cupy.__version__}"
    except Exception:  # no GPU: the emulator
        from ..testing.cuda_emu import driver

        return f"cuda|emulator|{driver.compiler_id() if hasattr(driver, 'compiler_id') else 'g++'}"


def device_name() -> str:
    """Where target="cuda" runs, in words: the GPU's name, or the CPU emulator."""
    dev = cupy_device()
    if dev is None:
        return "the CPU emulator (no CUDA GPU visible to CuPy)"
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{name} ({dev.sms} SMs, CuPy {cupy.__version__})"


# ---- devices ------------------------------------------------------------------------------


class EmuDevice:
    """The CUDA kernels on the CPU emulator (NumPy arrays): for CI and for tests."""

    name = "emulator"
    sms = 4  # few SMs: small shapes still take the split (multi-part) paths

    def __init__(self, order: str = "forward", seed: int = 0):
        self.order, self.seed = order, seed

    def owns(self, a) -> bool:
        return isinstance(_bits(a), np.ndarray)

    def compile(self, source: str, names: list[str], label: str):
        from ..testing.cuda_emu import compile_source

        return compile_source(source, names, name=label)

    def launch(self, module, name: str, grid: int, block: tuple[int, int], args: tuple) -> None:
        from .cpu import flat

        conv = tuple(flat(a) if isinstance(a, np.ndarray) else a for a in args)
        module.launch(name, grid=(grid,), block=block, args=conv, order=self.order, seed=self.seed)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def empty_like(self, a):
        return np.empty_like(a)

    def asarray(self, a: np.ndarray):
        return np.ascontiguousarray(a)

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def overlaps(self, a, b) -> bool:
        return np.may_share_memory(a, b)


class CupyDevice:
    """A GPU through CuPy: RawModule from the generated source, CuPy arrays."""

    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy
        self.sms = cupy.cuda.Device().attributes["MultiProcessorCount"]

    def owns(self, a) -> bool:
        return isinstance(_bits(a), self.cp.ndarray)

    def compile(self, source: str, names: list[str], label: str):
        return self.cp.RawModule(code=source, options=("-std=c++17",), name_expressions=None)

    def launch(self, module, name: str, grid: int, block: tuple[int, int], args: tuple) -> None:
        module.get_function(name)((grid,), block, args)

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype)

    def empty_like(self, a):
        return self.cp.empty_like(a)

    def asarray(self, a: np.ndarray):
        return self.cp.asarray(a)

    def to_host(self, a) -> np.ndarray:
        return self.cp.asnumpy(a)

    def overlaps(self, a, b) -> bool:
        return self.cp.may_share_memory(a, b)


@functools.lru_cache(maxsize=1)
def cupy_device() -> CupyDevice | None:
    try:
        return CupyDevice()
    except Exception:
        return None


# ---- the backend --------------------------------------------------------------------------


class CudaBackend:
    """Generated CUDA kernels on a Device. Statistics are merged and finalized on the device."""

    name = "cuda"
    dtypes = ("float16", "bfloat16", "float32", "float64")

    def __init__(self, device):
        self.device = device
        self._modules: dict[Any, Any] = {}

    # ---- arrays ----
    def owns(self, a) -> bool:
        return self.device.owns(a)

    def dtype(self, a) -> str:
        return "bfloat16" if isinstance(a, BF16) else np.dtype(a.dtype).name

    def stat_dtype(self, dtype: str) -> np.dtype:
        return np.dtype(np.float64 if dtype == "float64" else np.float32)

    def strides(self, a):
        a = _bits(a)
        out = []
        for s, n in zip(a.strides, a.shape):
            if n == 1:
                out.append(0)
            elif s <= 0 or s % a.itemsize:
                return None
            else:
                out.append(s // a.itemsize)
        return tuple(out)

    def contiguous(self, a):
        if isinstance(a, BF16):
            return BF16(self.contiguous(a.bits))
        return self.device.asarray(a) if isinstance(a, np.ndarray) else a.copy(order="C")

    def empty_like(self, a):
        if isinstance(a, BF16):
            return BF16(self.device.empty_like(a.bits))
        return self.device.empty_like(a)

    def overlaps(self, a, b) -> bool:
        return self.device.overlaps(_bits(a), _bits(b))

    def writeable(self, a) -> bool:
        a = _bits(a)
        return getattr(getattr(a, "flags", None), "writeable", True)

    def to_host(self, a) -> np.ndarray:
        return self.device.to_host(_bits(a))

    def from_host(self, a: np.ndarray, like=None):
        return self.device.asarray(np.ascontiguousarray(a))

    def plan(self, binding, arrays, direction, dtype, has_weight, has_bias, reduce_by="stats") -> Plan:
        from ..plan.planner import make_plan

        return make_plan(binding, arrays, direction=direction, dtype=dtype, has_weight=has_weight,
                         has_bias=has_bias, target="cuda", sms=self.device.sms, reduce_by=reduce_by)

    # ---- compile and launch ----
    def module(self, plan: Plan):
        k = plan.kernel
        mod = self._modules.get(k)
        if mod is None:
            canonical = k.canonical()
            source = render(k, cache.source_key(canonical))
            key = cache.cache_key(canonical, "cuda")
            path = cache.module_path(key, "cuda").with_suffix(".cu")
            try:  # keep the source beside the other generated modules, for reading
                cache.write_if_changed(path, source.encode())
            except OSError:
                pass
            mod = self._modules[k] = (self.device.compile(source, _KERNEL.findall(source), f"{k.spec}.cu"), plan)
        return mod[0]

    def _geometry(self, plan: Plan):
        g = plan.__dict__.get("_gpu_geometry")
        if g is None:
            g = plan.__dict__["_gpu_geometry"] = self.device.asarray(np.asarray(geometry_values(plan), np.int64))
        return g

    def _run(self, plan: Plan, name: str, *args) -> None:
        grid, bx, by, _ = plan.launch.gpu
        self.device.launch(self.module(plan), name, grid, (bx, by), tuple(_bits(a) for a in args) +
                           (self._geometry(plan),))

    def _run_groups(self, plan: Plan, name: str, n_groups: int, *args) -> None:
        """A merge kernel: one thread per group."""
        block = 256
        self.device.launch(self.module(plan), name, -(-n_groups // block), (block, 1), args)

    def _param(self, p, dtype):
        if p is None:
            return self.device.asarray(np.zeros(1, np.uint16 if dtype == "bfloat16" else np.dtype(dtype)))
        return _bits(p)

    def _n_groups(self, plan: Plan) -> int:
        return max(1, math.prod(plan.binding.stats_shape))

    def _stats(self, n: int, dtype: str):
        return self.device.empty((n, 3), self.stat_dtype(dtype))

    # ---- forward ----
    def train_forward(self, plan: Plan, x, y, w, b, eps: float, finalize=None):
        """Statistics and normalization. Returns (merged moments [g, 3] on the device, kstats)."""
        dtype = plan.kernel.dtype
        ng = self._n_groups(plan)
        kstats = self._stats(ng, dtype)
        if plan.kernel.strategy is Strategy.ROWS and plan.launch.n_parts == 1:
            moments = self.device.empty((ng, 3), np.float64)
            self._fused(plan, x, y, w, b, moments, kstats, eps)
            return moments, kstats
        moments = self._merged_moments(plan, x, kstats, eps)
        self.apply(plan, x, y, w, b, kstats)
        return moments, kstats

    def _fused(self, plan, x, y, w, b, moments, kstats, eps) -> None:
        grid, bx, by, _ = plan.launch.gpu
        dtype = plan.kernel.dtype
        self.device.launch(self.module(plan), "forward_fused", grid, (bx, by),
                           (_bits(x), _bits(y), self._param(w, dtype), self._param(b, dtype), moments, kstats,
                            self._geometry(plan), np.float64(eps)))

    def _merged_moments(self, plan: Plan, x, kstats, eps: float):
        ng = self._n_groups(plan)
        parts = self.device.empty((ng * plan.launch.n_parts, 3), np.float64)
        self._run(plan, "forward_partial", x, parts)
        moments = self.device.empty((ng, 3), np.float64)
        self._run_groups(plan, "forward_merge", ng, parts, moments, kstats, np.int64(ng),
                         np.int64(plan.launch.n_parts), np.float64(eps))
        return moments

    def moments(self, plan: Plan, x) -> np.ndarray:
        ng = self._n_groups(plan)
        kstats = self._stats(ng, plan.kernel.dtype)
        return self.to_host(self._merged_moments(plan, x, kstats, 0.0))

    def apply(self, plan: Plan, x, y, w, b, kstats) -> None:
        dtype = plan.kernel.dtype
        if isinstance(kstats, np.ndarray) and not self.device.owns(kstats):
            kstats = self.from_host(kstats.astype(self.stat_dtype(dtype)))
        self._run(plan, "forward_apply", x, y, self._param(w, dtype), self._param(b, dtype), kstats)

    # ---- backward ----
    def train_backward(self, plan: Plan, x, dy, dx, w, kstats, coefficients=None, param_plan=None):
        """dx (coefficients computed on the device) and the parameter gradients (host)."""
        dtype = plan.kernel.dtype
        ng = self._n_groups(plan)
        count = float(plan.binding.group_size)
        totals = self.device.empty((ng, 4), np.float64)
        if plan.kernel.strategy is Strategy.ROWS and plan.launch.n_parts == 1:
            self._run(plan, "backward_fused", x, dy, dx, self._param(w, dtype), kstats, totals)
            pgrad = None
        else:
            sums, pgrad = self._partial_sums(plan, x, dy, w, kstats)
            coef = self._stats(ng, dtype)
            self._run_groups(plan, "backward_merge", ng, sums, kstats, totals, coef, np.int64(ng),
                             np.int64(plan.launch.n_parts), np.float64(count))
            self._run(plan, "backward_apply", x, dy, dx, self._param(w, dtype), kstats, coef)
        return self._param_grads(plan, param_plan, x, dy, kstats, totals, pgrad)

    def _partial_sums(self, plan: Plan, x, dy, w, kstats):
        dtype = plan.kernel.dtype
        ng = self._n_groups(plan)
        sums = self.device.empty((ng * plan.launch.n_parts, 4), np.float64)
        if plan.kernel.strategy is Strategy.COLUMNS:
            pgrad = self.device.empty((self._pgrad_len(plan), 2), np.float64)
            self._run(plan, "backward_partial", x, dy, self._param(w, dtype), kstats, sums, pgrad)
            return sums, pgrad
        self._run(plan, "backward_partial", x, dy, self._param(w, dtype), kstats, sums)
        return sums, None

    def grad_sums(self, plan: Plan, x, dy, w, kstats, param_plan=None):
        """(sum g, sum g x_hat) per group on the host, and (dweight, dbias)."""
        ng = self._n_groups(plan)
        sums, pgrad = self._partial_sums(plan, x, dy, w, kstats)
        host = self.to_host(sums).reshape(ng, plan.launch.n_parts, 4).sum(axis=1)
        dw, db = self._param_grads(plan, param_plan, x, dy, kstats, self.from_host(host), pgrad)
        return host[:, 0], host[:, 1], dw, db

    def grad_apply(self, plan: Plan, x, dy, dx, w, kstats, coef: np.ndarray) -> None:
        dtype = plan.kernel.dtype
        coef_d = self.from_host(np.ascontiguousarray(coef, self.stat_dtype(dtype)))
        self._run(plan, "backward_apply", x, dy, dx, self._param(w, dtype), kstats, coef_d)

    # ---- parameter gradients ----
    def _pgrad_len(self, plan: Plan) -> int:
        k, la = plan.kernel, plan.launch
        n_groups = math.prod(la.sizes[i] for i in k.groups)
        tail = la.sizes[k.tail] if k.tail is not None else 1
        return n_groups * la.n_parts * la.sizes[k.inner] * tail

    def _param_grads(self, plan: Plan, param_plan, x, dy, kstats, totals, pgrad):
        k = plan.kernel
        if not (k.has_weight or k.has_bias):
            return None, None
        n_param = math.prod(plan.binding.param_shape)
        if k.strategy is Strategy.COLUMNS:
            part = self.to_host(pgrad)
            index = _columns_param_index(plan)
        elif _params_in_groups(plan):
            part = self.to_host(totals)[:, 2:4]
            index = _group_param_index(plan)
        else:  # a second reduction, planned with the parameter indices as its groups
            pplan = param_plan()
            if pplan.kernel.strategy is Strategy.COLUMNS:
                length, index = self._pgrad_len(pplan), _columns_param_index(pplan)
            else:
                ng = max(1, math.prod(pplan.launch.sizes[i] for i in pplan.kernel.groups))
                length = ng * pplan.launch.n_parts
                index = np.repeat(_group_param_index(pplan), pplan.launch.n_parts)
            partial = self.device.empty((length, 2), np.float64)
            grid, bx, by, _ = pplan.launch.gpu
            self.device.launch(self.module(pplan), "param_partial", grid, (bx, by),
                               (_bits(x), _bits(dy), kstats, partial, self._geometry(pplan)))
            part = self.to_host(partial)
        dw = np.bincount(index, weights=part[:, 0], minlength=n_param)
        db = np.bincount(index, weights=part[:, 1], minlength=n_param)
        return dw, db


def _offsets(sizes: list[int], strides: list[int]) -> np.ndarray:
    """Sum of index * stride over every combination of the dims' indices, C order."""
    out = np.zeros((), np.int64)
    for n, s in zip(sizes, strides):
        out = (out[..., None] + np.arange(n, dtype=np.int64) * s)
    return out.reshape(-1)


def _params_in_groups(plan: Plan) -> bool:
    k = plan.kernel
    return all(i in k.groups for i, d in enumerate(k.dims) if d.affine)


def needs_param_plan(plan: Plan) -> bool:
    """Whether the backward's parameter gradients need their own reduction (rows whose
    parameters vary inside a group: LayerNorm, GroupNorm, RMSNorm)."""
    k = plan.kernel
    return (k.has_weight or k.has_bias) and k.strategy is Strategy.ROWS and not _params_in_groups(plan)


def _group_param_index(plan: Plan) -> np.ndarray:
    """Parameter offset of each group, in the order of the groups' statistics index."""
    k, la = plan.kernel, plan.launch
    ps, ss = la.stride("param"), la.stride("stat")
    groups = list(k.groups)
    p = _offsets([la.sizes[i] for i in groups], [ps[i] for i in groups])
    s = _offsets([la.sizes[i] for i in groups], [ss[i] for i in groups])
    if k.reduce_by == "params":  # the groups are parameter indices, in unit order
        return p
    out = np.zeros(max(1, int(s.max(initial=0)) + 1), np.int64)
    out[s] = p
    return out


def _columns_param_index(plan: Plan) -> np.ndarray:
    """Parameter offset of each entry of the columns backward's per-element partials."""
    k, la = plan.kernel, plan.launch
    ps = la.stride("param")
    groups = list(k.groups)
    p_grp = _offsets([la.sizes[i] for i in groups], [ps[i] for i in groups])
    tail = [k.tail] if k.tail is not None else []
    p_elem = _offsets([la.sizes[k.inner]] + [la.sizes[i] for i in tail], [ps[k.inner]] + [ps[i] for i in tail])
    return (p_grp[:, None, None] + np.zeros(la.n_parts, np.int64)[None, :, None] + p_elem[None, None, :]).reshape(-1)
