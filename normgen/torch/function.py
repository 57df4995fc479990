"""Any Op as a differentiable torch function: `normalize(op, x, params, ...)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..op import Op, load
from .bridge import _array, _on_stream, _tensor

#: "use the spec's default momentum" (None already means a cumulative average)
_SPEC_MOMENTUM: Any = object()


class _Call:
    """One forward call's non-tensor arguments: the Op, the parameter names, the keywords."""

    def __init__(self, op: Op, names: tuple[str, ...], kwargs: dict[str, Any]):
        self.op, self.names, self.kwargs = op, names, kwargs


class _NormFunction(torch.autograd.Function):
    """y = op(x, **params); the backward is `op.backward` (the generated backward kernels)."""

    @staticmethod
    def forward(ctx, call: _Call, x: Tensor, *params: Tensor) -> Tensor:
        arrays = {name: _array(p, name) for name, p in zip(call.names, params)}
        with _on_stream(x):
            fwd = call.op.forward(_array(x, "input"), **arrays, **call.kwargs)
        ctx.call, ctx.fwd = call, fwd
        # Saved so that autograd notices an in-place change of x or a parameter before backward:
        # fwd holds NumPy views of the same memory, which autograd cannot watch.
        ctx.save_for_backward(x, *params)
        return _tensor(fwd.y)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        _ = ctx.saved_tensors  # raises if a saved input was modified in place since forward
        with _on_stream(dy):
            grads = ctx.call.op.backward(_array(dy, "grad_output"), ctx.fwd)
        need = ctx.needs_input_grad
        dx = _tensor(grads.dx) if need[1] else None
        dparams = [_tensor(grads.params[n]) if need[2 + i] else None for i, n in enumerate(ctx.call.names)]
        return (None, dx, *dparams)


def normalize(op: Op | str, input: Tensor, params: Mapping[str, Tensor | None] | None = None, *,
              running_mean: Tensor | None = None, running_var: Tensor | None = None, training: bool = True,
              momentum: float | None = _SPEC_MOMENTUM, eps: float | None = None, process_group: Any = None,
              comm: Any = None, **sizes: Any) -> Tensor:
    """Apply any normgen Op to a tensor, differentiably (the torch face of `Op.forward`).

    `params` maps the spec's parameter names (and `mean_weight`/`var_weight` for a mixture)
    to tensors; None entries are left out. Running statistics are updated in place when
    `training`; `training=False` with running statistics normalizes with them.
    `process_group` (torch.distributed) or `comm` (mpi4py): `input` is this rank's shard of
    the reduced axes, and the statistics (forward and backward) cover every rank's shard.

    >>> y = normalize("group_norm", x, {"weight": w, "bias": b}, num_groups=4)
    """
    op = load(op)
    params = {n: p for n, p in (params or {}).items() if p is not None}
    kwargs: dict[str, Any] = dict(sizes, training=training, eps=eps)
    if running_mean is not None or running_var is not None:
        kwargs["running_mean"] = None if running_mean is None else _array(running_mean, "running_mean")
        kwargs["running_var"] = None if running_var is None else _array(running_var, "running_var")
    if momentum is not _SPEC_MOMENTUM:
        kwargs["momentum"] = momentum
    if process_group is not None or comm is not None:
        kwargs.update(process_group=process_group, comm=comm)
    return _NormFunction.apply(_Call(op, tuple(params), kwargs), input, *params.values())
