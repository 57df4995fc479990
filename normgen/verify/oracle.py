"""The NumPy float64 oracle: what every generated kernel is checked against.

Written from the spec semantics alone (DESIGN.md, "The math"): it imports the Spec data
model and nothing of the planner, the templates or the backends, and it computes in the
most direct way: expand x to one array dimension per spec axis (splitting "(G c)" and
spelling out variadic groups), reduce over the reduced axes with NumPy, broadcast back.
Its backward is the chain rule written out, and tests check it against central finite
differences of `forward`.

    >>> spec = load_spec("specs/layer_norm.toml")
    >>> out = forward(spec, x, {"weight": w, "bias": b}, sizes={"normalized_shape": (8,)})
    >>> out.y, out.mean, out.rstd
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CallError
from ..spec import Center, Scale, Spec
from . import npexpr


@dataclass
class Axes:
    """x expanded to one array dimension per axis: names[i] is dimension i's axis name."""

    names: list[str]  # plain names, split parts, and "group[k]" for variadic dims
    sizes: list[int]
    groups: dict[str, list[int]] = field(default_factory=dict)  # axis name -> its dimension indices

    def dims(self, axis_names: tuple[str, ...]) -> list[int]:
        return [d for a in axis_names for d in self.groups[a]]


@dataclass
class OracleForward:
    y: np.ndarray  # what is written: the epilogue's value (y itself without one), before quantization
    mean: np.ndarray  # statistics in kept order (the mixed ones for a mixture)
    rstd: np.ndarray
    running_mean: np.ndarray | None = None  # the updated running statistics, if any
    running_var: np.ndarray | None = None
    prologue: np.ndarray | None = None  # h, when the spec keeps its prologue
    q: np.ndarray | None = None  # quantized output (integers, as float64) ...
    scale: np.ndarray | None = None  # ... and its scale per kept index: out ≈ q * scale


def expand(spec: Spec, shape: tuple[int, ...], sizes: Mapping[str, Any]) -> Axes:
    """Name every dimension of x: split groups into their parts, variadic groups into dims."""
    items = spec.input.items
    given = dict(spec.sizes)
    ranks: dict[int, int] = {}
    for k, item in enumerate(items):
        if item.variadic and item.names[0] in given:
            ranks[k] = len(_shape_arg(sizes, given[item.names[0]]))
        elif not item.variadic:
            ranks[k] = 1
    free = [k for k, item in enumerate(items) if k not in ranks]
    fixed = sum(ranks.values())
    if len(shape) < fixed or (not free and len(shape) != fixed):
        raise CallError(f"oracle: x has {len(shape)} dims, spec '{spec.input}' needs "
                        f"{'at least ' if free else ''}{fixed}")
    for k in free:
        ranks[k] = len(shape) - fixed
    axes = Axes([], [])
    d = 0
    for k, item in enumerate(items):
        dims = shape[d: d + ranks[k]]
        d += ranks[k]
        if item.variadic:
            name = item.names[0]
            if name in given:
                want = tuple(_shape_arg(sizes, given[name]))
                if tuple(dims) != want:
                    raise CallError(f"oracle: trailing dims {tuple(dims)} != {name} {want}")
            axes.groups[name] = []
            for j, n in enumerate(dims):
                axes.groups[name].append(len(axes.names))
                axes.names.append(f"{name}[{j}]")
                axes.sizes.append(n)
        elif item.is_split:
            total = dims[0]
            part_sizes = {}
            for part in item.names:
                if part in given:
                    v = given[part]
                    part_sizes[part] = v if isinstance(v, int) else int(sizes[v])
            known = int(np.prod(list(part_sizes.values()))) if part_sizes else 1
            missing = [p for p in item.names if p not in part_sizes]
            if missing:
                if known == 0 or total % known:
                    raise CallError(f"oracle: {total} is not divisible by {known}")
                part_sizes[missing[0]] = total // known
            elif known != total:
                raise CallError(f"oracle: parts of {item} give {known}, dim is {total}")
            for part in item.names:
                axes.groups[part] = [len(axes.names)]
                axes.names.append(part)
                axes.sizes.append(part_sizes[part])
        else:
            axes.groups[item.names[0]] = [len(axes.names)]
            axes.names.append(item.names[0])
            axes.sizes.append(dims[0])
    return axes


