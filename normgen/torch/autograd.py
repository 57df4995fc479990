"""Autograd for `normgen::forward`: what the forward saves (`setup_context`) and the backward
that runs `normgen::backward` on it, registered with torch.library.register_autograd
(library.py) and shared with the eager wrapper below.

Why an eager wrapper: in torch 2.13, an op whose autograd comes from register_autograd pays
for it in Python on every call that needs gradients: the arguments are re-filled from the
schema (`torch._library.utils.fill_defaults` rebuilds the schema's argument list once per
argument: quadratic in the 13 arguments) and the list arguments are flattened with pytree
three times. Measured on this machine (layer_norm [16, 4096], one thread, process CPU time
per call): 330 µs through the registered formula, 205 µs through `NormFunction`, 165 µs for
the op without gradients. So eager calls go through `NormFunction`, an autograd.Function
whose forward calls the same op (grad mode is off inside it, so the op's autograd kernel
passes straight through) and whose backward is the same `backward`; under torch.compile,
Dynamo records the op itself and AOTAutograd uses the registered formula. Both run the same
kernels and save the same tensors.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
from torch.autograd.function import once_differentiable

#: the forward op's arguments after the tensors: spec, sizes, eps, training, group
_N_TAIL = 5
#: Dispatch below the Autograd key: what torch's own register_autograd kernel does before it
#: runs an op's implementation. Inside NormFunction.forward autograd is already handled, and
#: skipping the op's Python autograd kernel saves ~20 µs a call (a private torch API: without
#: it, the kernel is passed through instead, slower but the same)
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)


def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    """Save what `backward` needs: x, the parameters, the running statistics (read in
    evaluation), the statistics and moments, the extra inputs, and the call's options.
    Saving x lets autograd catch an in-place change of it before backward."""
    x, weight, bias, extras, running_mean, running_var, mean_weight, var_weight = inputs[:8]
    _, stats, moments, _ = output
    ctx.mark_non_differentiable(stats, moments)
    ctx.save_for_backward(x, weight, bias, running_mean, running_var, mean_weight, var_weight, stats, moments,
                          *extras)
    ctx.call = tuple(inputs[8:])


def backward(ctx: Any, dy: Tensor, _dstats: Tensor | None, _dmoments: Tensor | None,
             dextra_out: list[Tensor | None]) -> tuple:
    """Gradients of the forward op's inputs, in its argument order (None for non-tensors)."""
    x, weight, bias, running_mean, running_var, mean_weight, var_weight, stats, moments, *extras = ctx.saved_tensors
    dx, dparams, dextras = torch.ops.normgen.backward.default(
        dy, list(dextra_out), x, weight, bias, extras, running_mean, running_var, mean_weight, var_weight, stats,
        moments, *ctx.call)
    given = iter(dparams)
    dw, db, dmw, dvw = (next(given) if p is not None else None for p in (weight, bias, mean_weight, var_weight))
    return (dx, dw, db, list(dextras), None, None, dmw, dvw) + (None,) * _N_TAIL


class NormFunction(torch.autograd.Function):
    """`normgen::forward` with autograd, for eager calls (see the module docstring) and for
    torch.func's transforms (grad, vmap: the setup_context form, which functorch requires;
    vmap goes through the op's own batching rule, vmap.py).

    apply(call, x, weight, bias, mean_weight, var_weight, *extras) with `call` = (running_mean,
    running_var, spec, sizes, eps, training, group); returns (y, stats, moments, *extra_out).
    The extras are spread out because autograd.Function tracks tensors, not lists of them.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, *args: Any) -> Any:
        # torch's Function.apply binds default arguments with inspect.signature on every call of
        # a setup_context Function (a tenth of a small training step); forward has no defaults,
        # so outside torch.func's transforms the C++ apply gets the arguments as they are
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*_unwrap_dead_wrappers(args))

    @staticmethod
    def forward(call: tuple, x: Tensor, weight: Tensor | None, bias: Tensor | None, mean_weight: Tensor | None,
                var_weight: Tensor | None, *extras: Tensor) -> tuple:
        running_mean, running_var, *tail = call
        with _below_autograd():
            y, stats, moments, extra_out = torch.ops.normgen.forward.default(
                x, weight, bias, list(extras), running_mean, running_var, mean_weight, var_weight, *tail)
        return (y, stats, moments, *extra_out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        call, x, weight, bias, mean_weight, var_weight, *extras = inputs
        running_mean, running_var, *tail = call
        y, stats, moments, *extra_out = output
        setup_context(ctx, (x, weight, bias, list(extras), running_mean, running_var, mean_weight, var_weight, *tail),
                      (y, stats, moments, list(extra_out)))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor, dstats: Tensor, dmoments: Tensor, *dextra_out: Tensor) -> tuple:
        dx, dw, db, dextras, _, _, dmw, dvw, *_ = backward(ctx, dy, None, dmoments, list(dextra_out))
        return (None, dx, dw, db, dmw, dvw, *dextras)
