"""Repeated calls: a forward whose structure the op has seen before runs without re-checks.

Inference and training call an op with the same shapes, dtypes, layouts and sizes again
and again. The first call goes through every check, the binding and the planner; if it
was an ordinary one (NumPy arrays on the CPU, batch statistics, nothing copied, no
running statistics, `out`, mixture or ranks), the op remembers a `Recipe` under the call's
structure: the types, dtypes, shapes and strides of the arrays and the values of the other
arguments. A later call with the same structure gets a new output and runs the kernels
the recipe names, since every check the general path made depends only on that structure.
This file is on the hot path of small calls: it is written to do little per call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..plan.model import Direction, Plan, Strategy
from ..runtime import CPU, alloc
from ..runtime.arrays import flat
from ..runtime.cpu import launcher
from ..runtime.threads import threads
from ..spec import Center
from .args import Call
from .results import Forward
from .stats import check_norms, checks_norms

_ndarray = np.ndarray
_SCALARS = frozenset({int, float, str, bool, type(None)})


def _frozen(v: Any) -> Any:
    """A hashable stand-in for an argument that is not an array: sequences as tuples, scalars
    as themselves; anything else raises TypeError (the call is not remembered)."""
    if type(v) in _SCALARS:
        return v
    if type(v) is tuple and all(type(e) is int for e in v):  # a shape: already what we need
        return v
    if type(v) is _ndarray:
        return (v.dtype, v.shape, v.strides)
    if isinstance(v, (tuple, list)):
        return tuple(_frozen(e) for e in v)
    if isinstance(v, (np.integer, np.floating)):
        return (type(v), v.item())
    raise TypeError(f"not remembered: {type(v).__name__}")


def call_key(x: _ndarray, params: tuple, kwargs: dict[str, Any], plan_key: Any) -> tuple:
    """The structure of a call (raises TypeError when an argument has none we can vouch for;
    an unhashable one raises TypeError when the key is looked up)."""
    key = [x.dtype, x.shape, x.strides, plan_key]
    for p in params:
        key.append((p.dtype, p.shape, p.strides) if type(p) is _ndarray else _frozen(p))
    for k, v in kwargs.items():
        if v is None:  # None is every call argument's default: the same call as leaving it out
            continue
        t = type(v)
        key.append(k)
        key.append((v.dtype, v.shape, v.strides) if t is _ndarray else v if (t in _SCALARS or t is tuple)
                   else _frozen(v))
    return tuple(key)


@dataclass(frozen=True)
class Recipe:
    """What a repeated call runs: its checked call (arrays replaced per call) and its plan."""

    call: Call  # the first call of this structure, checked, with its arrays left out (a recipe keeps no data)
    plan: Plan
    weight: tuple[str, int | str] | None  # where the weight comes from: ("pos", index) or ("kw", name)
    bias: tuple[str, int | str] | None
    names: tuple[str | None, str | None]  # the spec's weight and bias names
    centered: bool
    check_norms: Callable[[Any, Call], None] | None  # a zero-norm check, for specs that need one
    kstats_of: Callable[[Call, np.ndarray], np.ndarray]
    kernel: tuple | None = None  # small fused work: (compiled kernel, geometry), called directly
    out: bool = False  # the call writes into out= (checked per call: writable, apart from x)

    def usable(self, x: _ndarray, kwargs: dict[str, Any]) -> bool:
        """What the structure cannot vouch for: an out= that is read-only or overlaps x (the
        general path then says so)."""
        if not self.out:
            return True
        out = kwargs["out"]
        return out.flags.writeable and not np.may_share_memory(out, x)

    @staticmethod
    def direct(plan: Plan, x: _ndarray, check_norms, out: _ndarray | None = None) -> tuple | None:
        """What a recipe calls directly for small fused work on the calling thread (no norm
        check, output not pooled): (kernel, geometry, blocks, x dense, moments and kstats scratch).

        The kernel is the compiled specialization for these argument types (Numba's
        dispatcher would look it up again on every call): the recipe's key fixes the types.
        """
        la = plan.launch
        if not (la.fused and la.threads <= 1 and check_norms is None and x.nbytes < alloc.MIN_BYTES
                and plan.kernel.strategy is Strategy.ROWS):  # (columns kernels take scratch memory too)
            return None
        fn, _, g = launcher(plan, "forward_fused")
        n = 3 * plan.binding.n_groups
        moments, kstats = np.empty(n, np.float64), np.empty(n, x.dtype)
        types = tuple(fn.typeof_pyval(a) for a in (x.reshape(-1), x.reshape(-1), x[:1].reshape(-1),
                                                  x[:1].reshape(-1), moments, kstats, g, 1.0, 0, 0))
        compiled = fn.overloads.get(types)
        entry = compiled.entry_point if compiled is not None else fn
        dense = bool(x.flags.c_contiguous) and (out is None or bool(out.flags.c_contiguous))
        return entry, g, la.n_blocks, dense, moments, kstats

    def y(self, x: _ndarray, params: tuple, kwargs: dict[str, Any]) -> _ndarray:
        """The output only (what `op(x, ...)` and the functional API return)."""
        w = None if self.weight is None else params[self.weight[1]] if self.weight[0] == "pos" else kwargs[self.weight[1]]
        b = None if self.bias is None else params[self.bias[1]] if self.bias[0] == "pos" else kwargs[self.bias[1]]
        if self.kernel is None:
            return self._run(x, w, b, False, kwargs.get("out"))[0]
        # small work: the kernel, directly; its statistics go to scratch nobody reads (so
        # concurrent calls may share it), y is small (not pooled)
        fn, g, n_blocks, dense, moments, kstats = self.kernel
        y = kwargs["out"] if self.out else np.empty_like(x)
        fn(x.reshape(-1) if dense else flat(x), y.reshape(-1) if dense else flat(y),
           _ZERO[x.dtype] if w is None else w.reshape(-1), _ZERO[x.dtype] if b is None else b.reshape(-1),
           moments, kstats, g, self.call.eps, 0, n_blocks)
        return y

    def forward(self, x: _ndarray, params: tuple, kwargs: dict[str, Any]) -> Forward:
        y, kstats, call, moments = self._run(x, _pick(self.weight, params, kwargs), _pick(self.bias, params, kwargs),
                                             True, kwargs.get("out"))
        return Forward(y=y, kstats=kstats, call=call, centered=self.centered, moments=moments)

    def _run(self, x: _ndarray, w, b, want_call: bool, out: _ndarray | None):
        """(y, kstats, the call, moments)."""
        plan, eps = self.plan, self.call.eps
        if self.kernel is not None:  # small work: the kernel, directly (fresh statistics: they are returned)
            fn, g, n_blocks, dense, moments, kstats = self.kernel
            y = out if out is not None else np.empty_like(x)
            moments, kstats = np.empty_like(moments), np.empty_like(kstats)
            fn(x.reshape(-1) if dense else flat(x), y.reshape(-1) if dense else flat(y),
               _ZERO[x.dtype] if w is None else w.reshape(-1), _ZERO[x.dtype] if b is None else b.reshape(-1),
               moments, kstats, g, eps, 0, n_blocks)
            call = self._call(x, y, w, b) if want_call else None
            return y, kstats.reshape(-1, 3), call, moments.reshape(-1, 3)
        y = out if out is not None else CPU.empty_like(x)
        call = self._call(x, y, w, b)
        moments, kstats = CPU.train_forward(plan, x, y, w, b, eps, lambda m: self.kstats_of(call, m))
        if self.check_norms is not None:
            self.check_norms(kstats, call)
        return y, kstats, call, moments

    def _call(self, x: _ndarray, y: _ndarray, w, b) -> Call:
        t = self.call
        wn, bn = self.names
        params = {wn: w} if w is not None else {}
        if b is not None:
            params[bn] = b
        # (built field by field: dataclasses.replace inspects the fields on every call)
        return Call(backend=t.backend, x=x, y=y, params=params, weight=w, bias=b, sizes=t.sizes, binding=t.binding,
                    dtype=t.dtype, eps=t.eps, running=None, eval_mode=False, mix=None, group=None, sync=t.sync)


def template(call: Call) -> Call:
    """A checked call without its arrays, for a recipe to keep."""
    return dataclasses.replace(call, x=None, y=None, params={}, weight=None, bias=None)


def _pick(source: tuple[str, int | str] | None, params: tuple, kwargs: dict[str, Any]):
    if source is None:
        return None
    where, at = source
    return params[at] if where == "pos" else kwargs[at]


class _Zeros(dict):
    """A 1-element zero array per dtype: the stand-in for a parameter that was not given."""

    def __missing__(self, dtype):
        z = self[dtype] = np.zeros(1, dtype)  # (writable: a read-only array is another Numba type)
        return z


_ZERO = _Zeros()


def source(name: str | None, names: tuple[str, ...], params: tuple, kwargs: dict[str, Any]):
    """Where a parameter given to a call came from: ("pos", index) or ("kw", name); None if not given."""
    if name is None:
        return None
    i = names.index(name)
    if i < len(params):
        return ("pos", i) if params[i] is not None else None
    return ("kw", name) if kwargs.get(name) is not None else None


def recipe_for(memo, x: _ndarray, params: tuple, kwargs: dict[str, Any]) -> Recipe | None:
    """The recipe of a call whose structure an earlier, ordinary call had."""
    try:
        return memo.get(call_key(x, params, kwargs, threads()))
    except TypeError:  # an argument whose structure we cannot vouch for
        return None


def remember(op, fwd: Forward, x: _ndarray, params: tuple, kwargs: dict[str, Any]) -> None:
    """After the general path: leave a recipe in `op` if the fast path may repeat this call
    (nothing copied or special: see the module docstring)."""
    call, spec = fwd.call, op.spec
    names = spec.param_names
    wn, bn = (spec.affine.weight, spec.affine.bias) if spec.affine else (None, None)
    w, b = source(wn, names, params, kwargs), source(bn, names, params, kwargs)
    given = [n for n, p in zip(names, params) if p is not None] + [n for n in names[len(params):]
                                                                    if kwargs.get(n) is not None]
    # (a recipe runs y = f(x, weight, bias): no extra inputs or outputs, no weight offset, no save="y")
    out = kwargs.get("out")
    # (half types take the general path: their statistics and parameters are float32, not x's dtype)
    if not (call.backend is CPU and call.dtype in ("float32", "float64") and call.x is x
            and (out is None or call.y is out) and call.running is None
            and spec.fuse is None and not spec.weight_offset and call.save == "x"
            and call.mix is None and call.group is None and call.binding.n_groups > 0 and x.size > 0
            and len(given) == len(call.params) and call.weight is _pick(w, params, kwargs)
            and call.bias is _pick(b, params, kwargs)):
        return
    try:
        key = call_key(x, params, kwargs, threads())
    except TypeError:
        return
    check = (lambda kstats, c: check_norms(spec, kstats, c)) if checks_norms(spec, call.eps) else None
    plan = op._plan(call, Direction.FORWARD)
    op._fast.get_or_make(key, lambda: Recipe(template(call), plan, w, b, (wn, bn), spec.center is Center.MEAN,
                                             check, op._kstats, Recipe.direct(plan, x, check, out), out is not None))
