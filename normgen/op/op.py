"""Op: a spec turned into a callable with a forward and a backward.

    >>> op = normgen.load("group_norm")
    >>> fwd = op.forward(x, weight, bias, num_groups=32)      # y, mean, rstd, and what backward needs
    >>> grads = op.backward(dy, fwd)                           # dx, weight, bias
    >>> y = op(x, weight, bias, num_groups=32)                 # just y

A forward call is a short pipeline: check every argument (args.py), plan (memoized per
call structure), compute the statistics and normalize (fused in one kernel, or moments ->
[ranks] -> [mixture] -> apply), then update the running statistics. They are assigned
only after every kernel succeeded, so a failing call leaves them as they were.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CallError
from ..plan.bind import Binding, bind
from ..plan.model import Direction, Options, Plan
from ..spec import Center, Scale, Spec, find_spec, load_spec
from . import device
from . import stats as st
from .args import CALL_ARGS, Call, backend_of, check_array, check_forward, check_out, with_outputs
from .distributed import merge_moments, on_device, sum_ranks
from .fast import recipe_for, remember
from .fused import backward_arrays, check_weight_nonzero, forward_arrays, strides_of
from .mixture import mix_backward, mix_forward
from .planning import plan_for
from .results import Forward, Grads, param_grads
from .running import broadcast_running, commit, running_normalizer, updated

#: the planner's options unless a caller gives others
DEFAULT_OPTIONS = Options()
#: plans and bindings remembered per op (calls repeat their shapes)
MEMO_SIZE = 256



class _Memo(OrderedDict):
    """A small least-recently-used dictionary."""

    def get_or_make(self, key: Any, make):
        try:
            found = self.get(key)
        except TypeError:  # an unhashable key: nothing to remember
            return make()
        if found is None:
            found = self[key] = make()
            if len(self) > MEMO_SIZE:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return found


class Op:
    """A compiled normalization op for one spec (kernels are built per plan, on first use)."""

    def __init__(self, spec: Spec, *, options: Options = DEFAULT_OPTIONS):
        self.spec = spec
        self.options = options
        self._bindings = _Memo()
        self._plans = _Memo()
        self._fast = _Memo()  # call structure -> Recipe (op/fast.py)

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"normgen.Op({self.spec})"

    def __call__(self, x, *params, **kwargs):
        """Just y: `op.forward(...).y`."""
        if type(x) is np.ndarray:
            recipe = recipe_for(self._fast, x, params, kwargs)
            if recipe is not None and recipe.usable(x, kwargs):
                return recipe.y(x, params, kwargs)
        return self.forward(x, *params, **kwargs).y

    # ---- forward ----------------------------------------------------------------------
    def forward(self, x, *params, **kwargs) -> Forward:
        """Normalize x. Returns a Forward with y, mean and rstd (statistics in kept order).

        Keywords: the spec's parameters and call-time sizes, and `out`, `eps`, `training`,
        `running_mean`/`running_var`/`momentum`/`num_batches_tracked` (updated in place when
        training; training=False normalizes with them), `mean_weight`/`var_weight` (mixtures),
        `process_group` (torch.distributed) or `comm` (mpi4py): x is this rank's shard of the
        reduced axes and the statistics cover every rank's shard (see op/distributed.py),
        and so does the backward of this Forward. NumPy arrays run on the CPU, CuPy arrays
        on the GPU; target="cuda" runs NumPy arrays through the CUDA kernels on the CPU
        emulator (for testing).
        """
        if type(x) is np.ndarray:
            recipe = recipe_for(self._fast, x, params, kwargs)
            if recipe is not None and recipe.usable(x, kwargs):
                return recipe.forward(x, params, kwargs)
            fwd = self._forward(x, params, dict(kwargs))
            remember(self, fwd, x, params, kwargs)
            return fwd
        return self._forward(x, params, kwargs)

    def _forward(self, x, params: tuple, kwargs: dict[str, Any]) -> Forward:
        """The general path: every argument checked, then plan, statistics, running update."""
        call_args = {k: kwargs.pop(k) for k in CALL_ARGS if k in kwargs}
        call = with_outputs(self.spec, check_forward(self.spec, self._bind, x, params, kwargs, **call_args))
        self._check_counts(call)
        if call.binding.n_groups == 0 or (call.x.size == 0 and call.group is None):
            return self._empty_forward(call)
        fx = forward_arrays(call)  # a fused spec's other arrays (op/fused.py)
        plan = self._plan(call, Direction.FORWARD, fx) if call.x.size else None
        kstats, moments, norm, mix, count = self._statistics(call, plan, fx)
        if call.running is not None and call.running.factor is not None:
            new = lambda: commit(self._new_running(call, moments, norm, mix, count), call.running, call.backend)
            device.update_running(call, moments, mix, on_host=new)
        if call.save == "y":  # the backward reads y: the Forward does not keep x alive
            call = dataclasses.replace(call, x=None)
        return Forward(y=call.y, kstats=kstats, call=call, centered=self.spec.center is Center.MEAN, mix=mix,
                       count=count if call.group is not None else None, moments=moments)

    def _check_counts(self, call: Call) -> None:
        b = call.binding
        if call.group is not None:  # counted over every rank by the statistics step
            return
        if call.running is not None and call.running.factor is not None and b.group_size == 1 and call.x.size:
            raise CallError(f"{self.name}: expected more than 1 value per statistic when training "
                            f"(input {tuple(call.x.shape)} has 1); running variance needs n - 1 > 0")

    def _statistics(self, call: Call, plan: Plan | None, fx: dict[str, Any]):
        """Statistics, and y normalized with them: (kstats, moments, Normalizer, Mix, count)."""
        spec, be = self.spec, call.backend
        n = call.binding.group_size
        kw = {"fx": fx} if fx else {}  # only fused calls pass their other arrays
        if call.eval_mode and not spec.is_mixture:  # the running statistics
            kstats = device.eval_statistics(call, plan, kw)
            if kstats is not None:  # on the device (CUDA): no copy of the running statistics to the host
                return kstats, None, None, None, n
            norm = running_normalizer(call.binding, be.to_host(call.running.mean), be.to_host(call.running.var),
                                      call.eps)
            kstats = be.from_host(st.kstats(norm, call.stat_dtype))
            be.apply(plan, call.x, call.y, call.weight, call.bias, kstats, **kw)
            return kstats, None, norm, None, n
        if call.group is None and not spec.is_mixture:  # this batch: fused, or parts merged
            moments, kstats = be.train_forward(plan, call.x, call.y, call.weight, call.bias, call.eps,
                                               lambda m: self._kstats(call, m), **kw)
            st.check_norms(self.spec, kstats, call)
            return kstats, moments, None, None, n
        if on_device(spec, call):  # moments, the collectives and the apply without the host (cuda_ranks.py)
            moments, kstats = device.ranks_statistics(self, call, plan, kw)
            return kstats, moments, None, None, None
        # moments first (merged over the ranks), then the statistics they give, then normalize
        moments = be.moments(plan, call.x, **kw) if plan is not None else np.zeros((call.binding.n_groups, 3))
        count = n
        if call.group is not None:
            shift = broadcast_running(call.binding, be.to_host(call.running.mean)) if call.running else None
            moments = merge_moments(call.group, moments, self.name, call.sync, shift)  # the same on every rank
            count = self._group_counts(call, moments[:, 0])
        norm = st.moments_normalizer(spec, moments, call.eps, call.binding.stats_shape)
        mix = None
        if spec.is_mixture:
            run = call.running
            norm, mix = mix_forward(spec, call.binding, norm, call.mix, call.eval_mode,
                                    be.to_host(run.mean) if run else None, be.to_host(run.var) if run else None,
                                    call.eps)
        kstats = st.kstats(norm, call.stat_dtype)
        st.check_norms(self.spec, kstats, call)
        kstats = be.from_host(kstats)
        if plan is not None:
            be.apply(plan, call.x, call.y, call.weight, call.bias, kstats, **kw)
        return kstats, moments, norm, mix, count

    def _kstats(self, call: Call, moments: np.ndarray) -> np.ndarray:
        norm = st.moments_normalizer(self.spec, moments, call.eps, call.binding.stats_shape)
        return st.kstats(norm, call.stat_dtype)

    def _group_counts(self, call: Call, count: np.ndarray) -> np.ndarray:
        if np.any(count == 0):
            raise CallError(f"{self.name}: a statistics group has no elements on any rank of the process group")
        if call.running is not None and call.running.factor is not None and np.any(count == 1):
            raise CallError(f"{self.name}: expected more than 1 value per statistic when training (the ranks of "
                            "the process group have 1 in all); running variance needs n - 1 > 0")
        return count.reshape(call.binding.stats_shape)

    def _new_running(self, call: Call, moments, norm, mix, count):
        """The running statistics after this batch (PyTorch's formulas); assigned by the caller."""
        spec, binding, be = self.spec, call.binding, call.backend
        if mix is not None:  # a mixture tracks the component whose kept set the running axes are
            k = mix.component(spec)
            keep = binding.component_dims[k]
            mean = np.broadcast_to(mix.comp_mu[k], binding.stats_shape)
            var = np.broadcast_to(mix.comp_var[k], binding.stats_shape)
            count = count * math.prod(s for d, s in enumerate(binding.stats_shape) if d not in keep)
        else:
            norm = norm or st.moments_normalizer(spec, be.to_host(moments), call.eps, binding.stats_shape)
            mean, var = norm.mean, norm.var
        return updated(binding, mean, var, count, call.running.factor, be.to_host(call.running.mean),
                       be.to_host(call.running.var))

    def _empty_forward(self, call: Call) -> Forward:
        """An empty input gives an empty output, as in PyTorch; the statistics of groups without
        elements are NaN, and running statistics are left as they were."""
        kstats = call.backend.from_host(np.full((call.binding.n_groups, 3), np.nan, call.stat_dtype))
        return Forward(y=call.y, kstats=kstats, call=call, centered=self.spec.center is Center.MEAN)

    # ---- backward ---------------------------------------------------------------------
    def backward(self, dy, fwd: Forward, *, dprologue=None, out=None, alias_grads: bool = True) -> Grads:
        """Gradients of sum(dy * y) (+ sum(dprologue * h) for a kept prologue h) for x, every
        parameter the forward call was given, and a fused spec's extra inputs (`grads[name]`).

        After a forward across ranks, the statistics' sums are added over the ranks too;
        parameter gradients are this rank's share (add them over the ranks when the
        parameters are replicated; they are exact when the parameters are sharded too).
        After a forward with save="y", x is not read: x_hat is rebuilt from y. An extra input
        whose gradient equals dx (x + residual) is given dx itself, unless `alias_grads=False`.
        """
        call = fwd.call
        be = call.backend
        x = fwd.y if call.save == "y" else call.x  # the kernels walk y in x's place then
        check_array(self.name, dy, be, "dy")
        if tuple(dy.shape) != tuple(x.shape) or be.dtype(dy) != call.dtype:
            raise CallError(f"{self.name}: dy has shape {tuple(dy.shape)} and dtype {be.dtype(dy)}, expected "
                            f"{tuple(x.shape)} and {call.dtype} (those of x)")
        dy = dy if be.strides(dy) is not None else be.contiguous(dy)
        fx, extra_grads = backward_arrays(self.spec, fwd, dprologue, alias_grads)
        dx = check_out(self.name, out, x, be, x, dy, *fx.values())
        grads: dict[str, Any] = {}
        extras = {e: extra_grads.get(e, dx) for e in self.spec.extras}
        if x.size == 0 and call.group is None:
            for a in (dx, *extra_grads.values()):
                a[...] = 0
            return Grads(dx, param_grads(self.spec, call, None, None), extras)
        if call.save == "y" and x.size:
            check_weight_nonzero(self.name, call)
        plan = self._plan(call, Direction.BACKWARD, fx, dy=dy, dx=dx, x=x) if x.size else None
        kw = {"fx": fx} if fx else {}
        if on_device(self.spec, call):  # the sums cross the ranks on the device (cuda_ranks.py)
            dw, db = be.ranks_backward(plan, x, dy, dx, call.weight, fwd.kstats, fwd.moments, call.group,
                                       call.binding.n_groups, self.spec.scale is not Scale.L2)
        elif call.group is None and fwd.mix is None and not call.eval_mode:  # training on this batch
            dw, db = be.train_backward(plan, x, dy, dx, call.weight, fwd.kstats,
                                       lambda a, b: self._coefficients(fwd, a, b, grads), **kw)
        else:
            if plan is not None:
                a, b, dw, db = be.grad_sums(plan, x, dy, call.weight, fwd.kstats, **kw)
            else:
                a = b = np.zeros(call.binding.n_groups)
                dw = db = None
            if call.group is not None:
                total = sum_ranks(call.group, np.stack([a, b], axis=1), self.name, call.sync)
                a, b = total[:, 0], total[:, 1]
            coef = self._coefficients(fwd, a, b, grads)
            if plan is not None:
                be.grad_apply(plan, x, dy, dx, call.weight, fwd.kstats, coef, **kw)
        grads.update(param_grads(self.spec, call, dw, db))
        return Grads(dx, grads, extras)

    def _coefficients(self, fwd: Forward, a: np.ndarray, b: np.ndarray, grads: dict[str, Any]) -> np.ndarray:
        """[groups, 3]: dx = c0·g + c1·(x − μ) + c2 per group (g = dy·weight)."""
        rstd = fwd.rstd64
        if fwd.mix is not None:
            shape = fwd.binding.stats_shape
            coef, mix_grads = mix_backward(self.spec, fwd.binding, fwd.mix, fwd.mu64, rstd, a.reshape(shape),
                                           b.reshape(shape))
            grads.update(mix_grads)
            return coef
        rstd = rstd.reshape(-1)
        if fwd.call.eval_mode:  # the statistics are constants
            return np.stack([rstd, np.zeros_like(rstd), np.zeros_like(rstd)], axis=1)
        count = fwd.count.reshape(-1) if fwd.count is not None else fwd.binding.group_size
        return np.stack(st.backward_coefficients(self.spec, count, rstd, a, b), axis=1)

    # ---- bindings and plans -----------------------------------------------------------
    def binding(self, shape: tuple[int, ...], **sizes: Any) -> Binding:
        return bind(self.spec, shape, sizes)

    def _bind(self, shape: tuple[int, ...], sizes: dict[str, Any]) -> Binding:
        """bind(), remembered per (shape, sizes)."""
        return self._bindings.get_or_make(_binding_key(shape, sizes), lambda: bind(self.spec, shape, sizes))

    def _plan(self, call: Call, direction: Direction, fx: dict[str, Any] | None = None, **arrays) -> Plan:
        """The backend's plan for a call, remembered per call structure (planning is pure);
        `fx`: a fused call's other arrays; `x=`: what the backward walks in x's place (y, for save="y")."""
        be = call.backend
        if direction is Direction.FORWARD:
            strides = {"x": be.strides(call.x), "y": be.strides(call.y)}
        else:
            x = arrays.get("x", call.x)
            strides = {"x": be.strides(x), "dy": be.strides(arrays["dy"]), "dx": be.strides(arrays["dx"])}
        strides.update(strides_of(be, fx or {}))
        has_w, has_b = call.weight is not None, call.bias is not None
        key = (be.plan_key(), _binding_key(call.binding.shape, call.sizes), tuple(strides.items()), direction,
               call.dtype, has_w, has_b)
        return self._plans.get_or_make(key, lambda: be.plan(call.binding, strides, direction, call.dtype, has_w,
                                                            has_b, self.options))

    def plan(self, x: np.ndarray | tuple[int, ...], **kwargs: Any) -> Plan:
        """The plan a call would use (op/planning.py `plan_for`): `normgen plan`, `normgen generate`."""
        return plan_for(self, x, **kwargs)


def _binding_key(shape: tuple[int, ...], sizes: dict[str, Any]) -> tuple | None:
    try:
        return tuple(shape), tuple(sorted((k, v if np.isscalar(v) else tuple(v)) for k, v in sizes.items()))
    except TypeError:
        return [shape]  # unhashable: not remembered


_BY_NAME: dict[str, Op] = {}  # bundled specs by name
_BY_PATH: dict[str, tuple[tuple[int, int], Op]] = {}  # spec files by path, with the (mtime, size) they had


def load(name_or_path: Any, *, options: Options | None = None) -> Op:
    """An Op for a bundled spec name ('group_norm'), a path to a spec file, or a Spec.

    A spec file is read again when it changed since it was last loaded. `options`
    (plan/model.py `Options`) gives a new Op that plans with them.
    """
    found = _BY_NAME.get(name_or_path) if type(name_or_path) is str and options is None else None
    if found is not None:
        return found
    if options is not None:
        return Op(load(name_or_path).spec, options=options)
    if isinstance(name_or_path, Spec):
        return Op(name_or_path)
    if isinstance(name_or_path, Op):
        return name_or_path
    key = str(name_or_path)
    path = Path(key)
    if not (key.endswith(".toml") or path.exists()):
        op = _BY_NAME[key] = Op(find_spec(key))
        return op
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None  # load_spec says what is wrong with the path
    cached = _BY_PATH.get(key)
    if cached is not None and stamp is not None and cached[0] == stamp:
        return cached[1]
    op = Op(load_spec(path))
    if stamp is not None:
        _BY_PATH[key] = (stamp, op)
    return op


__all__ = ["Forward", "Grads", "Op", "backend_of", "load"]
