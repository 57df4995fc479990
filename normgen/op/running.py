"""Running statistics: PyTorch's update rule, evaluation with them, and committing an update.

    running_mean <- (1 - m) · running_mean + m · mean
    running_var  <- (1 - m) · running_var  + m · var · n / (n - 1)      (unbiased)

Running statistics are indexed by a subset of the kept axes (InstanceNorm: C of N C); the
batch value is the average over the other kept axes. A call computes the new values
first and assigns them (`commit`) only after every kernel has run, so a call that fails
leaves the running statistics as they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plan.bind import Binding
from ..runtime.arrays import BF16, to_bits
from . import stats as st


def broadcast_running(binding: Binding, running: Any, keep_dims: tuple[int, ...] | None = None) -> np.ndarray:
    """Running statistics (running order) -> the statistics' dims (kept order).

    Broadcast to the full statistics shape, or left with size-1 dims when `keep_dims` is
    given (for a mixture component).
    """
    dims = binding.running_dims
    shape = binding.stats_shape
    r = np.asarray(running, dtype=np.float64).reshape([shape[d] for d in dims])
    present = sorted(dims)
    r = r.transpose([dims.index(d) for d in present])
    r = r.reshape([shape[d] if d in dims else 1 for d in range(len(shape))])
    return r if keep_dims is not None else np.broadcast_to(r, shape)


def running_normalizer(binding: Binding, running_mean: np.ndarray, running_var: np.ndarray,
                       eps: float) -> st.Normalizer:
    """What evaluation normalizes with: the running statistics, per group."""
    mean = broadcast_running(binding, running_mean)
    var = broadcast_running(binding, running_var)
    return st.Normalizer(mean, var, 1.0 / np.sqrt(var + eps))


def updated(binding: Binding, mean: np.ndarray, var: np.ndarray, count: Any, factor: float, old_mean: np.ndarray,
            old_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New running statistics from a batch's (biased) mean and variance over `count` elements."""
    dims = binding.running_dims
    mean_b = st.average_to(np.asarray(mean), dims, dims)
    var_b = st.average_to(np.asarray(var) * (count / (count - 1)), dims, dims)
    new_mean = st.running_update(old_mean, mean_b.reshape(old_mean.shape), factor)
    new_var = st.running_update(old_var, var_b.reshape(old_var.shape), factor)
    return new_mean.astype(old_mean.dtype), new_var.astype(old_var.dtype)


def commit(new: tuple[np.ndarray, np.ndarray], running, backend) -> None:
    """Assign new running statistics in place (after every kernel of the call has run)."""
    for dst, values in ((running.mean, new[0]), (running.var, new[1])):
        if isinstance(dst, BF16):  # bfloat16 buffers: their bits, rounded to nearest even
            dst.bits[...] = backend.from_host(to_bits(values))
        else:
            dst[...] = backend.from_host(values)
    tracked = running.num_batches_tracked
    if isinstance(tracked, np.ndarray):
        tracked += 1  # in place: the caller's counter
