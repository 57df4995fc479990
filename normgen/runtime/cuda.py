"""The CUDA backend: CUDA C generated from the same plans, built and launched by a Device.

A Device compiles sources and launches kernels: `CupyDevice` on a GPU (cupy.RawModule,
arrays are CuPy arrays), or `EmuDevice` (runtime/emulated.py), which runs the very same
sources on the CPU through the emulator in normgen.testing.cuda_emu (arrays are NumPy
arrays). The emulator is how CI executes the CUDA kernels without a GPU and checks them
against the oracle; on a GPU machine the same tests run with CuPy. The backend runs what
the plan says: its launches, its steps, its parameter-gradient reduction.

bfloat16 has no NumPy or CuPy dtype: pass `BF16(bits)` (runtime/arrays.py).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import numpy as np

from ..codegen.abi import order
from ..codegen.render import render
from ..errors import CallError
from ..plan.device import Device, from_cupy
from ..plan.geometry import geometry_values
from ..plan.model import Direction, Options, ParamGrads, Plan, Reduction, Strategy
from ..plan.planner import make_plan
from ..plan.traffic import param_partial_entries, pgrad_entries
from . import cache, cuda_ranks
from .arrays import BF16, bits, elem_strides

_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\([\d, ]+\) )?(\w+)\(')


class CupyDevice:
    """A GPU through CuPy: RawModule from the generated source, CuPy arrays."""

    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy
        self.profile = from_cupy(cupy)  # what the planner plans for

    def target_id(self) -> str:
        dev = self.cp.cuda.Device()
        cc = dev.compute_capability
        return f"cuda|sm_{cc}|nvrtc={self.cp.cuda.nvrtc.getVersion()}|cupy={self.cp.__version__}"

    def owns(self, a) -> bool:
        return isinstance(bits(a), self.cp.ndarray)

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
    """The GPU CuPy sees, or None."""
    try:
        return CupyDevice()
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU here"
        return None


def device_name() -> str:
    """Where target="cuda" runs, in words: the GPU's name, or the CPU emulator."""
    dev = cupy_device()
    if dev is None:
        return "the CPU emulator (no CUDA GPU visible to CuPy)"
    return f"{dev.profile.name} ({dev.profile.sms} SMs, CuPy {dev.cp.__version__})"


