"""save="y": a normalization whose backward reads y instead of x (DESIGN.md, Fusion; issue 13).

The backward needs x_hat; a plain spec with a weight without zeros can rebuild it from its
output, x_hat = (y - bias) / weight, so the forward need not keep its input: in a chain
where nothing else keeps it (conv -> norm -> ...), x's memory is free between the forward
and the backward, one activation per layer. The custom ops' schemas (library.py) pass x
to the backward, so this runs as an eager autograd.Function of its own around `Op.forward
(..., save="y")` and `Op.backward`; normalize() routes save="y" here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .bridge import _array, _on_stream, _tensor
from .kernels import _arrays, _grad, _host_or_device
from .registry import sizes_of


class SaveYFunction(torch.autograd.Function):
    """apply((op, (running_mean, running_var), (spec, sizes, eps, training, group)), x, weight,
    bias, mean_weight, var_weight) -> (y, moments); saves y, the parameters and the Forward
    (whose call keeps no x)."""

    @staticmethod
    def forward(ctx: Any, call: tuple, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                mean_weight: Tensor | None, var_weight: Tensor | None) -> tuple[Tensor, Tensor]:
        op, (running_mean, running_var), (_, sizes, eps, training, group) = call
        kwargs = _arrays(op.spec, weight, bias, [], running_mean, running_var, mean_weight, var_weight, group)
        with _on_stream(x):
            fwd = op.forward(_array(x, "input"), training=training, eps=eps, save="y", **kwargs, **sizes_of(sizes))
        y = _tensor(fwd.y)
        moments = (_host_or_device(fwd.moments, x.device).reshape(-1, 3) if fwd.moments is not None
                   else torch.zeros((0, 3), dtype=torch.float64, device=x.device))
        ctx.mark_non_differentiable(moments)
        ctx.op, ctx.fwd = op, fwd
        # y and the parameters: autograd then notices an in-place change of them before backward
        ctx.save_for_backward(y, weight, bias, mean_weight, var_weight)
        return y, moments

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor, _dmoments: Tensor) -> tuple:
        y, weight, bias, mean_weight, var_weight = ctx.saved_tensors
        with _on_stream(dy):
            grads = ctx.op.backward(_array(dy, "grad_output"), ctx.fwd)
        a = ctx.op.spec.affine
        given = ((a.weight if a else None, weight), (a.bias if a else None, bias), ("mean_weight", mean_weight),
                 ("var_weight", var_weight))
        dparams = [_grad(grads.params[name], p) if p is not None else None for name, p in given]
        return (None, _tensor(grads.dx), *dparams)
