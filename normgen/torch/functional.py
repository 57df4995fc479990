"""torch.nn.functional's signatures on normgen's kernels."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import CallError
from .function import normalize


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5, *, process_group: Any = None, num_batches_tracked: Tensor | None = None) -> Tensor:
    """F.batch_norm on normgen's kernels: statistics per channel over (N, *spatial).

    With `process_group` (a torch.distributed group, or a normgen.op.distributed.Group), the
    batch is split across its ranks and training statistics cover all of it. momentum=None
    with `num_batches_tracked` (the count of batches, this one included, as torch.nn's
    modules keep it): a cumulative average, computed on the tensors' device.

    >>> y = batch_norm(x, rm, rv, w, b, training=True)   # updates rm and rv in place
    """
    if input.numel() == 0 and input.dim() < 2:  # as F.batch_norm: an empty batch of no channels
        return torch.empty_like(input)
    if training and process_group is None:  # across ranks, the op checks the global count
        size = input.shape[0] * math.prod(input.shape[2:])
        if size == 1:
            raise CallError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    return normalize("batch_norm", input, {"weight": weight, "bias": bias}, running_mean=running_mean,
                     running_var=running_var, training=training, momentum=momentum, eps=eps,
                     num_batches_tracked=num_batches_tracked, process_group=process_group)


def instance_norm(input: Tensor, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                  weight: Tensor | None = None, bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """F.instance_norm on normgen's kernels: statistics per (N, C) over the spatial axes.

    >>> y = instance_norm(x, weight=w, bias=b)
    """
    if use_input_stats and math.prod(input.shape[2:]) == 1:
        raise CallError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    return normalize("instance_norm", input, {"weight": weight, "bias": bias}, running_mean=running_mean,
                     running_var=running_var, training=use_input_stats, momentum=momentum, eps=eps)


def layer_norm(input: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """F.layer_norm on normgen's kernels: statistics over the trailing `normalized_shape` dims.

    >>> y = layer_norm(x, (64,), w, b)
    """
    return normalize("layer_norm", input, {"weight": weight, "bias": bias}, eps=eps,
                     normalized_shape=_shape(normalized_shape))


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """F.group_norm on normgen's kernels: statistics per (N, group of channels).

    >>> y = group_norm(x, 4, w, b)
    """
    return normalize("group_norm", input, {"weight": weight, "bias": bias}, eps=eps, num_groups=num_groups)


def rms_norm(input: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """F.rms_norm on normgen's kernels; eps=None is the dtype's machine epsilon.

    >>> y = rms_norm(x, (64,), w)
    """
    return normalize("rms_norm", input, {"weight": weight}, eps=eps, normalized_shape=_shape(normalized_shape))


def switchable_norm(input: Tensor, mean_weight: Tensor, var_weight: Tensor, running_mean: Tensor | None = None,
                    running_var: Tensor | None = None, weight: Tensor | None = None, bias: Tensor | None = None,
                    training: bool = False, momentum: float | None = 0.1, eps: float = 1e-5) -> Tensor:
    """Switchable Norm: softmax(mean_weight)/softmax(var_weight) mix instance, layer and batch
    statistics (in that order); the batch part uses the running statistics when not training.

    >>> y = switchable_norm(x, torch.ones(3), torch.ones(3), rm, rv, w, b, training=True)
    """
    return normalize("switchable_norm", input, {"weight": weight, "bias": bias, "mean_weight": mean_weight,
                                                "var_weight": var_weight},
                     running_mean=running_mean, running_var=running_var, training=training, momentum=momentum, eps=eps)


def _shape(normalized_shape: int | tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    return (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(int(n) for n in normalized_shape)