class CudaBackend:
    """Generated CUDA kernels on a Device. Statistics are merged and finalized on the device."""

    name = "cuda"
    dtypes = ("float16", "bfloat16", "float32", "float64")
    #: statistics across ranks, running updates and evaluation statistics stay on the device (cuda_ranks.py)
    device_stats = True

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
        return elem_strides(a)

    def dense(self, a) -> bool:
        return bits(a).flags.c_contiguous

    def contiguous(self, a):
        if isinstance(a, BF16):
            return BF16(self.contiguous(a.bits))
        return self.device.asarray(a) if isinstance(a, np.ndarray) else a.copy(order="C")

    def empty_like(self, a):
        if isinstance(a, BF16):
            return BF16(self.device.empty_like(a.bits))
        return self.device.empty_like(a)

    def overlaps(self, a, b) -> bool:
        return self.device.overlaps(bits(a), bits(b))

    def writeable(self, a) -> bool:
        return getattr(getattr(bits(a), "flags", None), "writeable", True)

    def to_host(self, a) -> np.ndarray:
        return self.device.to_host(bits(a))

    def from_host(self, a: np.ndarray):
        return self.device.asarray(np.ascontiguousarray(a))

    def plan(self, binding, arrays, direction: Direction, dtype: str, has_weight: bool, has_bias: bool,
             options: Options, device: Device | None = None) -> Plan:
        """The plan for this backend's device, or for `device` (a profile: to print, not to run)."""
        if binding.spec.fuse is not None or (direction is Direction.BACKWARD and "y" in arrays):
            raise CallError(f"{binding.spec.name}: fused specs (prologue, epilogue, quantize) and save='y' run on "
                            "the CPU backend; the CUDA templates for them are not built yet",
                            allowed="target='cpu' (--target cpu)")
        return make_plan(binding, arrays, direction=direction, dtype=dtype, has_weight=has_weight,
                         has_bias=has_bias, target="cuda", device=device or self.device.profile, options=options)

    def plan_key(self) -> tuple:
        return ("cuda", id(self.device))

    # ---- compile and launch ----
    def module(self, plan: Plan):
        k = plan.kernel
        mod = self._modules.get(k)
        if mod is None:
            source = render(k)
            path = cache.module_path(cache.module_key(source.key, self.device.target_id()), "cuda").with_suffix(".cu")
            try:  # keep the source beside the other generated modules, for reading
                cache.write_if_changed(path, source.text.encode())
            except OSError:
                pass
            mod = self._modules[k] = self.device.compile(source.text, _KERNEL.findall(source.text), f"{k.spec}.cu")
        return mod

    def _geometry(self, plan: Plan):
        g = plan.__dict__.get("_gpu_geometry")
        if g is None:
            g = plan.__dict__["_gpu_geometry"] = self.device.asarray(np.asarray(geometry_values(plan), np.int64))
        return g

    def run(self, plan: Plan, entry: str, **values) -> None:
        """Launch `entry` with the plan's grid; arguments by name (the ABI table orders them)."""
        la = plan.launch
        values["g"] = self._geometry(plan)
        args = order(plan.kernel, entry, {k: bits(v) for k, v in values.items()})
        self.device.launch(self.module(plan), entry, la.grid, la.block, args)

    def run_merge(self, plan: Plan, entry: str, **values) -> None:
        """A merge kernel: a warp per group, as the plan launches it."""
        args = order(plan.kernel, entry, values)
        la = plan.launch
        self.device.launch(self.module(plan), entry, la.merge_grid, (la.merge_block, 1), args)

    def _param(self, p, dtype):
        if p is None:  # a placeholder the kernels do not read: one per dtype, not an upload per call
            found = self.__dict__.setdefault("_no_param", {}).get(dtype)
            if found is None:
                found = self._no_param[dtype] = self.device.asarray(
                    np.zeros(1, np.uint16 if dtype == "bfloat16" else np.dtype(dtype)))
            return found
        return bits(p)

    def _n_groups(self, plan: Plan) -> int:
        return max(1, math.prod(plan.binding.stats_shape))

    def _stats(self, n: int, dtype: str):
        return self.device.empty((n, 3), self.stat_dtype(dtype))

    # ---- forward ----
    def train_forward(self, plan: Plan, x, y, w, b, eps: float, finalize=None):
        """Statistics and normalization: (merged moments [g, 3] on the device, kstats)."""
        dtype = plan.kernel.dtype
        ng = self._n_groups(plan)
        kstats = self._stats(ng, dtype)
        if plan.launch.fused:
            moments = self.device.empty((ng, 3), np.float64)
            self.run(plan, "forward_fused", x=x, y=y, weight=self._param(w, dtype), bias=self._param(b, dtype),
                     moments=moments, kstats=kstats, eps=np.float64(eps))
            return moments, kstats
        moments = self._merged_moments(plan, x, kstats, eps)
        self.apply(plan, x, y, w, b, kstats)
        return moments, kstats

    def _merged_moments(self, plan: Plan, x, kstats, eps: float):
        ng = self._n_groups(plan)
        parts = self.device.empty((ng * plan.launch.pieces, 3), np.float64)
        self.run(plan, "forward_partial", x=x, moments=parts)
        moments = self.device.empty((ng, 3), np.float64)
        self.run_merge(plan, "forward_merge", parts=parts, moments=moments, kstats=kstats, n_groups=np.int64(ng),
                       n_parts=np.int64(plan.launch.pieces), eps=np.float64(eps))
        return moments

    def moments(self, plan: Plan, x) -> np.ndarray:
        """(count, mean, M2) per group [g, 3], on the host."""
        kstats = self._stats(self._n_groups(plan), plan.kernel.dtype)
        return self.to_host(self._merged_moments(plan, x, kstats, 0.0))

    def apply(self, plan: Plan, x, y, w, b, kstats) -> None:
        dtype = plan.kernel.dtype
        if isinstance(kstats, np.ndarray) and not self.device.owns(kstats):
            kstats = self.from_host(kstats.astype(self.stat_dtype(dtype)))
        self.run(plan, "forward_apply", x=x, y=y, weight=self._param(w, dtype), bias=self._param(b, dtype),
                 kstats=kstats)

    # ---- backward ----
    def train_backward(self, plan: Plan, x, dy, dx, w, kstats, coefficients=None):
        """dx (coefficients computed on the device) and the parameter gradients (host)."""
        dtype = plan.kernel.dtype
        ng = self._n_groups(plan)
        totals = self.device.empty((ng, 4), np.float64)
        pgrad = None
        if plan.launch.fused:
            self.run(plan, "backward_fused", x=x, dy=dy, dx=dx, weight=self._param(w, dtype), kstats=kstats,
                     sums=totals)
        else:
            sums, pgrad = self._partial_sums(plan, x, dy, w, kstats)
            coef = self._stats(ng, dtype)
            self.run_merge(plan, "backward_merge", sums=sums, kstats=kstats, totals=totals, coef=coef,
                           n_groups=np.int64(ng), n_parts=np.int64(plan.launch.pieces),
                           count=np.float64(plan.binding.group_size))
            self.run(plan, "backward_apply", x=x, dy=dy, dx=dx, weight=self._param(w, dtype), kstats=kstats,
                     coef=coef)
        return self._param_grads(plan, x, dy, kstats, totals, pgrad)

    def _partial_sums(self, plan: Plan, x, dy, w, kstats):
        ng = self._n_groups(plan)
        sums = self.device.empty((ng * plan.launch.pieces, 4), np.float64)
        pgrad = None  # the columns kernels always write per-element partials of dy·x̂ and dy
        if plan.kernel.strategy is Strategy.COLUMNS:
            pgrad = self.device.empty((pgrad_entries(plan.kernel, plan.launch), 2), np.float64)
        self.run(plan, "backward_partial", x=x, dy=dy, weight=self._param(w, plan.kernel.dtype), kstats=kstats,
                 sums=sums, pgrad=pgrad)
        return sums, pgrad

    def grad_sums(self, plan: Plan, x, dy, w, kstats):
        """(sum g, sum g x_hat) per group on the host, and (dweight, dbias)."""
        ng = self._n_groups(plan)
        sums, pgrad = self._partial_sums(plan, x, dy, w, kstats)
        host = self.to_host(sums).reshape(ng, plan.launch.pieces, 4).sum(axis=1)
        dw, db = self._param_grads(plan, x, dy, kstats, self.from_host(host), pgrad)
        return host[:, 0], host[:, 1], dw, db

    def grad_apply(self, plan: Plan, x, dy, dx, w, kstats, coef: np.ndarray) -> None:
        dtype = plan.kernel.dtype
        coef_d = self.from_host(np.ascontiguousarray(coef, self.stat_dtype(dtype)))
        self.run(plan, "backward_apply", x=x, dy=dy, dx=dx, weight=self._param(w, dtype), kstats=kstats,
                 coef=coef_d)

    # ---- across ranks, and running statistics, on the device (runtime/cuda_ranks.py) ----
    def ranks_forward(self, plan: Plan | None, merge_plan: Plan | None, x, group, n_groups: int, eps: float):
        """(moments over every rank, kstats; None without a merge plan), on the device."""
        return cuda_ranks.forward(self, plan, merge_plan, x, group, n_groups, eps)

    def ranks_backward(self, plan: Plan | None, x, dy, dx, w, kstats, moments, group, n_groups: int,
                       per_count: bool):
        """dx with the statistics' sums added over the ranks on the device; (dweight, dbias)."""
        return cuda_ranks.backward(self, plan, x, dy, dx, w, kstats, moments, group, n_groups, per_count)

    def update_running(self, binding, moments, factor: float, running_mean, running_var) -> bool:
        """Running statistics updated from device moments by a kernel; False (nothing done) when
        the buffers are not two contiguous arrays of one dtype (the caller updates on the host)."""
        a, b = bits(running_mean), bits(running_var)
        if a.dtype != b.dtype or not (a.flags.c_contiguous and b.flags.c_contiguous) or not self.owns(moments):
            return False
        cuda_ranks.update_running(self, binding, moments, factor, a, b)
        return True

    def running_kstats(self, binding, running_mean, running_var, eps: float, dtype):
        """Evaluation's kstats from the running statistics by a kernel; None (the caller computes
        them on the host) when the buffers are not two contiguous arrays of one dtype."""
        a, b = bits(running_mean), bits(running_var)
        if a.dtype != b.dtype or not (a.flags.c_contiguous and b.flags.c_contiguous):
            return None
        return cuda_ranks.eval_kstats(self, binding, a, b, eps, dtype)

    # ---- parameter gradients, as the plan reduces them ----
    def _param_grads(self, plan: Plan, x, dy, kstats, totals, pgrad):
        grads = plan.param_grads
        if grads is ParamGrads.NONE:
            return None, None
        n_param = math.prod(plan.binding.param_shape)
        if grads is ParamGrads.PER_ELEMENT:
            part, width, first = pgrad, 2, 0
            index_of = functools.partial(_columns_param_index, plan)
        elif grads is ParamGrads.PER_GROUP:  # columns 2 and 3 of the totals [g, 4]
            part, width, first = totals, 4, 2
            index_of = functools.partial(_group_param_index, plan)
        else:  # ParamGrads.REDUCTION: the plan's second reduction, over the parameter indices
            pplan = plan.params
            if pplan.kernel.strategy is Strategy.COLUMNS:
                index_of = functools.partial(_columns_param_index, pplan)
            else:
                index_of = lambda: np.repeat(_group_param_index(pplan), pplan.launch.n_parts)
            part, width, first = self.device.empty((param_partial_entries(pplan), 2), np.float64), 2, 0
            self.run(pplan, "param_partial", x=x, dy=dy, kstats=kstats, partial=part)
        order, offsets = self._param_entries(plan, index_of, n_param)
        dw, db = self.device.empty(n_param, np.float64), self.device.empty(n_param, np.float64)
        cuda_ranks.kernels(self).param_sums(part, width, first, order, offsets, n_param, dw, db)
        return dw, db

    def _param_entries(self, plan: Plan, index_of, n_param: int):
        """The partials' rows grouped by parameter index, in row order (order, offsets [n_param + 1]),
        on the device: made once per plan, a constant of its shape."""
        found = plan.__dict__.get("_param_entries")
        if found is None:
            index = np.asarray(index_of(), np.int64)
            order = np.argsort(index, kind="stable").astype(np.int64)
            offsets = np.zeros(n_param + 1, np.int64)
            np.cumsum(np.bincount(index, minlength=n_param), out=offsets[1:])
            found = plan.__dict__["_param_entries"] = (self.device.asarray(order), self.device.asarray(offsets))
        return found


def _offsets(sizes: list[int], strides: list[int]) -> np.ndarray:
    """Sum of index * stride over every combination of the dims' indices, C order."""
    out = np.zeros((), np.int64)
    for n, s in zip(sizes, strides):
        out = (out[..., None] + np.arange(n, dtype=np.int64) * s)
    return out.reshape(-1)


def _group_param_index(plan: Plan) -> np.ndarray:
    """Parameter offset of each group, in the order of the groups' statistics index (the
    parameter-gradient reduction: in unit order)."""
    k, la = plan.kernel, plan.launch
    ps, ss = la.stride("param"), la.stride("stat")
    groups = list(k.groups)
    p = _offsets([la.sizes[i] for i in groups], [ps[i] for i in groups])
    if k.reduction is Reduction.PARAMS:  # the groups are parameter indices, in unit order
        return p
    s = _offsets([la.sizes[i] for i in groups], [ss[i] for i in groups])
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
