"""Checking a call's arguments: everything is validated before any kernel runs.

`check_forward` turns the arguments of `Op.forward` into a `Call`: the backend the arrays
belong to, the binding of x's shape, checked parameters, output, epsilon, running
statistics and their update factor, mixture logits and the process group. Every problem
is a `CallError` that names the argument and says what was expected and what came.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CallError
from ..plan.bind import Binding
from ..runtime import select
from ..runtime.arrays import BF16, from_bits, to_bits
from ..spec import Spec
from .distributed import Group, check_sync, group_of

#: "use the spec's default momentum" (None already means a cumulative average)
SPEC_DEFAULT: Any = object()
#: call arguments every op takes besides its parameters and sizes
CALL_ARGS = ("out", "eps", "training", "running_mean", "running_var", "momentum", "num_batches_tracked",
             "mean_weight", "var_weight", "target", "process_group", "comm", "sync", "save")
#: what a forward call keeps for its backward: x (and the extra inputs), or y (save="y")
SAVE = ("x", "y")
#: the half types: on the CPU their parameters may be float32 too (as PyTorch's CPU ops allow)
HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class Running:
    """A call's running statistics: updated in training (factor given), used in evaluation."""

    mean: Any
    var: Any
    num_batches_tracked: Any
    factor: float | None  # the update's weight of the batch statistics; None: not updated


@dataclass(frozen=True)
class Call:
    """A forward call whose arguments passed every check."""

    backend: Any
    x: Any  # as the kernels walk it (a contiguous copy of an x with negative strides)
    y: Any  # the output (out=, or new)
    params: dict[str, Any]  # the parameters given, by name
    weight: Any
    bias: Any
    sizes: dict[str, Any]
    binding: Binding
    dtype: str
    eps: float
    running: Running | None
    eval_mode: bool  # normalize with the running statistics
    mix: dict[str, np.ndarray] | None  # a mixture's logits (mean_weight, var_weight), float64
    group: Group | None  # the ranks that share the statistics
    sync: str = "allreduce"  # how statistics cross the ranks (op/distributed.py)
    extras: dict[str, Any] = field(default_factory=dict)  # a fused spec's extra inputs, by name
    prologue: Any = None  # h, written when the spec keeps its prologue
    qscale: Any = None  # a quantized output's scale per kept index (float32)
    save: str = "x"

    @property
    def stat_dtype(self) -> np.dtype:
        return self.backend.stat_dtype(self.dtype)


def check_forward(spec: Spec, bind: Callable[..., Binding], x: Any, params: tuple, kwargs: dict[str, Any], *,
                  out: Any = None, training: bool = True, running_mean: Any = None, running_var: Any = None,
                  momentum: Any = SPEC_DEFAULT, eps: Any = None, num_batches_tracked: Any = None,
                  mean_weight: Any = None, var_weight: Any = None, target: str | None = None,
                  process_group: Any = None, comm: Any = None, sync: str = "allreduce", save: str = "x") -> Call:
    """Every argument of a forward call, checked; `bind(shape, sizes)` binds x's shape."""
    name = spec.name
    backend = backend_of(name, x, target)
    pvals = _params(spec, params, kwargs)
    given = {e: kwargs.pop(e) for e in spec.extras if e in kwargs}
    sizes = _sizes(spec, kwargs)
    check_array(name, x, backend)
    dtype = backend.dtype(x)
    _check_cast(spec, dtype)
    binding = bind(tuple(x.shape), sizes)
    extras = {e: check_like(name, given.get(e), x, backend, e) for e in spec.extras}
    checked = {n: _param(name, n, p, binding.param_shape, dtype, backend) for n, p in pvals.items()}
    _check_save(spec, save, checked)
    running = _running(spec, binding, running_mean, running_var, backend, dtype)
    e = _eps(spec, eps, dtype)
    eval_mode = running is not None and not training
    mix = _mix(spec, mean_weight, var_weight)
    factor = _momentum(spec, momentum, num_batches_tracked) if (running is not None and training) else None
    fuse = spec.fuse
    quantize = fuse.quantize if fuse else None
    y = check_out(name, out, x, backend, x, *extras.values()) if quantize is None else \
        _quantized_out(name, quantize, out, x, backend)
    group = _group(spec, process_group, comm, eval_mode)
    sync = check_sync(sync, name)
    xk = x if backend.strides(x) is not None else backend.contiguous(x)
    a = spec.affine
    weight = checked.get(a.weight) if a and a.weight else None
    if weight is not None and spec.weight_offset:  # the kernels see the effective weight
        if dtype in HALF and backend.name == "cpu":  # (in float32, the dtype half-type kernels read it in)
            weight = backend.to_host(weight).astype(np.float32) + np.float32(spec.weight_offset)
        else:
            weight = _offset_weight(weight, spec.weight_offset, backend)
    return Call(backend=backend, x=xk, y=y, params=checked, sizes=sizes, binding=binding, dtype=dtype, eps=e,
                weight=weight, bias=checked.get(a.bias) if a and a.bias else None,
                running=None if running is None else Running(*running, num_batches_tracked, factor),
                eval_mode=eval_mode, mix=mix, group=group, sync=sync, extras=extras, save=save)