def _shape_arg(sizes: Mapping[str, Any], arg: str) -> tuple[int, ...]:
    v = sizes[arg]
    return (int(v),) if np.isscalar(v) else tuple(int(s) for s in v)


def param_full(spec: Spec, axes: Axes, p: np.ndarray | None) -> np.ndarray | None:
    """An affine parameter broadcast to the expanded x (size-1 dims on non-affine axes)."""
    if p is None:
        return None
    names = spec.affine.axes.names
    dims = axes.dims(names)
    p = np.asarray(p, dtype=np.float64).reshape([axes.sizes[d] for d in dims])
    order = np.argsort(dims)  # parameter dims into x's dimension order
    p = p.transpose(order)
    shape = [1] * len(axes.sizes)
    for d in dims:
        shape[d] = axes.sizes[d]
    return p.reshape(shape)


def param_reduce(spec: Spec, axes: Axes, full: np.ndarray) -> np.ndarray:
    """Sum an expanded-x-shaped gradient down to a parameter's own shape."""
    dims = axes.dims(spec.affine.axes.names)
    other = tuple(d for d in range(len(axes.sizes)) if d not in dims)
    s = full.sum(axis=other, keepdims=True)
    s = s.reshape([axes.sizes[d] for d in sorted(dims)])
    # sorted x-order -> the parameter's own axis order
    inv = [sorted(dims).index(d) for d in dims]
    s = s.transpose(inv)
    return s.reshape(_param_shape(spec, axes))


def _param_shape(spec: Spec, axes: Axes) -> tuple[int, ...]:
    shape = []
    for item in spec.affine.axes.items:
        if item.variadic:
            shape.extend(axes.sizes[d] for d in axes.groups[item.names[0]])
        else:
            shape.append(int(np.prod([axes.sizes[axes.groups[n][0]] for n in item.names])))
    return tuple(shape)


def _reduced_dims(axes: Axes, kept: tuple[str, ...]) -> tuple[int, ...]:
    keep = set(axes.dims(kept))
    return tuple(d for d in range(len(axes.sizes)) if d not in keep)


def _to_kept_order(axes: Axes, kept: tuple[str, ...], full: np.ndarray) -> np.ndarray:
    """A keepdims statistic -> an array indexed by the kept axes in kept order."""
    dims = axes.dims(kept)
    red = _reduced_dims(axes, kept)
    s = full.reshape([n for d, n in enumerate(full.shape) if d not in red]) if red else full
    present = sorted(dims)
    return s.transpose([present.index(d) for d in dims]) if dims else s.reshape(())


def _from_kept_order(axes: Axes, kept: tuple[str, ...], stat: np.ndarray) -> np.ndarray:
    """An array indexed by kept axes (kept order) -> keepdims shape over expanded x."""
    dims = axes.dims(kept)
    stat = np.asarray(stat, dtype=np.float64).reshape([axes.sizes[d] for d in dims])
    present = sorted(dims)
    stat = stat.transpose([dims.index(d) for d in present])
    shape = [axes.sizes[d] if d in dims else 1 for d in range(len(axes.sizes))]
    return stat.reshape(shape)


@dataclass
class _Moments:
    """Keepdims mean/var of each component, the mixed ones, and what backward needs."""

    mu: np.ndarray
    var: np.ndarray  # of the centered values; for rms/l2: mean of squares (or sum for l2)
    rstd: np.ndarray
    comp_mu: list[np.ndarray]
    comp_var: list[np.ndarray]
    frozen: list[bool]  # component statistics taken from running stats (no gradient)
    mw: np.ndarray | None = None
    vw: np.ndarray | None = None


