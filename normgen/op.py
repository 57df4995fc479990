"""Op: a spec turned into a callable with a forward and a backward.

    >>> op = normgen.load("group_norm")
    >>> fwd = op.forward(x, weight, bias, num_groups=32)      # y, mean, rstd, and what backward needs
    >>> grads = op.backward(dy, fwd)                           # dx, weight, bias
    >>> y = op(x, weight, bias, num_groups=32)                 # just y

A call is validated in full (shapes, dtypes, layouts, running statistics, `out=`) before
any kernel runs, and running statistics are assigned only after every kernel succeeded,
so a failing call leaves them as they were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import alloc
from . import stats as st
from .bind import Binding, bind
from .errors import CallError, NormgenError
from .plan import Direction, Plan, make_plan
from .spec import Center, Scale, Spec, load_spec

def cpu_strides(a: np.ndarray):
    from .backends.cpu import elem_strides

    return elem_strides(a)


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SPEC_DEFAULT: Any = object()


@dataclass
class Forward:
    """The result of a forward call: y, the statistics, and what backward needs.

    The statistics are kept the way the kernels use them: the mean split into hi + lo in
    x's dtype (for float32, hi alone loses the digits that x - mean needs), and rstd.
    """

    y: Any
    hi: np.ndarray = field(repr=False)  # per kept index (kept order), x's dtype
    lo: np.ndarray = field(repr=False)
    rs: np.ndarray = field(repr=False)
    centered: bool = field(repr=False, default=True)
    # what backward needs
    x: Any = field(repr=False, default=None)
    params: dict[str, Any] = field(repr=False, default_factory=dict)
    sizes: dict[str, Any] = field(repr=False, default_factory=dict)
    binding: Binding | None = field(repr=False, default=None)
    eval_mode: bool = field(repr=False, default=False)
    eps: float = field(repr=False, default=0.0)
    mix: dict[str, Any] | None = field(repr=False, default=None)  # Switchable Norm intermediates

    @property
    def mean(self) -> np.ndarray | None:
        """The mean per kept index (kept order), in x's dtype; None without centering."""
        return self.hi if self.centered else None

    @property
    def rstd(self) -> np.ndarray:
        """1 / sigma per kept index (kept order), in x's dtype."""
        return self.rs

    @property
    def mu64(self) -> np.ndarray:
        """The mean in float64 (hi + lo)."""
        return self.hi.astype(np.float64) + self.lo


@dataclass
class Grads:
    """Gradients of a backward call: dx and one entry per parameter that was passed."""

    dx: Any
    params: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.dx if name in ("x", "dx") else self.params[name]


