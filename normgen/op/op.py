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

from ..runtime import alloc
from . import stats as st
from ..plan.bind import Binding, bind
from ..errors import CallError, NormgenError
from ..plan.planner import Direction, Plan, make_plan
from ..spec.loader import Center, Scale, Spec, load_spec

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SPEC_DEFAULT: Any = object()


@dataclass
class Forward:
    """The result of a forward call: y, the statistics, and what backward needs.

    The kernels keep, per kept index, the mean split into hi + lo (for float32, hi alone
    loses the digits that x - mean needs) and rstd: `kstats`, an array [groups, 3] of the
    backend (NumPy on the CPU, CuPy on a GPU). `mean` and `rstd` are views of it.
    """

    y: Any
    kstats: Any = field(repr=False)
    backend: Any = field(repr=False)
    centered: bool = field(repr=False, default=True)
    # what backward needs
    x: Any = field(repr=False, default=None)
    params: dict[str, Any] = field(repr=False, default_factory=dict)
    sizes: dict[str, Any] = field(repr=False, default_factory=dict)
    binding: Binding | None = field(repr=False, default=None)
    eval_mode: bool = field(repr=False, default=False)
    eps: float = field(repr=False, default=0.0)
    mix: dict[str, Any] | None = field(repr=False, default=None)  # Switchable Norm intermediates
    group: Any = field(repr=False, default=None)  # distributed.Group whose ranks share the statistics
    count: np.ndarray | None = field(repr=False, default=None)  # elements per group, over all ranks
    _host: np.ndarray | None = field(repr=False, default=None)

    @property
    def mean(self):
        """The mean per kept index (kept order); None without centering."""
        return self.kstats[:, 0].reshape(self.binding.stats_shape) if self.centered else None

    @property
    def rstd(self):
        """1 / sigma per kept index (kept order)."""
        return self.kstats[:, 2].reshape(self.binding.stats_shape)

    def host(self) -> np.ndarray:
        """kstats on the host (copied once from a GPU)."""
        if self._host is None:
            self._host = self.backend.to_host(self.kstats)
        return self._host

    @property
    def mu64(self) -> np.ndarray:
        """The mean in float64 (hi + lo), on the host, in the statistics' shape."""
        h = self.host()
        return (h[:, 0].astype(np.float64) + h[:, 1]).reshape(self.binding.stats_shape)

    @property
    def rstd64(self) -> np.ndarray:
        return self.host()[:, 2].astype(np.float64).reshape(self.binding.stats_shape)


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

    def _backend(self, x: Any, target: str | None):
        """The backend that owns x: NumPy -> cpu, CuPy -> cuda (target="cuda" runs NumPy
        arrays through the CUDA kernels on the CPU emulator, for testing)."""
        from ..runtime import select

        try:
            return select(x, target)
        except TypeError as e:
            raise CallError(f"{self.name}: {e}") from None

    def _check_x(self, x: Any, backend, what: str = "x"):
        if not backend.owns(x):
            raise CallError(f"{self.name}: {what} must be a {_kind(backend)} array, got {type(x).__name__}")
        dtype = backend.dtype(x)
        if dtype not in backend.dtypes:
            raise CallError(f"{self.name}: {what} has dtype {dtype}; the {backend.name} backend takes "
                            + " or ".join(backend.dtypes))
        return x

    def _check_param(self, name: str, p: Any, shape: tuple[int, ...], dtype: str, backend):
        if not backend.owns(p):
            raise CallError(f"{self.name}: {name} must be a {_kind(backend)} array, got {type(p).__name__}")
        if tuple(p.shape) != shape:
            raise CallError(f"{self.name}: {name} has shape {tuple(p.shape)}, expected {shape}")
        if backend.dtype(p) != dtype:
            raise CallError(f"{self.name}: {name} has dtype {backend.dtype(p)}, expected {dtype} (the dtype of x)")
        return backend.contiguous(p) if backend.strides(p) != _dense(p.shape) else p

    def _check_out(self, out: Any, like, backend, *inputs):
        if out is None:
            return backend.empty_like(like)
        if not backend.owns(out):
            raise CallError(f"{self.name}: out must be a {_kind(backend)} array, got {type(out).__name__}")
        if tuple(out.shape) != tuple(like.shape) or backend.dtype(out) != backend.dtype(like):
            raise CallError(f"{self.name}: out has shape {tuple(out.shape)} and dtype {backend.dtype(out)}, "
                            f"expected {tuple(like.shape)} and {backend.dtype(like)}")
        if not backend.writeable(out):
            raise CallError(f"{self.name}: out is read-only")
        if backend.strides(out) is None:
            raise CallError(f"{self.name}: out has strides {_bits_of(out).strides} that the kernels cannot write "
                            "(negative, zero or not a multiple of the item size)")
        for a in inputs:
            if backend.overlaps(out, a):
                raise CallError(f"{self.name}: out overlaps an input; pass a separate array")
        return out

    def _check_running(self, binding: Binding, running_mean: Any, running_var: Any, backend):
        spec = self.spec
        if running_mean is None and running_var is None:
            return None, None
        if spec.running is None:
            raise CallError(f"{self.name}: this spec has no running statistics")
        if running_mean is None or running_var is None:
            raise CallError(f"{self.name}: give both running_mean and running_var, or neither")
        for name, r in (("running_mean", running_mean), ("running_var", running_var)):
            if not backend.owns(r):
                raise CallError(f"{self.name}: {name} must be a {_kind(backend)} array, got {type(r).__name__}")
            if tuple(r.shape) != binding.running_shape:
                raise CallError(f"{self.name}: {name} has shape {tuple(r.shape)}, expected {binding.running_shape}")
            if backend.dtype(r) not in ("float32", "float64"):
                raise CallError(f"{self.name}: {name} has dtype {backend.dtype(r)}, expected float32 or float64")
            if not backend.writeable(r):
                raise CallError(f"{self.name}: {name} is read-only; running statistics are updated in place")
        return running_mean, running_var

    def _eps(self, eps: Any, dtype: str) -> float:
        if eps is None or eps is _SPEC_DEFAULT:
            return float(_machine_eps(dtype)) if self.spec.eps == "dtype" else float(self.spec.eps)
        eps = float(eps)
        if not math.isfinite(eps) or eps < 0:
            raise CallError(f"{self.name}: eps must be a finite number >= 0, got {eps}")
        return eps

    def binding(self, shape: tuple[int, ...], **sizes: Any) -> Binding:
        return bind(self.spec, shape, sizes)

    def _bind(self, shape: tuple[int, ...], sizes: dict[str, Any]) -> Binding:
        """bind(), remembered per (shape, sizes): calls repeat their shapes."""
        try:
            key = (tuple(shape), tuple(sorted((k, v if np.isscalar(v) else tuple(v)) for k, v in sizes.items())))
            hash(key)
        except TypeError:
            return bind(self.spec, tuple(shape), sizes)
        found = self._bindings.get(key)
        if found is None:
            found = self._bindings[key] = bind(self.spec, tuple(shape), sizes)
            if len(self._bindings) > 256:
                self._bindings.pop(next(iter(self._bindings)))
        return found

    def _plan(self, backend, binding: Binding, strides: dict[str, tuple[int, ...]], direction: Direction,
              dtype: str, has_w: bool, has_b: bool, reduce_by: str = "stats") -> Plan:
        """The backend's plan for a call, remembered per call structure (planning is pure)."""
        from ..plan import planner
        from ..runtime import cpu

        key = (backend.name, id(getattr(backend, "device", None)), id(binding), tuple(strides.items()), direction,
               dtype, has_w, has_b, reduce_by, cpu.threads(), planner.FORCE_PARTS)
        found = self._plans.get(key)
        if found is None or found.binding is not binding:
            found = self._plans[key] = backend.plan(binding, strides, direction, dtype, has_w, has_b, reduce_by)
            if len(self._plans) > 256:
                self._plans.pop(next(iter(self._plans)))
        return found

    def plan(self, x: np.ndarray | tuple[int, ...], *, direction: str = "forward", params: bool = True,
             strides: tuple[int, ...] | None = None, dtype: str | None = None, target: str = "cpu",
             **sizes: Any) -> Plan:
        """The plan a call would use, for an array `x` or a shape with element `strides`.

        The output (y or dx) and dy are taken dense in x's dimension order, as a call
        that allocates them would. Used by `normgen plan` and `normgen generate`.
        """
        from ..runtime import select
        from ..layouts import layout_strides, like_strides

        backend = select(None, target)
        if isinstance(x, np.ndarray):
            shape, dtype = x.shape, str(x.dtype)
            strides = backend.strides(x)
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
        return backend.plan(binding, arrays, Direction(direction), dtype, has_w, has_b)

    # ---- forward ----------------------------------------------------------------------
    def forward(self, x, *params, out=None, training: bool = True, running_mean=None, running_var=None,
                momentum: Any = _SPEC_DEFAULT, eps: Any = None, num_batches_tracked: Any = None,
                mean_weight=None, var_weight=None, target: str | None = None, process_group: Any = None,
                comm: Any = None, **kwargs) -> Forward:
        """Normalize x. Returns a Forward with y, mean and rstd (statistics in kept order).

        training=False with running statistics normalizes with them (evaluation mode).
        NumPy arrays run on the CPU, CuPy arrays on the GPU; target="cuda" runs NumPy
        arrays through the CUDA kernels on the CPU emulator (for testing).
        process_group (torch.distributed) or comm (mpi4py): x is this rank's shard of the
        reduced axes; statistics cover every rank's shard (see normgen.op.distributed), and
        so does the backward of this Forward.
        """
        spec = self.spec
        backend = self._backend(x, target)
        pvals = self._params(params, kwargs)
        sizes = self._sizes(kwargs)
        x = self._check_x(x, backend)
        dtype = backend.dtype(x)
        binding = self._bind(x.shape, sizes)
        checked = {n: self._check_param(n, p, binding.param_shape, dtype, backend) for n, p in pvals.items()}
        running_mean, running_var = self._check_running(binding, running_mean, running_var, backend)
        e = self._eps(eps, dtype)
        eval_mode = running_mean is not None and not training
        mix = self._check_mix(mean_weight, var_weight)
        factor = self._momentum(momentum, num_batches_tracked) if (running_mean is not None and training) else None
        y = self._check_out(out, x, backend, x)
        n = binding.group_size
        group = self._group(process_group, comm, eval_mode)
        if group is not None and binding.n_groups:
            return self._forward_across(group, backend, binding, x, y, checked, e, backend.stat_dtype(dtype),
                                        factor, running_mean, running_var, num_batches_tracked, sizes)
        if binding.n_groups == 0 or x.size == 0:
            if n == 0 and binding.n_groups:
                raise CallError(f"{self.name}: the reduced axes of input {tuple(x.shape)} have no elements "
                                f"(statistics over 0 values)")
            return self._empty_forward(x, y, binding, backend)
        if factor is not None and n == 1:
            raise CallError(f"{self.name}: expected more than 1 value per statistic when training "
                            f"(input {tuple(x.shape)} has 1); running variance needs n - 1 > 0")
        xk = x if backend.strides(x) is not None else backend.contiguous(x)
        w, b = self._affine(checked)
        plan = self._plan(backend, binding, {"x": backend.strides(xk), "y": backend.strides(y)}, Direction.FORWARD,
                          dtype, w is not None, b is not None)
        sdt = backend.stat_dtype(dtype)
        mix_info = None
        new_running = None
        if eval_mode and not spec.is_mixture:
            rstd = 1.0 / np.sqrt(_broadcast_running(binding, backend.to_host(running_var)) + e)
            kstats = backend.from_host(_kstats(_broadcast_running(binding, backend.to_host(running_mean)), rstd, sdt))
            backend.apply(plan, xk, y, w, b, kstats)
        elif not spec.is_mixture:
            moments, kstats = backend.train_forward(plan, xk, y, w, b, e,
                                                    lambda m: _kstats_of(spec, m, e, sdt, binding))
            if spec.scale is Scale.L2 and e == 0:
                rs = backend.to_host(kstats)[:, 2]
                if not np.isfinite(rs).all():
                    self._zero_norm(np.isinf(rs).reshape(binding.stats_shape))
            if factor is not None:
                m = backend.to_host(moments).reshape(binding.stats_shape + (3,))
                norm = st.normalizer(spec, m[..., 0], m[..., 1], m[..., 2], e)
                new_running = self._running(binding, norm, None, n, factor, running_mean, running_var, backend)
        else:
            m = backend.moments(plan, xk).reshape(binding.stats_shape + (3,))
            norm = st.normalizer(spec, m[..., 0], m[..., 1], m[..., 2], e)
            norm, mix_info = self._mix(binding, norm, mix, eval_mode, backend.to_host(running_mean)
                                       if running_mean is not None else None,
                                       backend.to_host(running_var) if running_var is not None else None, e)
            kstats = backend.from_host(_kstats(norm.mean, norm.rstd, sdt))
            backend.apply(plan, xk, y, w, b, kstats)
            if factor is not None:
                new_running = self._running(binding, norm, mix_info, n, factor, running_mean, running_var, backend)
        if new_running is not None:  # every kernel has run: now update in place, both or neither
            _commit_running(new_running, running_mean, running_var, num_batches_tracked, backend)
        return Forward(y=y, kstats=kstats, backend=backend, centered=spec.center is Center.MEAN, x=xk,
                       params=checked, sizes=sizes, binding=binding, eval_mode=eval_mode, eps=e, mix=mix_info)

    def _group(self, process_group: Any, comm: Any, eval_mode: bool):
        """The ranks to share statistics with (None: this process alone, or evaluation mode,
        whose statistics are the running ones: nothing to share)."""
        if process_group is None and comm is None:
            return None
        from .distributed import group_of

        group = group_of(process_group, comm)
        if self.spec.is_mixture:
            raise CallError(f"{self.name}: statistics across processes are not supported for mixtures (their "
                            "components keep different axes, so no single axis can be split across ranks)")
        return None if eval_mode else group

    def _forward_across(self, group, backend, binding: Binding, x, y, params: dict[str, Any], e: float, sdt,
                        factor: float | None, running_mean, running_var, num_batches_tracked, sizes) -> Forward:
        """Training forward over a shard: local moments -> every rank's merged -> local apply."""
        from .distributed import merge_moments

        spec = self.spec
        xk = x if backend.strides(x) is not None else backend.contiguous(x)
        w, b = self._affine(params)
        plan = None
        local = np.zeros((binding.n_groups, 3))  # a rank without elements contributes count 0
        if x.size:
            plan = self._plan(backend, binding, {"x": backend.strides(xk), "y": backend.strides(y)},
                              Direction.FORWARD, backend.dtype(x), w is not None, b is not None)
            local = backend.moments(plan, xk)
        moments = merge_moments(group, local, self.name)  # the same on every rank
        count = moments[:, 0]
        if np.any(count == 0):
            raise CallError(f"{self.name}: a statistics group has no elements on any rank of the process group")
        if factor is not None and np.any(count == 1):
            raise CallError(f"{self.name}: expected more than 1 value per statistic when training (the ranks of "
                            "the process group have 1 in all); running variance needs n - 1 > 0")
        kstats = _kstats_of(spec, moments, e, sdt, binding)
        if plan is not None:
            backend.apply(plan, xk, y, w, b, kstats)
        if factor is not None:
            shape = binding.stats_shape
            norm = st.normalizer(spec, *(moments[:, i].reshape(shape) for i in range(3)), e)
            new = self._running(binding, norm, None, count.reshape(shape), factor, running_mean, running_var,
                                backend)
            _commit_running(new, running_mean, running_var, num_batches_tracked, backend)
        return Forward(y=y, kstats=backend.from_host(kstats), backend=backend, centered=spec.center is Center.MEAN,
                       x=xk, params=params, sizes=sizes, binding=binding, eps=e, group=group, count=count)

    def _zero_norm(self, bad: np.ndarray) -> None:
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CallError(f"{self.name}: the group at kept index {where} has zero norm, so v / ||v|| is "
                        "undefined (eps = 0)")

    def _empty_forward(self, x, y, binding, backend) -> Forward:
        kstats = backend.from_host(np.zeros((0, 3), backend.stat_dtype(backend.dtype(x))))
        return Forward(y=y, kstats=kstats, backend=backend, centered=self.spec.center is Center.MEAN, x=x,
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
                 running_mean, running_var, backend):
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
        old_mean, old_var = backend.to_host(running_mean), backend.to_host(running_var)
        new_mean = st.running_update(old_mean, mean_b.reshape(old_mean.shape), factor)
        new_var = st.running_update(old_var, var_b.reshape(old_var.shape), factor)
        return new_mean.astype(old_mean.dtype), new_var.astype(old_var.dtype)

    # ---- backward ---------------------------------------------------------------------
    def backward(self, dy, fwd: Forward, *, out=None) -> Grads:
        """Gradients of sum(dy * y) for x and every parameter the forward call was given."""
        spec = self.spec
        backend = fwd.backend
        x = fwd.x
        dy = self._check_x(dy, backend, "dy")
        dtype = backend.dtype(x)
        if tuple(dy.shape) != tuple(x.shape) or backend.dtype(dy) != dtype:
            raise CallError(f"{self.name}: dy has shape {tuple(dy.shape)} and dtype {backend.dtype(dy)}, expected "
                            f"{tuple(x.shape)} and {dtype} (those of x)")
        dyk = dy if backend.strides(dy) is not None else backend.contiguous(dy)
        dx = self._check_out(out, x, backend, x, dy)
        binding = fwd.binding
        w, b = self._affine(fwd.params)
        grads: dict[str, Any] = {}
        if fwd.group is not None:
            return self._backward_across(fwd, backend, x, dyk, dx, w, b, dtype)
        if x.size == 0:
            dx[...] = 0
            return Grads(dx, self._param_grads(backend, binding, dtype, w, b, None, None))
        plan, extra = self._backward_plan(backend, binding, x, dyk, dx, dtype, w, b)
        kstats = fwd.kstats
        n = binding.group_size
        if not spec.is_mixture and not fwd.eval_mode:
            def coefficients(a, bsum):
                return np.stack(st.backward_coefficients(spec, n, fwd.rstd64.reshape(-1), a, bsum), axis=1)

            dw, db = backend.train_backward(plan, x, dyk, dx, w, kstats, coefficients, **extra)
        else:
            a, bsum, dw, db = backend.grad_sums(plan, x, dyk, w, kstats, **extra)
            rstd = fwd.rstd64.reshape(-1)
            if spec.is_mixture:
                shape = binding.stats_shape
                (c0, c1, c2), mix_grads = self._mix_backward(binding, fwd, a.reshape(shape), bsum.reshape(shape))
                grads.update(mix_grads)
                coef = np.stack([np.asarray(c).reshape(-1) for c in (c0, c1, c2)], axis=1)
            else:  # evaluation: the statistics are constants
                coef = np.stack([rstd, np.zeros_like(rstd), np.zeros_like(rstd)], axis=1)
            backend.grad_apply(plan, x, dyk, dx, w, kstats, coef)
        grads.update(self._param_grads(backend, binding, dtype, w, b, dw, db))
        return Grads(dx, grads)

    def _backward_across(self, fwd: Forward, backend, x, dy, dx, w, b, dtype: str) -> Grads:
        """Training backward over a shard: local sums -> every rank's total -> local apply.

        Parameter gradients are this rank's share (add them over the ranks when the
        parameters are replicated; they are exact when the parameters are sharded too)."""
        from .distributed import sum_ranks

        spec, binding = self.spec, fwd.binding
        sums = np.zeros((binding.n_groups, 2))
        dw = db = None
        plan = None
        if x.size:
            plan, extra = self._backward_plan(backend, binding, x, dy, dx, dtype, w, b)
            a, bsum, dw, db = backend.grad_sums(plan, x, dy, w, fwd.kstats, **extra)
            sums = np.stack([a, bsum], axis=1)
        total = sum_ranks(fwd.group, sums, self.name)
        coef = np.stack(st.backward_coefficients(spec, fwd.count, fwd.rstd64.reshape(-1), total[:, 0], total[:, 1]),
                        axis=1)
        if plan is not None:
            backend.grad_apply(plan, x, dy, dx, w, fwd.kstats, coef)
        return Grads(dx, self._param_grads(backend, binding, dtype, w, b, dw, db))

    def _affine(self, params: dict[str, Any]):
        """(weight, bias) among a call's parameters; None for those not given or not in the spec."""
        a = self.spec.affine
        return (params.get(a.weight) if a and a.weight else None), (params.get(a.bias) if a and a.bias else None)

    def _backward_plan(self, backend, binding: Binding, x, dy, dx, dtype: str, w, b):
        """The backward plan, and the backend's extra arguments: on CUDA, parameter gradients
        may need a second reduction, planned on demand."""
        strides = {"x": backend.strides(x), "dy": backend.strides(dy), "dx": backend.strides(dx)}
        has_w, has_b = w is not None, b is not None
        plan = self._plan(backend, binding, strides, Direction.BACKWARD, dtype, has_w, has_b)
        extra = {}
        if backend.name == "cuda":
            extra["param_plan"] = lambda: self._plan(backend, binding, strides, Direction.BACKWARD, dtype, has_w,
                                                     has_b, "params")
        return plan, extra

    def _param_grads(self, backend, binding: Binding, dtype: str, w, b, dw, db) -> dict[str, Any]:
        """Gradients of the given weight and bias, shaped like them, in their dtype (float32 for
        half types); None sums (no elements) are zeros."""
        pdt = backend.stat_dtype(dtype) if dtype in ("float16", "bfloat16") else np.dtype(dtype)
        a = self.spec.affine
        out = {}
        for name, p, g in ((a.weight if a else None, w, dw), (a.bias if a else None, b, db)):
            if p is not None:
                g = np.zeros(binding.param_shape) if g is None else np.asarray(g).reshape(binding.param_shape)
                out[name] = backend.from_host(g.astype(pdt))
        return out

    def _mix_backward(self, binding: Binding, fwd: Forward, a: np.ndarray, b: np.ndarray):
        """Chain rule through the Switchable Norm mix (see DESIGN.md and oracle.backward)."""
        info = fwd.mix
        rstd = fwd.rstd64
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