def round_to(v: np.ndarray, storage: str) -> np.ndarray:
    """float64 values rounded to the dtype named `storage` (nearest even), as float64. bfloat16
    (no NumPy dtype): float32 first, as PyTorch's float32 math does, then its top 16 bits."""
    if storage == "bfloat16":
        with np.errstate(over="ignore"):  # beyond float32's range is beyond bfloat16's: inf either way
            f = np.ascontiguousarray(v, dtype=np.float32)
        bits = f.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round half to even on bit 16
        out = np.where(np.isnan(f), f, rounded.astype(np.uint32).view(np.float32))
        return out.astype(np.float64)
    return np.asarray(v).astype(storage).astype(np.float64)


def _eps(spec: Spec, eps: float | None, dtype: np.dtype) -> float:
    if eps is not None:
        return float(eps)
    return float(np.finfo(dtype).eps) if spec.eps == "dtype" else float(spec.eps)


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(np.asarray(v, dtype=np.float64) - np.max(v))
    return e / e.sum()


def _moments(spec: Spec, axes: Axes, xf: np.ndarray, eps: float, use_running: bool,
             running_mean: np.ndarray | None, running_var: np.ndarray | None,
             mean_weight: Any, var_weight: Any) -> _Moments:
    comp_mu, comp_var, frozen = [], [], []
    for kept in spec.kept:
        red = _reduced_dims(axes, kept)
        is_running = spec.running is not None and set(kept) == set(spec.running.axes) and spec.is_mixture
        if spec.center is Center.MEAN:
            mu = xf.mean(axis=red, keepdims=True)
        else:
            mu = np.zeros([1 if d in red else n for d, n in enumerate(xf.shape)])
        sq = (xf - mu) ** 2
        var = sq.sum(axis=red, keepdims=True) if spec.scale is Scale.L2 else sq.mean(axis=red, keepdims=True)
        if use_running and (is_running or not spec.is_mixture):
            # running statistics are indexed by the running axes: broadcast over the other kept axes
            mu = np.broadcast_to(_from_kept_order(axes, spec.running.axes, running_mean), mu.shape)
            var = np.broadcast_to(_from_kept_order(axes, spec.running.axes, running_var), var.shape)
            frozen.append(True)
        else:
            frozen.append(False)
        comp_mu.append(mu)
        comp_var.append(var)
    if spec.is_mixture:
        mw, vw = _softmax(mean_weight), _softmax(var_weight)
        mu = sum(w * m for w, m in zip(mw, comp_mu))
        var = sum(w * v for w, v in zip(vw, comp_var))
    else:
        mw = vw = None
        mu, var = comp_mu[0], comp_var[0]
    if spec.scale is Scale.NONE:
        rstd = np.ones_like(var)
    else:
        rstd = 1.0 / np.sqrt(var + eps)
    return _Moments(mu, var, rstd, comp_mu, comp_var, frozen, mw, vw)


def forward(spec: Spec, x: np.ndarray, params: Mapping[str, Any] | None = None, *,
            sizes: Mapping[str, Any] | None = None, training: bool = True, running_mean: Any = None,
            running_var: Any = None, momentum: float | None | str = "spec", eps: float | None = None,
            num_batches_tracked: int = 0, mean_weight: Any = None, var_weight: Any = None,
            extras: Mapping[str, Any] | None = None, storage: str | None = None) -> OracleForward:
    """out = epilogue(affine(normalize(prologue(x)))) in float64, plus the statistics and
    updated running stats (and h, and the quantized output, when the spec asks for them).

    `training=False` with running statistics normalizes with them (evaluation). `extras`
    are a fused spec's extra inputs, by name. `storage`: the dtype the caller's x is stored
    in ("bfloat16" has no NumPy dtype: pass its values as float32 or float64 and name it
    here); with `[affine] cast = "before_weight"` x_hat is rounded to it before the weight.
    """
    fuse = spec.fuse
    env = {k: np.asarray(v, dtype=np.float64) for k, v in (extras or {}).items()}
    h = _prologue(spec, x, env)
    out = _normalize(spec, h, x.dtype, params, sizes=sizes, training=training, running_mean=running_mean,
                     running_var=running_var, momentum=momentum, eps=eps, num_batches_tracked=num_batches_tracked,
                     mean_weight=mean_weight, var_weight=var_weight, storage=storage or np.dtype(x.dtype).name)
    if fuse is None:
        return out
    if fuse.keep_prologue:
        out.prologue = h
    if fuse.epilogue is not None:
        out.y = npexpr.value(fuse.epilogue, {**env, "y": out.y})
    if fuse.quantize is not None:
        out.q, out.scale = _quantize(spec, out.y, dict(sizes or {}), fuse.quantize)
    return out