class Op:
    """A compiled normalization op for one spec (kernels are built per plan, on first use)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self._bindings: dict[Any, Binding] = {}
        self._plans: dict[Any, Plan] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"normgen.Op({self.spec})"

    def __call__(self, x, *params, **kwargs):
        return self.forward(x, *params, **kwargs).y

    # ---- argument handling -----------------------------------------------------------
    def _params(self, params: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self.spec.param_names
        if len(params) > len(names):
            raise CallError(f"{self.name}: takes {len(names)} positional parameter(s) after x "
                            f"({', '.join(names) or 'none'}), got {len(params)}")
        out = dict(zip(names, params))
        for n in names:
            if n in kwargs:
                if n in out:
                    raise CallError(f"{self.name}: parameter '{n}' given twice")
                out[n] = kwargs.pop(n)
        return {k: v for k, v in out.items() if v is not None}

    def _sizes(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        sizes = {}
        for arg in self.spec.size_args:
            if arg in kwargs:
                sizes[arg] = kwargs.pop(arg)
        if kwargs:
            allowed = sorted(set(self.spec.param_names) | set(self.spec.size_args) | {
                "out", "eps", "training", "running_mean", "running_var", "momentum", "num_batches_tracked",
                "mean_weight", "var_weight"})
            raise CallError(f"{self.name}: unexpected argument(s) {', '.join(sorted(kwargs))}; "
                            f"allowed: {', '.join(allowed)}")
        return sizes

    def _check_x(self, x: Any, what: str = "x") -> np.ndarray:
        if not isinstance(x, np.ndarray):
            if type(x).__module__.startswith("cupy"):
                raise CallError(f"{self.name}: CuPy arrays need the cuda backend, which is not built yet")
            raise CallError(f"{self.name}: {what} must be a NumPy array, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise CallError(f"{self.name}: {what} has dtype {x.dtype}; the cpu backend takes float32 or float64")
        return x

    def _check_param(self, name: str, p: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if not isinstance(p, np.ndarray):
            raise CallError(f"{self.name}: {name} must be a NumPy array, got {type(p).__name__}")
        if p.shape != shape:
            raise CallError(f"{self.name}: {name} has shape {p.shape}, expected {shape}")
        if p.dtype != dtype:
            raise CallError(f"{self.name}: {name} has dtype {p.dtype}, expected {dtype} (the dtype of x)")
        return np.ascontiguousarray(p)

    def _check_out(self, out: Any, like: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
        if out is None:
            return alloc.empty_like(like)
        if not isinstance(out, np.ndarray):
            raise CallError(f"{self.name}: out must be a NumPy array, got {type(out).__name__}")
        if out.shape != like.shape or out.dtype != like.dtype:
            raise CallError(f"{self.name}: out has shape {out.shape} and dtype {out.dtype}, "
                            f"expected {like.shape} and {like.dtype}")
        if not out.flags.writeable:
            raise CallError(f"{self.name}: out is read-only")
        if cpu_strides(out) is None:
            raise CallError(f"{self.name}: out has strides {out.strides} that the kernels cannot write "
                            "(negative, zero or not a multiple of the item size)")
        for a in inputs:
            if np.may_share_memory(out, a):
                raise CallError(f"{self.name}: out overlaps an input; pass a separate array")
        return out

    def _check_running(self, binding: Binding, running_mean: Any, running_var: Any, dtype: np.dtype):
        spec = self.spec
        if running_mean is None and running_var is None:
            return None, None
        if spec.running is None:
            raise CallError(f"{self.name}: this spec has no running statistics")
        if running_mean is None or running_var is None:
            raise CallError(f"{self.name}: give both running_mean and running_var, or neither")
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            if not isinstance(r, np.ndarray):
                raise CallError(f"{self.name}: {name} must be a NumPy array, got {type(r).__name__}")
            if r.shape != binding.running_shape:
                raise CallError(f"{self.name}: {name} has shape {r.shape}, expected {binding.running_shape}")
            if r.dtype not in FLOAT_DTYPES:
                raise CallError(f"{self.name}: {name} has dtype {r.dtype}, expected float32 or float64")
            if not r.flags.writeable:
                raise CallError(f"{self.name}: {name} is read-only; running statistics are updated in place")
        return running_mean, running_var

    def _eps(self, eps: Any, dtype: np.dtype) -> float:
        if eps is None or eps is _SPEC_DEFAULT:
            return float(np.finfo(dtype).eps) if self.spec.eps == "dtype" else float(self.spec.eps)
        eps = float(eps)
        if not math.isfinite(eps) or eps < 0:
            raise CallError(f"{self.name}: eps must be a finite number >= 0, got {eps}")
        return eps

    def binding(self, shape: tuple[int, ...], **sizes: Any) -> Binding:
        return bind(self.spec, shape, sizes)

    def _bind(self, shape: tuple[int, ...], sizes: dict[str, Any]) -> Binding:
        """bind(), remembered per (shape, sizes): calls repeat their shapes."""
        try:
            key = (shape, tuple(sorted((k, v if np.isscalar(v) else tuple(v)) for k, v in sizes.items())))
            hash(key)
        except TypeError:
            return bind(self.spec, shape, sizes)
        found = self._bindings.get(key)
        if found is None:
            found = self._bindings[key] = bind(self.spec, shape, sizes)
            if len(self._bindings) > 256:
                self._bindings.pop(next(iter(self._bindings)))
        return found

    def _plan(self, binding: Binding, strides: dict[str, tuple[int, ...]], direction: Direction, dtype: np.dtype,
              has_w: bool, has_b: bool) -> Plan:
        """make_plan(), remembered per call structure (the planner is pure)."""
        from . import plan as planner
        from .backends import cpu

        key = (id(binding), tuple(strides.items()), direction, str(dtype), has_w, has_b, cpu.threads(),
               planner.FORCE_PARTS)
        found = self._plans.get(key)
        if found is None or found.binding is not binding:
            found = self._plans[key] = make_plan(binding, strides, direction=direction, dtype=str(dtype),
                                                 has_weight=has_w, has_bias=has_b, threads=cpu.threads())
            if len(self._plans) > 256:
                self._plans.pop(next(iter(self._plans)))
        return found

    def plan(self, x: np.ndarray | tuple[int, ...], *, direction: str = "forward", params: bool = True,
             strides: tuple[int, ...] | None = None, dtype: str | None = None, **sizes: Any) -> Plan:
        """The plan a call would use, for an array `x` or a shape with element `strides`.

        The output (y or dx) and dy are taken dense in x's dimension order, as a call
        that allocates them would. Used by `normgen plan` and `normgen generate`.
        """
        from .backends import cpu
        from .layouts import layout_strides, like_strides

        if isinstance(x, np.ndarray):
            shape, dtype = x.shape, str(x.dtype)
            strides = cpu.elem_strides(x)
            if strides is None:
                raise CallError(f"{self.name}: x has strides the kernels cannot walk; it would be copied")
        else:
            shape = tuple(x)
            strides = strides if strides is not None else layout_strides(shape, "contiguous")
            dtype = dtype or "float32"
        binding = bind(self.spec, shape, sizes)
        has_w = params and bool(self.spec.affine and self.spec.affine.weight)
        has_b = params and bool(self.spec.affine and self.spec.affine.bias)
        out = like_strides(shape, strides)
        unit = tuple(0 if n == 1 else s for n, s in zip(shape, strides))
        arrays = ({"x": unit, "y": out} if direction == "forward" else {"x": unit, "dy": out, "dx": out})
        return make_plan(binding, arrays, direction=Direction(direction), dtype=dtype,
                         has_weight=has_w, has_bias=has_b, threads=cpu.threads())

    # ---- forward ----------------------------------------------------------------------
    def forward(self, x, *params, out=None, training: bool = True, running_mean=None, running_var=None,
                momentum: Any = _SPEC_DEFAULT, eps: Any = None, num_batches_tracked: Any = None,
                mean_weight=None, var_weight=None, **kwargs) -> Forward:
        """Normalize x. Returns a Forward with y, mean and rstd (statistics in kept order).

        training=False with running statistics normalizes with them (evaluation mode).
        """
        from .backends import cpu

        spec = self.spec
        pvals = self._params(params, kwargs)
        sizes = self._sizes(kwargs)
        x = self._check_x(x)
        binding = self._bind(x.shape, sizes)
        checked = {n: self._check_param(n, p, binding.param_shape, x.dtype) for n, p in pvals.items()}
        running_mean, running_var = self._check_running(binding, running_mean, running_var, x.dtype)
        e = self._eps(eps, x.dtype)
        eval_mode = running_mean is not None and not training
        mix = self._check_mix(mean_weight, var_weight)
        factor = self._momentum(momentum, num_batches_tracked) if (running_mean is not None and training) else None
        y = self._check_out(out, x, x)
        n = binding.group_size
        if binding.n_groups == 0 or x.size == 0:
            if n == 0 and binding.n_groups:
                raise CallError(f"{self.name}: the reduced axes of input {x.shape} have no elements "
                                f"(statistics over 0 values)")
            return self._empty_forward(x, y, binding)
        if factor is not None and n == 1:
            raise CallError(f"{self.name}: expected more than 1 value per statistic when training "
                            f"(input {x.shape} has 1); running variance needs n - 1 > 0")
        xk = x if cpu.elem_strides(x) is not None else np.ascontiguousarray(x)
        w = checked.get(spec.affine.weight) if spec.affine and spec.affine.weight else None
        b = checked.get(spec.affine.bias) if spec.affine and spec.affine.bias else None
        yk = y
        plan = self._plan(binding, {"x": cpu.elem_strides(xk), "y": cpu.elem_strides(yk)}, Direction.FORWARD,
                          x.dtype, w is not None, b is not None)
        shape = binding.stats_shape
        mix_info = None
        new_running = None
        if eval_mode and not spec.is_mixture:
            rstd = 1.0 / np.sqrt(_broadcast_running(binding, running_var) + e)
            hi, lo = st.split_mean(_broadcast_running(binding, running_mean), x.dtype)
            rs = rstd.astype(x.dtype)
            cpu.forward_apply(plan, xk, yk, w, b, hi, lo, rs)
        elif plan.launch.fused and not spec.is_mixture:
            moments, kstats = cpu.forward_fused(plan, xk, yk, w, b, e)
            hi, lo, rs = (kstats[:, k].reshape(shape) for k in range(3))
            if spec.scale is Scale.L2 and e == 0 and not np.isfinite(rs).all():
                self._zero_norm(np.isinf(rs))
            if factor is not None:
                cnt, mean, m2 = (moments[:, 0, k].reshape(shape) for k in range(3))
                norm = st.normalizer(spec, cnt, mean, m2, e)
                new_running = self._running(binding, norm, None, n, factor, running_mean, running_var)
        else:
            cnt, mean, m2 = (a.reshape(shape) for a in st.merge_parts(cpu.forward_partial(plan, xk)))
            norm = st.normalizer(spec, cnt, mean, m2, e)
            if spec.is_mixture:
                norm, mix_info = self._mix(binding, norm, mix, eval_mode, running_mean, running_var, e)
            if spec.scale is Scale.L2 and e == 0 and np.any(norm.var == 0):
                self._zero_norm(norm.var == 0)
            hi, lo = st.split_mean(norm.mean, x.dtype)
            rs = norm.rstd.astype(x.dtype)
            cpu.forward_apply(plan, xk, yk, w, b, hi, lo, rs)
            if factor is not None:
                new_running = self._running(binding, norm, mix_info, n, factor, running_mean, running_var)
        if new_running is not None:  # every kernel has run: now update in place, both or neither
            running_mean[...] = new_running[0]
            running_var[...] = new_running[1]
            if isinstance(num_batches_tracked, np.ndarray):
                num_batches_tracked += 1
        return Forward(y=y, hi=hi, lo=lo, rs=rs, centered=spec.center is Center.MEAN, x=xk, params=checked,
                       sizes=sizes, binding=binding, eval_mode=eval_mode, eps=e, mix=mix_info)

    def _zero_norm(self, bad: np.ndarray) -> None:
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CallError(f"{self.name}: the group at kept index {where} has zero norm, so v / ||v|| is "
                        "undefined (eps = 0)")

    def _empty_forward(self, x, y, binding) -> Forward:
        z = np.zeros(binding.stats_shape, x.dtype)
        return Forward(y=y, hi=z, lo=z.copy(), rs=z.copy(), centered=self.spec.center is Center.MEAN, x=x,
                       binding=binding)

    def _momentum(self, momentum: Any, num_batches_tracked: Any) -> float:
        if momentum is _SPEC_DEFAULT:
            return self.spec.running.momentum
        if momentum is None:
            if num_batches_tracked is None:
                raise CallError(f"{self.name}: momentum=None (cumulative average) needs num_batches_tracked")
            return 1.0 / (int(np.asarray(num_batches_tracked)) + 1)
        m = float(momentum)
        if not 0.0 <= m <= 1.0:
            raise CallError(f"{self.name}: momentum must be in [0, 1] or None, got {momentum}")
        return m

    def _check_mix(self, mean_weight: Any, var_weight: Any) -> dict[str, np.ndarray] | None:
        if not self.spec.is_mixture:
            if mean_weight is not None or var_weight is not None:
                raise CallError(f"{self.name}: mean_weight/var_weight are for mixture specs only")
            return None
        k = len(self.spec.kept)
        out = {}
        for name, v in (("mean_weight", mean_weight), ("var_weight", var_weight)):
            if v is None:
                raise CallError(f"{self.name}: a mixture needs {name} (shape ({k},))")
            v = np.asarray(v)
            if v.shape != (k,):
                raise CallError(f"{self.name}: {name} has shape {v.shape}, expected ({k},)")
            out[name] = v.astype(np.float64)
        return out

    def _mix(self, binding: Binding, norm: st.Normalizer, mix: dict[str, np.ndarray], eval_mode: bool,
             running_mean, running_var, eps: float):
        """Switchable Norm: mix the components' moments, merged from the finest ones."""
        spec = self.spec
        mw, vw = st.softmax(mix["mean_weight"]), st.softmax(mix["var_weight"])
        comp_mu, comp_var, frozen = [], [], []
        for k, keep in enumerate(binding.component_dims):
            m, v = st.component_moments(norm.mean, norm.var, keep)
            is_run = spec.running is not None and set(spec.kept[k]) == set(spec.running.axes)
            if eval_mode and is_run:
                m = _broadcast_running(binding, running_mean, keep_dims=keep)
                v = _broadcast_running(binding, running_var, keep_dims=keep)
            comp_mu.append(m)
            comp_var.append(v)
            frozen.append(eval_mode and is_run)
        mu = sum(w * m for w, m in zip(mw, comp_mu))
        var = sum(w * v for w, v in zip(vw, comp_var))
        mu = np.broadcast_to(mu, norm.mean.shape).copy()
        var = np.broadcast_to(var, norm.mean.shape).copy()
        info = {"mw": mw, "vw": vw, "comp_mu": comp_mu, "comp_var": comp_var, "frozen": frozen,
                "mean_weight": mix["mean_weight"], "var_weight": mix["var_weight"]}
        return st.Normalizer(mu, var, 1.0 / np.sqrt(var + eps)), info

    def _running(self, binding: Binding, norm: st.Normalizer, mix_info, n: int, factor: float,
                 running_mean, running_var):
        """New running statistics (PyTorch's formulas); the caller assigns them."""
        if mix_info is not None:  # a mixture tracks the component whose kept set the running axes are
            k = next(i for i, c in enumerate(self.spec.kept) if set(c) == set(self.spec.running.axes))
            keep = binding.component_dims[k]
            mean = np.broadcast_to(mix_info["comp_mu"][k], norm.mean.shape)
            var = np.broadcast_to(mix_info["comp_var"][k], norm.mean.shape)
            count = n * math.prod(s for d, s in enumerate(binding.stats_shape) if d not in keep)
        else:
            mean, var, count = norm.mean, norm.var, n
        dims = binding.running_dims
        mean_b = st.average_to(np.asarray(mean), dims, dims)
        var_b = st.average_to(np.asarray(var) * (count / (count - 1)), dims, dims)
        new_mean = st.running_update(running_mean, mean_b.reshape(running_mean.shape), factor)
        new_var = st.running_update(running_var, var_b.reshape(running_var.shape), factor)
        return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)

    # ---- backward ---------------------------------------------------------------------
    def backward(self, dy, fwd: Forward, *, out=None) -> Grads:
        """Gradients of sum(dy * y) for x and every parameter the forward call was given."""
        from .backends import cpu

        spec = self.spec
        x = fwd.x
        dy = self._check_x(dy, "dy")
        if dy.shape != x.shape or dy.dtype != x.dtype:
            raise CallError(f"{self.name}: dy has shape {dy.shape} and dtype {dy.dtype}, expected "
                            f"{x.shape} and {x.dtype} (those of x)")
        dyk = dy if cpu.elem_strides(dy) is not None else np.ascontiguousarray(dy)
        dx = self._check_out(out, x, x, dy)
        binding = fwd.binding
        w = fwd.params.get(spec.affine.weight) if spec.affine and spec.affine.weight else None
        b = fwd.params.get(spec.affine.bias) if spec.affine and spec.affine.bias else None
        grads: dict[str, Any] = {}
        if x.size == 0:
            dx[...] = 0
            for name, p in fwd.params.items():
                grads[name] = np.zeros_like(p)
            return Grads(dx, grads)
        plan = self._plan(binding, {"x": cpu.elem_strides(x), "dy": cpu.elem_strides(dyk), "dx": cpu.elem_strides(dx)},
                          Direction.BACKWARD, x.dtype, w is not None, b is not None)
        hi, lo = fwd.hi, fwd.lo
        shape = binding.stats_shape
        if plan.launch.fused and not spec.is_mixture and not fwd.eval_mode:
            dparams = cpu.backward_fused(plan, x, dyk, dx, w, hi, lo, fwd.rs)
        else:
            rstd = fwd.rs.astype(np.float64)
            sums, dparams = cpu.backward_partial(plan, x, dyk, w, hi, lo, fwd.rs)
            a = sums[:, :, 0].sum(axis=1).reshape(shape)
            bsum = sums[:, :, 1].sum(axis=1).reshape(shape)
            n = binding.group_size
            if fwd.eval_mode and not spec.is_mixture:
                c0, c1, c2 = rstd, np.zeros_like(rstd), np.zeros_like(rstd)
            elif spec.is_mixture:
                (c0, c1, c2), mix_grads = self._mix_backward(binding, fwd, a, bsum)
                grads.update(mix_grads)
            else:
                c0, c1, c2 = st.backward_coefficients(spec, n, rstd, a, bsum)
            cpu.backward_apply(plan, x, dyk, dx, w, hi, lo, c0, c1, c2)
        if w is not None or b is not None:
            dw, db = cpu.reduce_dparams(plan, dparams)
            if w is not None:
                grads[spec.affine.weight] = dw.reshape(binding.param_shape).astype(x.dtype)
            if b is not None:
                grads[spec.affine.bias] = db.reshape(binding.param_shape).astype(x.dtype)
        return Grads(dx, grads)

    def _mix_backward(self, binding: Binding, fwd: Forward, a: np.ndarray, b: np.ndarray):
        """Chain rule through the Switchable Norm mix (see DESIGN.md and oracle.backward)."""
        info = fwd.mix
        rstd = fwd.rs.astype(np.float64)
        n = binding.group_size
        d_mu = -rstd * a
        d_var = -0.5 * b * rstd * rstd
        c1 = np.zeros_like(rstd)
        c2 = np.zeros_like(rstd)
        d_mw = np.zeros(len(self.spec.kept))
        d_vw = np.zeros(len(self.spec.kept))
        for k, keep in enumerate(binding.component_dims):
            axes = tuple(d for d in range(rstd.ndim) if d not in keep)
            m_k = n * math.prod(rstd.shape[d] for d in axes)
            dmu_k = info["mw"][k] * (d_mu.sum(axis=axes, keepdims=True) if axes else d_mu)
            dvar_k = info["vw"][k] * (d_var.sum(axis=axes, keepdims=True) if axes else d_var)
            d_mw[k] = float((d_mu * info["comp_mu"][k]).sum())
            d_vw[k] = float((d_var * info["comp_var"][k]).sum())
            if info["frozen"][k]:
                continue
            c1 = c1 + 2.0 * dvar_k / m_k
            c2 = c2 + dmu_k / m_k + 2.0 * dvar_k * (fwd.mu64 - info["comp_mu"][k]) / m_k
        mw, vw = info["mw"], info["vw"]
        grads = {"mean_weight": (mw * (d_mw - np.dot(mw, d_mw))).astype(info["mean_weight"].dtype),
                 "var_weight": (vw * (d_vw - np.dot(vw, d_vw))).astype(info["var_weight"].dtype)}
        return (rstd, np.broadcast_to(c1, rstd.shape), np.broadcast_to(c2, rstd.shape)), grads