def _offset_weight(weight: Any, offset: float, backend) -> Any:
    """weight + offset in the weight's dtype (bfloat16, which has no array type, through float32:
    rounded once, like the other half type)."""
    if isinstance(weight, BF16):
        values = from_bits(backend.to_host(weight)) + np.float32(offset)
        return BF16(backend.from_host(to_bits(values)))
    return weight + backend.from_host(np.asarray(offset, dtype=weight.dtype))


def with_outputs(spec: Spec, call: Call) -> Call:
    """The call with a fused spec's other outputs allocated: h (a kept prologue, in x's layout)
    and a quantized output's scales. (A Forward rebuilt for a backward has none: op/saved.py.)"""
    fuse = spec.fuse
    if fuse is None or not (fuse.keep_prologue or fuse.quantize):
        return call
    be = call.backend
    return dataclasses.replace(
        call, prologue=be.empty_like(call.x) if fuse.keep_prologue else None,
        qscale=be.from_host(np.zeros(call.binding.stats_shape, np.float32)) if fuse.quantize else None)


def check_like(name: str, a: Any, x: Any, backend, what: str):
    """An array shaped like x, of x's dtype, in any layout (copied only when its strides cannot be walked)."""
    if a is None:
        raise CallError(f"{name}: missing extra input {what}= (an array shaped like x)")
    check_array(name, a, backend, what)
    if tuple(a.shape) != tuple(x.shape) or backend.dtype(a) != backend.dtype(x):
        raise CallError(f"{name}: {what} has shape {tuple(a.shape)} and dtype {backend.dtype(a)}, expected "
                        f"{tuple(x.shape)} and {backend.dtype(x)} (those of x)")
    return a if backend.strides(a) is not None else backend.contiguous(a)


def _check_save(spec: Spec, save: str, params: dict[str, Any]) -> None:
    if save not in SAVE:
        raise CallError(f"{spec.name}: save={save!r}; expected 'x' (keep x for the backward) or 'y' (keep y)")
    if save == "y":
        if spec.fuse is not None:
            raise CallError(f"{spec.name}: save='y' needs a spec without prologue, epilogue or quantization "
                            "(x_hat is rebuilt from y as (y - bias) / weight)")
        a = spec.affine
        if a is None or a.weight is None or a.weight not in params:
            raise CallError(f"{spec.name}: save='y' needs the weight (x_hat = (y - bias) / weight)")


#: the array type of a quantized output's codes: float8 e4m3 as its bits (NumPy and CuPy have no float8)
CODES = {"int8": np.int8, "float8_e4m3": np.uint8}


def _quantized_out(name: str, kind: str, out: Any, x: Any, backend):
    """The codes of a quantized spec's output (int8, or the uint8 bits of float8 e4m3): out=
    (checked), or a new array in x's layout."""
    if backend.name == "cpu" and kind != "int8":
        raise CallError(f"{name}: quantize = '{kind}' runs on CUDA only (the CPU backend quantizes to 'int8')")
    codes = np.dtype(CODES[kind])
    if out is None:
        return np.empty_like(x, dtype=codes) if backend.name == "cpu" else backend.empty_codes(x, codes)
    if not backend.owns(out) or out.dtype != codes or tuple(out.shape) != tuple(x.shape):
        raise CallError(f"{name}: out must be a {codes.name} array shaped like x {tuple(x.shape)} (the quantized "
                        f"output{', float8 e4m3 bits' if kind != 'int8' else ''})")
    if not backend.writeable(out) or backend.strides(out) is None:
        raise CallError(f"{name}: out cannot be written by the kernels (read-only, or strides they cannot walk)")
    return out


