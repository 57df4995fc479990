"""Any Op as a differentiable torch function: `normalize(op, x, params, ...)`, the one entry
that modules, functional and parametrizations call. It runs the custom ops of library.py:
`normgen::forward` (with autograd), then, in training with running statistics,
`normgen::update_running`. Two calls take another road: a quantized spec's forward (an
integer output has no gradient: the Op directly), and save="y" (save_y.py: an eager
autograd.Function that keeps y instead of x, which the ops' schemas do not express)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import CallError
from ..op import Op
from ..spec import Spec
from . import library
from .autograd import NormFunction
from .bridge import _array, _on_stream, _tensor
from .fake import extra_inputs, stats_count
from .kernels import forward_impl, forward_y_impl
from .registry import group_key, op_of, sizes_key, spec_key
from .save_y import SaveYFunction

#: "use the spec's default momentum" (None already means a cumulative average)
_SPEC_MOMENTUM: Any = object()
_MIX = ("mean_weight", "var_weight")


def normalize(op: Op | Spec | str, input: Tensor, params: Mapping[str, Tensor | None] | None = None, *,
              extras: Mapping[str, Tensor] | list[Tensor] | None = None, running_mean: Tensor | None = None,
              running_var: Tensor | None = None, training: bool = True, momentum: float | None = _SPEC_MOMENTUM,
              num_batches_tracked: Tensor | None = None, eps: float | None = None, process_group: Any = None,
              comm: Any = None, save: str = "x", **sizes: Any) -> Tensor | tuple[Tensor, ...]:
    """Apply any normgen Op to a tensor, differentiably (the torch face of `Op.forward`).

    `op`: a bundled name, a .toml path, a Spec, an Op, or the string id of a registered spec
    (registry.spec_key; modules pass it, which keeps this function cheap to trace under
    torch.compile). `params` maps the spec's parameter names (and `mean_weight`/`var_weight`
    for a mixture) to tensors; None entries are left out. `extras`: a fused spec's inputs
    shaped like x, by name ({"residual": r}) or in the spec's order. Running statistics are
    updated in place when `training` (momentum=None: a cumulative average over
    `num_batches_tracked` batches, this one included); `training=False` with running
    statistics normalizes with them.
    `process_group` (torch.distributed) or `comm` (mpi4py): `input` is this rank's shard of
    the reduced axes, and the statistics (forward and backward) cover every rank's shard.

    `save="y"`: the backward rebuilds x_hat = (y - bias) / weight, so x is not kept after the
    forward (a spec without prologue or epilogue, with a weight without zeros; eager only).

    Returns y, or (y, h) for a spec that keeps its prologue h (the new residual stream; its
    gradient joins the backward); a quantized spec returns (q, scale) (and h), without autograd.

    >>> y = normalize("group_norm", x, {"weight": w, "bias": b}, num_groups=4)
    >>> y, h = normalize("add_rms_norm", x, {"weight": w}, extras={"residual": r}, normalized_shape=(64,))
    """
    key = spec_key(op)
    the_op = op_of(key)
    spec = the_op.spec
    weight, bias, mix = _params(spec, params or {})
    if (not extras and spec.fuse is None and running_mean is None and running_var is None and process_group is None
            and comm is None and save == "x" and mix[0] is None and mix[1] is None
            and _inference_on_cpu(input, weight, bias)):
        # y alone (no statistics or moments to return), through the Op's remembered recipe
        return forward_y_impl(the_op, input, weight, bias, sizes, eps, training)
    extras = _extras(spec, extras)
    if spec.fuse is not None and spec.fuse.quantize is not None:
        return _quantized(op_of(key), input, params or {}, extras, training=training, eps=eps, **sizes)
    group = group_key(process_group, comm)
    update = training and (running_mean is not None or running_var is not None)
    if update:
        if spec.running is None:
            raise CallError(f"{spec.name}: this spec has no running statistics")
        if running_mean is None or running_var is None:
            raise CallError(f"{spec.name}: give both running_mean and running_var, or neither")
        if momentum is _SPEC_MOMENTUM:
            momentum = spec.running.momentum
        if not group and input.device.type == "cuda":  # CPU counts are checked from the moments
            _check_count(spec, input, sizes)
    tail = (key, sizes_key(sizes), eps, training, group)
    read = (None, None) if update else (running_mean, running_var)  # evaluation: normalized with them
    tensors = (input, weight, bias, *mix, *extras)
    if save == "y":
        y, moments = SaveYFunction.apply((op_of(key), read, tail), input, weight, bias, *mix)
        extra_out = []
    elif save != "x":
        raise CallError(f"{spec.name}: save={save!r}; expected 'x' (keep x for the backward) or 'y' (keep y)")
    elif (traced := _traced()) or not (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                                          for t in tensors)):
        # plain CPU/CUDA tensors outside any mode: the op's implementation, without the dispatcher's
        # Python round trip (the same function the dispatcher would run for these tensors)
        run = library.forward if traced or not _plain(input) else forward_impl
        y, _, moments, extra_out = run(input, weight, bias, extras, *read, *mix, *tail)
    else:  # eager with gradients, or torch.func: the autograd wrapper of the same op (autograd.py)
        y, _, moments, *extra_out = NormFunction.apply((*read, *tail), input, weight, bias, *mix, *extras)
    if update:
        library.update_running(moments, running_mean, running_var, num_batches_tracked, list(input.shape), key,
                               tail[1], momentum)
    return y if not extra_out else (y, *extra_out)


def _plain(t: Tensor) -> bool:
    """A tensor the dispatcher would hand straight to the op's CPU or CUDA implementation: not a
    subclass or functorch wrapper, not meta, no torch dispatch mode (the caller rules out tracers)."""
    return (type(t) is torch.Tensor and t.device.type in _DEVICES and not torch._C._len_torch_dispatch_stack()
            and not torch._C._functorch.is_functorch_wrapped_tensor(t))


_DEVICES = ("cpu", "cuda")
_CPU_FLOATS = (torch.float32, torch.float64)
_PLAIN_PARAMS = (torch.Tensor, torch.nn.Parameter)


def _inference_on_cpu(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """An eager call on plain CPU float tensors that autograd does not record (no_grad, or
    nothing requires grad): its statistics are not needed, only y (kernels.forward_y_impl).
    Anything else (tracers, subclasses, other dtypes, CUDA) takes the general path, which
    also says what is wrong with a bad argument."""
    # (is_cpu: t.device would build a torch.device object on every call)
    if type(input) is not torch.Tensor or not input.is_cpu or input.dtype not in _CPU_FLOATS:
        return False
    grad = torch.is_grad_enabled()
    needs = grad and input.requires_grad
    for p in (weight, bias):
        if p is not None:
            # (the exact types: isinstance on a Parameter runs its metaclass's Python check)
            if type(p) not in _PLAIN_PARAMS or not p.is_cpu or p.dtype not in _CPU_FLOATS:
                return False
            needs = needs or (grad and p.requires_grad)
    return not needs and not _traced() and _plain(input)


def _extras(spec: Spec, extras: Mapping[str, Tensor] | list[Tensor] | None) -> list[Tensor]:
    """A fused spec's extra inputs as the ops take them: a list in the spec's order."""
    names = extra_inputs(spec)
    if extras is None:
        extras = {}
    if not isinstance(extras, Mapping):
        return list(extras)
    unknown = sorted(set(extras) - set(names))
    if unknown:
        raise CallError(f"{spec.name}: unknown extra input(s) {', '.join(unknown)}; this spec takes "
                        f"{', '.join(names) or 'none'}")
    missing = [n for n in names if n not in extras]
    if missing:
        raise CallError(f"{spec.name}: missing extra input {missing[0]}= (a tensor shaped like the input)")
    return [extras[n] for n in names]


def _quantized(op: Op, input: Tensor, params: Mapping[str, Tensor | None], extras: list[Tensor],
               **kwargs: Any) -> tuple[Tensor, ...]:
    """A quantized output has no gradient (as torch.quantize_per_tensor): (q, scale), and h when
    the spec keeps its prologue, from the Op directly, outside autograd (inference)."""
    arrays = {n: _array(t, n) for n, t in params.items() if t is not None}
    arrays.update((n, _array(t, n)) for n, t in zip(extra_inputs(op.spec), extras))
    with _on_stream(input):
        fwd = op.forward(_array(input, "input"), **arrays, **kwargs)
    out = (_tensor(fwd.y), _tensor(fwd.scale))
    return out + (_tensor(fwd.prologue),) if fwd.prologue is not None else out


def _traced() -> bool:
    """Under torch.compile and torch.jit.trace the op itself is recorded: its registered
    autograd formula serves the compiled graph."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _params(spec: Spec, params: Mapping[str, Tensor | None]) -> tuple[Tensor | None, Tensor | None, tuple]:
    """(weight, bias, (mean_weight, var_weight)) from parameters given by their spec names."""
    a = spec.affine
    allowed = (*spec.param_names, *(_MIX if spec.is_mixture else ()))
    unknown = [n for n in params if n not in allowed]
    if unknown:
        raise CallError(f"{spec.name}: unknown parameter(s) {', '.join(unknown)}; this spec takes "
                        f"{', '.join(allowed) or 'none'}")
    weight = params.get(a.weight) if a and a.weight else None
    bias = params.get(a.bias) if a and a.bias else None
    return weight, bias, tuple(params.get(n) for n in _MIX)


def _check_count(spec: Spec, input: Tensor, sizes: dict[str, Any]) -> None:
    """Training with running statistics needs n > 1 values per statistic (unbiased variance)."""
    groups = stats_count(spec, tuple(input.shape), sizes)
    if groups and math.prod(input.shape) // groups == 1:
        raise CallError(f"{spec.name}: expected more than 1 value per statistic when training (input "
                        f"{tuple(input.shape)} has 1); running variance needs n - 1 > 0")
