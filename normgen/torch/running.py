"""Running statistics updated from a forward's moments with torch operations, on the device
the tensors live on: on CUDA nothing is copied to the host, so a training step does not
wait for the GPU (and can be captured in a CUDA graph).

The same formulas as op/running.py (PyTorch's); the batch values in float64, the update in
the buffers' dtype (as PyTorch's own modules do):

    running_mean <- (1 - m) · running_mean + m · mean
    running_var  <- (1 - m) · running_var  + m · var · n / (n - 1)

with the batch value averaged over the kept axes that the running statistics do not index
(InstanceNorm: N), and for a mixture the moments of the component the running statistics
belong to, merged from the finest groups (law of total variance, as op/mixture.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..plan.bind import Binding


def update_running(binding: Binding, moments: Tensor, running_mean: Tensor, running_var: Tensor,
                   momentum: float | None, num_batches_tracked: Tensor | None) -> None:
    """Assign the running statistics after a batch whose moments [groups, 3] (count, mean, M2)
    are `moments`. momentum=None: a cumulative average, 1 / num_batches_tracked (the count of
    batches including this one, as torch.nn's modules keep it)."""
    spec = binding.spec
    m = moments.reshape(*binding.stats_shape, 3)
    count, mean, m2 = m[..., 0], m[..., 1], m[..., 2]
    ndim = len(binding.stats_shape)
    if spec.is_mixture:
        k = next(i for i, c in enumerate(spec.kept) if set(c) == set(spec.running.axes))
        merged = [d for d in range(ndim) if d not in binding.component_dims[k]]
        if merged:  # M2 of the merged group: the parts' M2 plus their spread about the merged mean
            mu = mean.mean(merged, keepdim=True)
            m2 = (m2 + count * (mean - mu).square()).sum(merged, keepdim=True)
            count, mean = count.sum(merged, keepdim=True), mu
    unbiased = m2 / (count - 1)  # var · n / (n - 1), var = M2 / n
    dims = binding.running_dims
    other = [d for d in range(ndim) if d not in dims]
    if other:
        mean, unbiased = mean.mean(other), unbiased.mean(other)
    present = sorted(dims)
    order = [present.index(d) for d in dims]
    # both batch values before either buffer changes: a failure leaves the two as they were
    pairs = ((running_mean, mean), (running_var, unbiased))
    batches = [b.permute(order).reshape(r.shape).to(_work(r.dtype)) for r, b in pairs]
    for running, batch in zip((running_mean, running_var), batches):
        # half-type buffers: the update in float32, rounded once (as torch's CPU batch norm does)
        r = running if running.dtype == batch.dtype else running.to(batch.dtype)
        if momentum is None:  # the factor is a tensor: no host read of the count
            factor = 1.0 / num_batches_tracked.to(batch.dtype)
            r.mul_(1 - factor).add_(batch * factor)
        else:
            r.mul_(1 - momentum).add_(batch, alpha=momentum)
        if r is not running:
            running.copy_(r)


def _work(dtype: torch.dtype) -> torch.dtype:
    """The dtype a running update is computed in: float32 for the half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
