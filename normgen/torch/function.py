"""Any Op as a differentiable torch function: `normalize(op, x, params, ...)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import CallError
from ..op import Op, load
from .bridge import _array, _on_stream, _tensor

#: "use the spec's default momentum" (None already means a cumulative average)
_SPEC_MOMENTUM: Any = object()


class _Call:
    """One forward call's non-tensor arguments: the Op, the tensors' names (parameters, then a
    fused spec's extra inputs), the keywords, and what to keep for the backward."""

    def __init__(self, op: Op, names: tuple[str, ...], n_params: int, kwargs: dict[str, Any], save: str):
        self.op, self.names, self.n_params, self.kwargs, self.save = op, names, n_params, kwargs, save

    @property
    def keep(self) -> bool:
        """The spec returns its prologue h as a second output."""
        f = self.op.spec.fuse
        return f is not None and f.keep_prologue


class _NormFunction(torch.autograd.Function):
    """y (and a kept prologue h) = op(x, **params, **extras); the backward is `op.backward`
    (the generated backward kernels), with the gradient of h when h is returned."""

    @staticmethod
    def forward(ctx, call: _Call, x: Tensor, *tensors: Tensor):
        arrays = {name: _array(t, name) for name, t in zip(call.names, tensors)}
        with _on_stream(x):
            fwd = call.op.forward(_array(x, "input"), **arrays, **call.kwargs, save=call.save)
        ctx.call, ctx.fwd = call, fwd
        y = _tensor(fwd.y)
        h = _tensor(fwd.prologue) if call.keep else None
        # Saved so that autograd notices an in-place change before backward (fwd holds NumPy views
        # of the same memory, which autograd cannot watch): x and the extras, or y for save="y"
        # (then x is not kept at all), and h, which the backward reads when it is returned.
        kept = (y,) if call.save == "y" else (x,)
        ctx.save_for_backward(*kept, *tensors[:call.n_params] if call.save == "y" else tensors,
                              *((h,) if h is not None else ()))
        return (y, h) if h is not None else y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor, dh: Tensor | None = None):
        _ = ctx.saved_tensors  # raises if a saved input was modified in place since forward
        call = ctx.call
        with _on_stream(dy):
            grads = call.op.backward(_array(dy, "grad_output"), ctx.fwd,
                                     dprologue=_array(dh, "grad of the prologue") if dh is not None else None)
        need = ctx.needs_input_grad
        # an extra whose gradient is dx itself gets the same tensor, as torch's own add does
        made: dict[int, Tensor] = {}

        def tensor(a):
            return made.setdefault(id(a), _tensor(a))
        dx = tensor(grads.dx) if need[1] else None
        rest = [tensor(grads[n]) if need[2 + i] else None for i, n in enumerate(call.names)]
        return (None, dx, *rest)


def normalize(op: Op | str, input: Tensor, params: Mapping[str, Tensor | None] | None = None, *,
              extras: Mapping[str, Tensor] | None = None, running_mean: Tensor | None = None,
              running_var: Tensor | None = None, training: bool = True, momentum: float | None = _SPEC_MOMENTUM,
              eps: float | None = None, process_group: Any = None, comm: Any = None, save: str = "x",
              **sizes: Any) -> Tensor | tuple[Tensor, Tensor]:
    """Apply any normgen Op to a tensor, differentiably (the torch face of `Op.forward`).

    `params` maps the spec's parameter names (and `mean_weight`/`var_weight` for a mixture)
    to tensors; None entries are left out. `extras` maps a fused spec's extra inputs (say
    "residual") to tensors shaped like `input`. Returns y, or (y, h) when the spec keeps its
    prologue h (the new residual stream); gradients flow to every tensor, through h too. A
    quantized spec returns (q, scale) (and h), for inference: no gradient flows.
    Running statistics are updated in place when `training`; `training=False` with running
    statistics normalizes with them. `save="y"` keeps y instead of x for the backward (a spec
    without prologue or epilogue, with a weight without zeros): x is not held after forward.
    `process_group` (torch.distributed) or `comm` (mpi4py): `input` is this rank's shard of
    the reduced axes, and the statistics (forward and backward) cover every rank's shard.

    >>> y = normalize("group_norm", x, {"weight": w, "bias": b}, num_groups=4)
    >>> y, h = normalize("add_rms_norm", x, {"weight": w}, extras={"residual": r}, normalized_shape=(64,))
    """
    op = load(op)
    params = {n: p for n, p in (params or {}).items() if p is not None}
    extras = dict(extras or {})
    unknown = sorted(set(extras) - set(op.spec.extras))
    if unknown:
        raise CallError(f"{op.name}: unknown extra input(s) {', '.join(unknown)}; this spec takes "
                        f"{', '.join(op.spec.extras) or 'none'}")
    kwargs: dict[str, Any] = dict(sizes, training=training, eps=eps)
    if running_mean is not None or running_var is not None:
        kwargs["running_mean"] = None if running_mean is None else _array(running_mean, "running_mean")
        kwargs["running_var"] = None if running_var is None else _array(running_var, "running_var")
    if momentum is not _SPEC_MOMENTUM:
        kwargs["momentum"] = momentum
    if process_group is not None or comm is not None:
        kwargs.update(process_group=process_group, comm=comm)
    if op.spec.fuse is not None and op.spec.fuse.quantize is not None:
        return _quantized(op, input, {**params, **extras}, kwargs)
    call = _Call(op, tuple(params) + tuple(extras), len(params), kwargs, save)
    return _NormFunction.apply(call, input, *params.values(), *extras.values())


def _quantized(op: Op, input: Tensor, tensors: dict[str, Tensor], kwargs: dict[str, Any]) -> tuple[Tensor, ...]:
    """A quantized output has no gradient (like torch.quantize_per_tensor): (q, scale), and h when
    the spec keeps its prologue, computed outside autograd (inference)."""
    with _on_stream(input):
        fwd = op.forward(_array(input, "input"), **{n: _array(t, n) for n, t in tensors.items()}, **kwargs)
    out = (_tensor(fwd.y), _tensor(fwd.scale))
    return out + (_tensor(fwd.prologue),) if fwd.prologue is not None else out