def backend_of(name: str, x: Any, target: str | None):
    """The backend that owns x: NumPy -> cpu, CuPy -> cuda (target="cuda" runs NumPy arrays
    through the CUDA kernels on the CPU emulator, for testing)."""
    try:
        return select(x, target)
    except TypeError as e:
        raise CallError(f"{name}: {e}") from None


def _kind(backend) -> str:
    return "NumPy" if backend.name == "cpu" else "CuPy (or NumPy, with target='cuda')"


def check_array(name: str, a: Any, backend, what: str = "x") -> None:
    """`a` is an array of the backend, of a dtype its kernels take."""
    if not backend.owns(a):
        raise CallError(f"{name}: {what} must be a {_kind(backend)} array, got {type(a).__name__}")
    _native(name, what, a)
    dtype = backend.dtype(a)
    if dtype not in backend.dtypes:
        raise CallError(f"{name}: {what} has dtype {dtype}; the {backend.name} backend takes "
                        + " or ".join(backend.dtypes))


def _native(name: str, what: str, a: Any) -> None:
    """The kernels read numbers in the machine's byte order."""
    dtype = getattr(getattr(a, "bits", a), "dtype", None)
    if dtype is not None and not dtype.isnative:
        raise CallError(f"{name}: {what} has byte order '{dtype.byteorder}' ({dtype.str}), not the machine's; "
                        f"convert it first, e.g. {what}.astype({what}.dtype.newbyteorder('='))")