def _broadcast_running(binding: Binding, running: np.ndarray, keep_dims: tuple[int, ...] | None = None) -> np.ndarray:
    """Running statistics (running order) -> the statistics' dims (kept order).

    Broadcast to the full statistics shape, or left with size-1 dims when `keep_dims` is
    given (for a mixture component).
    """
    dims = binding.running_dims
    shape = binding.stats_shape
    r = np.asarray(running, dtype=np.float64).reshape([shape[d] for d in dims])
    present = sorted(dims)
    r = r.transpose([dims.index(d) for d in present])
    r = r.reshape([shape[d] if d in dims else 1 for d in range(len(shape))])
    return r if keep_dims is not None else np.broadcast_to(r, shape)


_BY_NAME: dict[str, Op] = {}


def load(name_or_path: Any) -> Op:
    """An Op for a bundled spec name ('group_norm'), a path to a spec file, or a Spec."""
    from .library import find_spec

    if isinstance(name_or_path, Spec):
        return Op(name_or_path)
    if isinstance(name_or_path, Op):
        return name_or_path
    key = str(name_or_path)
    if key in _BY_NAME:
        return _BY_NAME[key]
    path = Path(key)
    if key.endswith(".toml") or path.exists():
        op = Op(load_spec(path))
    else:
        op = Op(find_spec(key))
    _BY_NAME[key] = op
    return op


__all__ = ["Op", "Forward", "Grads", "load", "NormgenError"]
