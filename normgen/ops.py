"""The bundled specs as functions with torch.nn.functional's signatures.

    >>> from normgen.ops import group_norm, batch_norm
    >>> y = group_norm(x, 32, weight, bias)                     # like F.group_norm
    >>> y = batch_norm(x, rm, rv, weight, bias, training=True)  # updates rm, rv in place

Each function validates its arguments like PyTorch does and calls the generated kernels
through `normgen.load(<spec>)`. For gradients use the Op directly
(`normgen.load("group_norm").forward(...)` then `.backward(dy, fwd)`), or `normgen.torch`.
Specs PyTorch lacks (switchable_norm, weight_standardization, standardize) get
signatures in the same style.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import CallError
from .op import load

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm", "switchable_norm",
           "weight_norm", "weight_standardization", "standardize"]


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    if type(normalized_shape) is tuple:  # the common case, and the cheap one
        return normalized_shape
    return (int(normalized_shape),) if np.isscalar(normalized_shape) else tuple(int(n) for n in normalized_shape)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float | None = 0.1, eps: float = 1e-5, *, num_batches_tracked=None, out=None,
               process_group=None, comm=None, sync="allreduce"):
    """F.batch_norm: per-channel statistics over (N, *spatial); updates running stats in place.

    momentum=None uses a cumulative average and needs `num_batches_tracked` (a 0-d int64
    array, incremented in place). process_group (torch.distributed) or comm (mpi4py): the
    batch is split across the ranks; training statistics cover all of it (sync="allreduce", the
    default: constant bytes per rank; "gather": rank-order merging; see normgen.op.distributed).
    """
    if input.size == 0 and input.ndim < 2:  # PyTorch: an empty batch of no channels is an empty result
        return np.empty_like(input)
    across = process_group is not None or comm is not None
    if training and not across:  # across ranks, the op checks the count over all ranks
        size = int(np.prod([input.shape[0]] + list(input.shape[2:]))) if input.ndim >= 2 else 1
        if size == 1:
            raise CallError(f"batch_norm: expected more than 1 value per channel when training, got input size "
                            f"{tuple(input.shape)}")
    elif running_mean is None or running_var is None:
        raise CallError("batch_norm: running_mean and running_var are needed when training=False")
    return load("batch_norm")(
        input, weight, bias, running_mean=running_mean, running_var=running_var, training=training,
        momentum=momentum, eps=eps, num_batches_tracked=num_batches_tracked, out=out, process_group=process_group,
        comm=comm, sync=sync)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *, out=None):
    """F.instance_norm: statistics per (N, C) over *spatial; running stats (per C) are optional."""
    if use_input_stats:
        if input.ndim >= 2 and int(np.prod(input.shape[2:])) == 1:
            raise CallError(f"instance_norm: expected more than 1 spatial element when training, got input size "
                            f"{tuple(input.shape)}")
    elif running_mean is None or running_var is None:
        raise CallError("instance_norm: running_mean and running_var are needed when use_input_stats=False")
    return load("instance_norm")(
        input, weight, bias, running_mean=running_mean, running_var=running_var, training=use_input_stats,
        momentum=momentum, eps=eps, out=out)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, out=None,
               process_group=None, comm=None, sync="allreduce"):
    """F.layer_norm: statistics per leading index over the trailing `normalized_shape` dims.

    process_group / comm: the normalized dims are split across the ranks (tensor parallel):
    `normalized_shape` and the parameters are this rank's shard."""
    return load("layer_norm")(input, weight, bias, normalized_shape=_shape(normalized_shape), eps=eps,
                              out=out, process_group=process_group, comm=comm, sync=sync)


def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5, *, out=None,
               process_group=None, comm=None, sync="allreduce"):
    """F.group_norm: channels split into num_groups groups; statistics per (N, group).

    process_group / comm: the spatial axes are split across the ranks."""
    return load("group_norm")(input, weight, bias, num_groups=num_groups, eps=eps, out=out,
                              process_group=process_group, comm=comm, sync=sync)


def rms_norm(input, normalized_shape, weight=None, eps: float | None = None, *, out=None, process_group=None,
             comm=None, sync="allreduce"):
    """F.rms_norm: x / sqrt(mean(x^2) + eps) over `normalized_shape`; eps=None is the dtype's epsilon.

    process_group / comm: the normalized dims are split across the ranks (tensor parallel)."""
    return load("rms_norm")(input, weight, normalized_shape=_shape(normalized_shape), eps=eps, out=out,
                            process_group=process_group, comm=comm, sync=sync)


def switchable_norm(input, mean_weight, var_weight, running_mean=None, running_var=None, weight=None, bias=None,
                    training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *, out=None):
    """Switchable Normalization: softmax(mean_weight)/softmax(var_weight)-mixed IN, LN and BN statistics.

    The BN component uses (and, when training, updates) the running statistics.
    """
    if not training and (running_mean is None or running_var is None):
        raise CallError("switchable_norm: running_mean and running_var are needed when training=False")
    return load("switchable_norm")(
        input, weight, bias, mean_weight=mean_weight, var_weight=var_weight, running_mean=running_mean,
        running_var=running_var, training=training, momentum=momentum, eps=eps, out=out)


def weight_norm(v, g, dim: int | None = 0, *, out=None):
    """torch._weight_norm(v, g, dim): w = g * v / ||v||, one norm per index of `dim`.

    `g` may have shape (v.shape[dim],) or v's rank with ones elsewhere (PyTorch's layout).
    dim=None or dim=-1 takes one norm over all of v, as torch._weight_norm does.
    """
    op = load("weight_norm")
    if dim is None or dim == -1:
        flat = v.reshape(1, -1)
        res = op.forward(flat, np.asarray(g, dtype=v.dtype).reshape(1))
        return res.y.reshape(v.shape)
    dim = dim % v.ndim
    moved = np.moveaxis(v, dim, 0)
    g1 = np.asarray(g)
    if g1.size != v.shape[dim]:
        raise CallError(f"weight_norm: g has {g1.size} elements, expected {v.shape[dim]} (v.shape[{dim}])")
    res = op.forward(moved, np.ascontiguousarray(g1.reshape(-1), dtype=v.dtype),
                     out=None if out is None else np.moveaxis(out, dim, 0))
    return np.moveaxis(res.y, 0, dim) if out is None else out


def weight_standardization(weight, eps: float = 1e-5, *, out=None):
    """Weight Standardization: each output unit (dim 0) of a weight to zero mean, unit variance."""
    return load("weight_standardization")(weight, eps=eps, out=out)


def standardize(input, eps: float = 1e-5, *, out=None):
    """Feature scaling of a data matrix [N, F]: each feature to zero mean and unit variance."""
    return load("standardize")(input, eps=eps, out=out)