def _kind(backend) -> str:
    return "NumPy" if backend.name == "cpu" else "CuPy (or NumPy, with target='cuda')"


def _bits_of(a):
    return getattr(a, "bits", a)


def _dense(shape) -> tuple[int, ...]:
    out, s = [], 1
    for n in reversed(tuple(shape)):
        out.append(0 if n == 1 else s)
        s *= n
    return tuple(reversed(out))


def _machine_eps(dtype: str) -> float:
    return {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}.get(dtype) or float(np.finfo(np.dtype(dtype)).eps)


def _kstats(mean: np.ndarray, rstd: np.ndarray, sdt: np.dtype) -> np.ndarray:
    """[groups, 3]: (mean hi, mean lo, rstd) in the statistics dtype, from float64 values."""
    hi, lo = st.split_mean(np.asarray(mean, np.float64).reshape(-1), sdt)
    return np.stack([hi, lo, np.asarray(rstd, np.float64).reshape(-1).astype(sdt)], axis=1)


def _commit_running(new: tuple[np.ndarray, np.ndarray], running_mean, running_var, num_batches_tracked,
                    backend) -> None:
    """Assign new running statistics in place (after every kernel of the call has run)."""
    running_mean[...] = backend.from_host(new[0])
    running_var[...] = backend.from_host(new[1])
    if isinstance(num_batches_tracked, np.ndarray):
        num_batches_tracked += 1


def _kstats_of(spec: Spec, moments: np.ndarray, eps: float, sdt: np.dtype, binding: Binding) -> np.ndarray:
    norm = st.normalizer(spec, moments[:, 0], moments[:, 1], moments[:, 2], eps)
    return _kstats(norm.mean, norm.rstd, sdt)


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
    from ..spec.library import find_spec

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