#: the largest magnitude of each quantized type
QMAX = {"int8": 127.0, "float8_e4m3": 448.0}


def _prologue(spec: Spec, x: np.ndarray, env: dict[str, np.ndarray]) -> np.ndarray:
    """h = prologue(x, extras) (x itself without a prologue), in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    if spec.fuse is None or spec.fuse.prologue is None:
        return x64
    return npexpr.value(spec.fuse.prologue, {**env, "x": x64})


def _quantize(spec: Spec, out: np.ndarray, sizes: dict[str, Any], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per kept index: scale = max|out| / QMAX; q = round(out / scale), clamped (int8: to ±127, ties
    to even). A group of zeros has scale 0 and q 0. float8: q is out / scale rounded to e4m3."""
    axes = expand(spec, out.shape, sizes)
    of = out.reshape(axes.sizes)
    red = _reduced_dims(axes, spec.kept_axes)
    amax = np.abs(of).max(axis=red, keepdims=True) if red else np.abs(of)
    scale = amax / QMAX[kind]
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(scale > 0, of / np.where(scale > 0, scale, 1.0), 0.0)
    q = np.clip(np.rint(v), -127, 127) if kind == "int8" else _e4m3(v)
    return q.reshape(out.shape), _to_kept_order(axes, spec.kept_axes, scale)


def _e4m3(v: np.ndarray) -> np.ndarray:
    """Round to the nearest float8 e4m3 value (3 mantissa bits, min normal 2^-6), saturating at 448."""
    v = np.clip(v, -448.0, 448.0)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.maximum(np.abs(v), 2.0 ** -9)))
    step = 2.0 ** (np.maximum(e, -6.0) - 3.0)
    return np.rint(v / step) * step