def _params(spec: Spec, params: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Parameters given positionally after x or by name (None: not given)."""
    names = spec.param_names
    if len(params) > len(names):
        raise CallError(f"{spec.name}: takes {len(names)} positional parameter(s) after x "
                        f"({', '.join(names) or 'none'}), got {len(params)}")
    out = dict(zip(names, params))
    for n in names:
        if n in kwargs:
            if n in out:
                raise CallError(f"{spec.name}: parameter '{n}' given twice")
            out[n] = kwargs.pop(n)
    return {k: v for k, v in out.items() if v is not None}


def _sizes(spec: Spec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call-time sizes (num_groups=, normalized_shape=); anything else left is an error."""
    sizes = {arg: kwargs.pop(arg) for arg in spec.size_args if arg in kwargs}
    if kwargs:
        allowed = sorted(set(spec.param_names) | set(spec.size_args) | set(CALL_ARGS))
        raise CallError(f"{spec.name}: unexpected argument(s) {', '.join(sorted(kwargs))}; "
                        f"allowed: {', '.join(allowed)}")
    return sizes


def _check_cast(spec: Spec, dtype: str) -> None:
    """`[affine] cast = "before_weight"` changes only half-precision results, and no kernel
    rounds x_hat before the weight yet: refuse rather than return the other order's values."""
    if spec.affine is not None and spec.affine.cast == "before_weight" and dtype in ("float16", "bfloat16"):
        raise CallError(f"{spec.name}: cast = 'before_weight' with {dtype} input is not implemented by the kernels "
                        "yet (float32 and float64 are exact: there the cast changes nothing); use "
                        "cast = 'after_weight' or a float32 input")


def _param(name: str, pname: str, p: Any, shape: tuple[int, ...], dtype: str, backend):
    if not backend.owns(p):
        raise CallError(f"{name}: {pname} must be a {_kind(backend)} array, got {type(p).__name__}")
    if tuple(p.shape) != shape:
        raise CallError(f"{name}: {pname} has shape {tuple(p.shape)}, expected {shape}")
    _native(name, pname, p)
    pdt = backend.dtype(p)
    if pdt != dtype and not (dtype in HALF and pdt == "float32" and backend.name == "cpu"):
        also = " or float32" if dtype in HALF and backend.name == "cpu" else ""
        raise CallError(f"{name}: {pname} has dtype {pdt}, expected {dtype} (the dtype of x){also}")
    return p if backend.dense(p) else backend.contiguous(p)


def check_out(name: str, out: Any, like, backend, *inputs):
    """`out` (checked: shape, dtype, writable, walkable, no overlap with an input), or a new array."""
    if out is None:
        return backend.empty_like(like)
    if not backend.owns(out):
        raise CallError(f"{name}: out must be a {_kind(backend)} array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(like.shape) or backend.dtype(out) != backend.dtype(like):
        raise CallError(f"{name}: out has shape {tuple(out.shape)} and dtype {backend.dtype(out)}, "
                        f"expected {tuple(like.shape)} and {backend.dtype(like)}")
    if not backend.writeable(out):
        raise CallError(f"{name}: out is read-only")
    _native(name, "out", out)
    if backend.strides(out) is None:
        raise CallError(f"{name}: out has strides {getattr(out, 'bits', out).strides} that the kernels cannot write "
                        "(negative, zero or not a multiple of the item size)")
    for a in inputs:
        if backend.overlaps(out, a):
            raise CallError(f"{name}: out overlaps an input; pass a separate array")
    return out


def _running(spec: Spec, binding: Binding, running_mean: Any, running_var: Any, backend, dtype: str):
    if running_mean is None and running_var is None:
        return None
    if spec.running is None:
        raise CallError(f"{spec.name}: this spec has no running statistics")
    if running_mean is None or running_var is None:
        raise CallError(f"{spec.name}: give both running_mean and running_var, or neither")
    for rname, r in (("running_mean", running_mean), ("running_var", running_var)):
        if not backend.owns(r):
            raise CallError(f"{spec.name}: {rname} must be a {_kind(backend)} array, got {type(r).__name__}")
        if tuple(r.shape) != binding.running_shape:
            raise CallError(f"{spec.name}: {rname} has shape {tuple(r.shape)}, expected {binding.running_shape}")
        _native(spec.name, rname, r)
        # (a half-type module's buffers may be of x's dtype, as torch.nn's modules after .to(dtype))
        allowed = ("float32", "float64") + ((dtype,) if dtype in HALF and backend.name == "cpu" else ())
        if backend.dtype(r) not in allowed:
            raise CallError(f"{spec.name}: {rname} has dtype {backend.dtype(r)}, expected " + " or ".join(allowed))
        if not backend.writeable(r):
            raise CallError(f"{spec.name}: {rname} is read-only; running statistics are updated in place")
    return running_mean, running_var


def machine_eps(dtype: str) -> float:
    return {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}.get(dtype) or float(np.finfo(np.dtype(dtype)).eps)


def _number(spec: Spec, name: str, value: Any, also: str = "") -> float:
    """A call's eps or momentum, as given: PyTorch takes any number (a negative eps gives NaN
    where var + eps < 0, a momentum outside [0, 1] extrapolates), and so do normgen's calls."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        raise CallError(f"{spec.name}: {name} must be a number{also}, got {value!r}")
    return float(value)


def _eps(spec: Spec, eps: Any, dtype: str) -> float:
    if eps is None or eps is SPEC_DEFAULT:
        return machine_eps(dtype) if spec.eps == "dtype" else float(spec.eps)
    return _number(spec, "eps", eps)


def _momentum(spec: Spec, momentum: Any, num_batches_tracked: Any) -> float:
    if momentum is SPEC_DEFAULT:
        return spec.running.momentum
    if momentum is None:
        if num_batches_tracked is None:
            raise CallError(f"{spec.name}: momentum=None (cumulative average) needs num_batches_tracked")
        return 1.0 / (int(np.asarray(num_batches_tracked)) + 1)
    return _number(spec, "momentum", momentum, " or None")


def _mix(spec: Spec, mean_weight: Any, var_weight: Any) -> dict[str, np.ndarray] | None:
    if not spec.is_mixture:
        if mean_weight is not None or var_weight is not None:
            raise CallError(f"{spec.name}: mean_weight/var_weight are for mixture specs only")
        return None
    k = len(spec.kept)
    out = {}
    for wname, v in (("mean_weight", mean_weight), ("var_weight", var_weight)):
        if v is None:
            raise CallError(f"{spec.name}: a mixture needs {wname} (shape ({k},))")
        v = np.asarray(v)
        if v.shape != (k,):
            raise CallError(f"{spec.name}: {wname} has shape {v.shape}, expected ({k},)")
        out[wname] = v.astype(np.float64)
    return out


def _group(spec: Spec, process_group: Any, comm: Any, eval_mode: bool) -> Group | None:
    """The ranks to share statistics with (None: this process alone, or evaluation mode,
    whose statistics are the running ones: nothing to share)."""
    if process_group is None and comm is None:
        return None
    group = group_of(process_group, comm)
    if spec.is_mixture:
        raise CallError(f"{spec.name}: statistics across processes are not supported for mixtures (their "
                        "components keep different axes, so no single axis can be split across ranks)")
    return None if eval_mode else group