def _normalize(spec: Spec, x: np.ndarray, dtype: np.dtype, params: Mapping[str, Any] | None = None, *,
               sizes: Mapping[str, Any] | None = None, training: bool = True, running_mean: Any = None,
               running_var: Any = None, momentum: float | None | str = "spec", eps: float | None = None,
               num_batches_tracked: int = 0, mean_weight: Any = None, var_weight: Any = None,
               storage: str | None = None) -> OracleForward:
    """y = affine(normalize(x)) (x is h for a fused spec); `dtype` is the input's, for eps = "dtype";
    `storage` names it for the rounding of `[affine] cast = "before_weight"` (None: no rounding)."""
    params = dict(params or {})
    sizes = dict(sizes or {})
    axes = expand(spec, x.shape, sizes)
    xf = np.asarray(x, dtype=np.float64).reshape(axes.sizes)
    e = _eps(spec, eps, dtype)
    has_running = spec.running is not None and running_mean is not None
    use_running = has_running and not training
    m = _moments(spec, axes, xf, e, use_running, running_mean, running_var, mean_weight, var_weight)
    if spec.scale is Scale.L2 and e == 0 and not use_running and np.any(m.var == 0):
        raise CallError("oracle: a group has zero norm")
    xhat = (xf - m.mu) * m.rstd
    y = xhat
    if spec.affine:
        w = param_full(spec, axes, params.get(spec.affine.weight) if spec.affine.weight else None)
        b = param_full(spec, axes, params.get(spec.affine.bias) if spec.affine.bias else None)
        if w is not None:
            if spec.affine.cast == "before_weight" and storage is not None:
                y = round_to(y, storage)  # Llama: x_hat is cast to the input dtype, then weighted
            y = y * (w + spec.weight_offset)
        if b is not None:
            y = y + b
    kept = spec.kept_axes
    out = OracleForward(y.reshape(x.shape), _to_kept_order(axes, kept, m.mu), _to_kept_order(axes, kept, m.rstd))
    if has_running and training:
        mom = spec.running.momentum if momentum == "spec" else momentum
        factor = 1.0 / (num_batches_tracked + 1) if mom is None else float(mom)
        run_kept = next(k for k in spec.kept if set(k) == set(spec.running.axes)) if spec.is_mixture else kept
        idx = spec.kept.index(run_kept)
        n = xf.size / m.comp_mu[idx].size
        mean_k = _to_kept_order(axes, run_kept, m.comp_mu[idx])
        var_k = _to_kept_order(axes, run_kept, m.comp_var[idx]) * n / (n - 1)
        # average over kept axes that the running statistics do not index (InstanceNorm: N)
        avg = tuple(i for i, a in enumerate(_expand_names(axes, run_kept)) if a not in spec.running.axes)
        target = _expand_names(axes, run_kept)
        keep_order = [target.index(a) for a in _expand_names(axes, spec.running.axes)]
        mean_k, var_k = mean_k.mean(axis=avg), var_k.mean(axis=avg)
        rest = [i for i in range(len(target)) if i not in avg]
        perm = [rest.index(k) for k in keep_order]
        mean_k, var_k = mean_k.transpose(perm), var_k.transpose(perm)
        rm = np.asarray(running_mean, dtype=np.float64)
        rv = np.asarray(running_var, dtype=np.float64)
        out.running_mean = (1 - factor) * rm + factor * mean_k.reshape(rm.shape)
        out.running_var = (1 - factor) * rv + factor * var_k.reshape(rv.shape)
    return out


def _expand_names(axes: Axes, names: tuple[str, ...]) -> list[str]:
    """Kept-order names with variadic groups spelled out per dimension."""
    return [axes.names[d] for d in axes.dims(names)]


def backward(spec: Spec, dy: np.ndarray, x: np.ndarray, params: Mapping[str, Any] | None = None, *,
             sizes: Mapping[str, Any] | None = None, training: bool = True, running_mean: Any = None,
             running_var: Any = None, eps: float | None = None, mean_weight: Any = None,
             var_weight: Any = None, extras: Mapping[str, Any] | None = None,
             dprologue: Any = None) -> dict[str, np.ndarray]:
    """Gradients of sum(dy * out) (+ sum(dprologue * h) when given) with respect to x, every
    parameter and every extra input, in float64 (DESIGN.md, "Fusion": the chain rule through
    the epilogue, the normalization and the prologue).

    Returns {"x": dx, <weight name>: ..., <bias name>: ..., "mean_weight": ..., "var_weight": ...,
    <extra name>: ...}.
    """
    fuse = spec.fuse
    env = {k: np.asarray(v, dtype=np.float64) for k, v in (extras or {}).items()}
    h = _prologue(spec, x, env)
    stats = {"sizes": sizes, "training": training, "running_mean": running_mean, "running_var": running_var,
             "eps": eps, "mean_weight": mean_weight, "var_weight": var_weight}
    d_out = np.asarray(dy, dtype=np.float64)
    grads: dict[str, np.ndarray] = {}
    if fuse is not None and fuse.epilogue is not None:
        kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in stats.items()}
        y = _normalize(spec, h, x.dtype, params, **kw).y  # y before the epilogue
        e_env = {**env, "y": y}
        for name in fuse.epilogue_inputs:
            grads[name] = d_out * npexpr.grad(fuse.epilogue, e_env, name)
        d_out = d_out * npexpr.grad(fuse.epilogue, e_env, "y")
    grads.update(_backward_core(spec, d_out, h, x.dtype, params, **stats))
    if fuse is not None and fuse.prologue is not None:
        dh = grads["x"] + (np.asarray(dprologue, dtype=np.float64) if dprologue is not None else 0.0)
        p_env = {**env, "x": np.asarray(x, dtype=np.float64)}
        grads["x"] = dh * npexpr.grad(fuse.prologue, p_env, "x")
        for name in fuse.prologue_inputs:
            grads[name] = grads.get(name, 0.0) + dh * npexpr.grad(fuse.prologue, p_env, name)
    return grads


def _backward_core(spec: Spec, dy: np.ndarray, x: np.ndarray, dtype: np.dtype,
                   params: Mapping[str, Any] | None = None, *, sizes: Mapping[str, Any] | None = None,
                   training: bool = True, running_mean: Any = None, running_var: Any = None,
                   eps: float | None = None, mean_weight: Any = None, var_weight: Any = None) -> dict[str, np.ndarray]:
    """The normalization's gradients: dy is the gradient of y (before any epilogue), x is h."""
    params = dict(params or {})
    sizes = dict(sizes or {})
    axes = expand(spec, x.shape, sizes)
    xf = np.asarray(x, dtype=np.float64).reshape(axes.sizes)
    dyf = np.asarray(dy, dtype=np.float64).reshape(axes.sizes)
    e = _eps(spec, eps, dtype)
    use_running = spec.running is not None and running_mean is not None and not training
    m = _moments(spec, axes, xf, e, use_running, running_mean, running_var, mean_weight, var_weight)
    xhat = (xf - m.mu) * m.rstd
    grads: dict[str, np.ndarray] = {}
    g = dyf
    if spec.affine and spec.affine.weight:
        w = param_full(spec, axes, params.get(spec.affine.weight))
        if w is not None:
            g = dyf * (w + spec.weight_offset)
            grads[spec.affine.weight] = param_reduce(spec, axes, dyf * xhat)
    if spec.affine and spec.affine.bias and params.get(spec.affine.bias) is not None:
        grads[spec.affine.bias] = param_reduce(spec, axes, dyf)

    # y_hat = (x - mu) * (var + eps)^(-1/2): gradients of the loss w.r.t. mu and var per finest group
    red0 = _reduced_dims(axes, spec.kept_axes)
    d_mu = -(g * m.rstd).sum(axis=red0, keepdims=True)
    if spec.scale is Scale.NONE:
        d_var = np.zeros_like(d_mu)
    else:
        d_var = -0.5 * (g * xhat).sum(axis=red0, keepdims=True) * m.rstd ** 2
    dx = g * m.rstd
    d_mw = np.zeros(len(spec.kept))
    d_vw = np.zeros(len(spec.kept))
    for k, kept in enumerate(spec.kept):
        redk = _reduced_dims(axes, kept)
        extra = tuple(d for d in redk if d not in red0)  # finest groups that share component k's stats
        mw = m.mw[k] if spec.is_mixture else 1.0
        vw = m.vw[k] if spec.is_mixture else 1.0
        dmu_k = mw * d_mu.sum(axis=extra, keepdims=True)
        dvar_k = vw * d_var.sum(axis=extra, keepdims=True)
        if spec.is_mixture:
            d_mw[k] = float((d_mu * m.comp_mu[k]).sum())
            d_vw[k] = float((d_var * m.comp_var[k]).sum())
        if m.frozen[k]:
            continue
        count = xf.size / m.comp_mu[k].size
        if spec.center is Center.MEAN:
            dx = dx + dmu_k / count
        if spec.scale is not Scale.NONE:
            per = 1.0 if spec.scale is Scale.L2 else 1.0 / count
            dx = dx + dvar_k * 2.0 * (xf - m.comp_mu[k]) * per
    grads["x"] = dx.reshape(x.shape)
    if spec.is_mixture:
        grads["mean_weight"] = m.mw * (d_mw - np.dot(m.mw, d_mw))
        grads["var_weight"] = m.vw * (d_vw - np.dot(m.vw, d_vw))
    return grads
