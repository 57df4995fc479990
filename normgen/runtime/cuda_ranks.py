"""Statistics across ranks and running statistics, kept on the CUDA device: the sequence of
kernels and collectives that the CUDA backend runs for a call with a process group, with no
copy to the host in between (so no host synchronization, and a CUDA graph can hold it).

Forward (sync="allreduce"), per statistics group:

    forward_partial, forward_merge      this rank's moments (count, mean, M2)      [plan]
    ranks_mean_sums   -> all-reduce     (count, count * mean): every rank the global mean
    ranks_m2_sums     -> all-reduce     M2 + count * (mean - global mean)^2: M2 about it
    ranks_moments, forward_merge        the moments -> kstats (the plan's finalize)  [plan]
    forward_apply                       y                                            [plan]

Numerics, and why two collectives: the host path (op/distributed.py) all-reduces shifted
sums in one collective and, when the shift turns out far from the mean, reduces again; that
decision reads the reduced sums on the host. On the device the second collective is always
issued, around the mean the first one gave: M2 is then a sum of non-negative terms (no
cancellation, whatever the offset of the data: no precision condition at all), and the
bytes per rank are the same 3 float64 per group. The price is the latency of one more small
collective per forward. Every rank runs the same kernels on the same reduced bytes, so
every rank holds bit-identical statistics.

Backward: backward_partial and backward_merge give (sum g, sum g * x_hat) per group,
`ranks_grad_pack` packs them, one all-reduce adds them, `ranks_grad_parts` divides by the
global count and the plan's backward_merge (count 1) turns them into dx's coefficients for
backward_apply. Parameter gradients are reduced after dx, as without ranks.

The collectives are the group's `allreduce_device` (op/distributed.py): zero-copy on
torch.distributed (DLPack, the current stream), through the host elsewhere (mpi4py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..plan.bind import Binding
from ..plan.model import Plan
from .device_kernels import DeviceKernels


def kernels(backend) -> DeviceKernels:
    """The backend's device kernels, compiled on first use."""
    k = backend.__dict__.get("_device_kernels")
    if k is None:
        k = backend.__dict__["_device_kernels"] = DeviceKernels(backend.device)
    return k


def forward(backend, plan: Plan | None, merge_plan: Plan | None, x, group: Any, n_groups: int, eps: float):
    """(moments over every rank [g, 3], kstats [g, 3]), both on the device.

    `plan`: x's (None: this rank has no elements and contributes zeros); `merge_plan`: the
    plan whose forward_merge finalizes the moments (x's, or a stand-in for a rank without
    elements; None: kstats None, the caller finalizes them)."""
    dev, k = backend.device, kernels(backend)
    if plan is not None:
        local = backend._merged_moments(plan, x, backend._stats(n_groups, plan.kernel.dtype), 0.0)
    else:
        local = dev.asarray(np.zeros((n_groups, 3)))
    sums = dev.empty(3 * n_groups, np.float64)
    k.mean_sums(local, sums, n_groups)
    group.allreduce_device(sums[:2 * n_groups], dev)
    k.m2_sums(local, sums, n_groups)
    group.allreduce_device(sums[2 * n_groups:], dev)
    parts = dev.empty((n_groups, 3), np.float64)
    k.moments(sums, parts, n_groups)
    if merge_plan is None:
        return parts, None
    kstats = backend._stats(n_groups, merge_plan.kernel.dtype)
    moments = dev.empty((n_groups, 3), np.float64)
    backend.run_merge(merge_plan, "forward_merge", parts=parts, moments=moments, kstats=kstats,
                      n_groups=np.int64(n_groups), n_parts=np.int64(1), eps=np.float64(eps))
    return moments, kstats


def backward(backend, plan: Plan | None, x, dy, dx, w, kstats, moments, group: Any, n_groups: int,
             per_count: bool):
    """dx over every rank's statistics (on the device), then this rank's (dweight, dbias)."""
    dev, k = backend.device, kernels(backend)
    sums = dev.empty(2 * n_groups, np.float64)
    if plan is None:  # no elements: this rank adds zeros and has no dx to write
        sums[...] = dev.asarray(np.zeros(2 * n_groups))
        group.allreduce_device(sums, dev)
        return None, None
    dtype = plan.kernel.dtype
    partial, pgrad = backend._partial_sums(plan, x, dy, w, kstats)
    totals = dev.empty((n_groups, 4), np.float64)
    coef = backend._stats(n_groups, dtype)  # overwritten below: this first merge is for the totals
    backend.run_merge(plan, "backward_merge", sums=partial, kstats=kstats, totals=totals, coef=coef,
                      n_groups=np.int64(n_groups), n_parts=np.int64(plan.launch.pieces), count=np.float64(1.0))
    k.grad_pack(totals, sums, n_groups)
    group.allreduce_device(sums, dev)
    parts = dev.empty((n_groups, 4), np.float64)
    k.grad_parts(sums, moments, parts, n_groups, per_count)
    scratch = dev.empty((n_groups, 4), np.float64)
    backend.run_merge(plan, "backward_merge", sums=parts, kstats=kstats, totals=scratch, coef=coef,
                      n_groups=np.int64(n_groups), n_parts=np.int64(1), count=np.float64(1.0))
    backend.run(plan, "backward_apply", x=x, dy=dy, dx=dx, weight=backend._param(w, dtype), kstats=kstats, coef=coef)
    return backend._param_grads(plan, x, dy, kstats, totals, pgrad)


def members(binding: Binding) -> np.ndarray:
    """[running entries, k]: the statistics groups (flat, kept order) whose batch values each
    running entry (flat, running order) averages: k = 1 unless the running statistics index
    fewer kept axes (InstanceNorm: k = N)."""
    shape, dims = binding.stats_shape, binding.running_dims
    index = np.arange(max(1, math.prod(shape)), dtype=np.int64).reshape(shape)
    other = [d for d in range(len(shape)) if d not in dims]
    order = list(dims) + other
    return np.ascontiguousarray(index.transpose(order).reshape(math.prod(shape[d] for d in dims), -1))


def _members_on_device(backend, binding: Binding):
    cache = backend.__dict__.setdefault("_members", {})
    key = (binding.shape, binding.stats_shape, binding.running_dims)
    m = cache.get(key)
    if m is None:  # uploaded once per call structure: a constant of the shape, not data
        m = cache[key] = backend.device.asarray(members(binding))
    return m


def update_running(backend, binding: Binding, moments, factor: float, running_mean, running_var) -> None:
    """PyTorch's running update from device moments [g, 3], in place, on the device."""
    kernels(backend).running_update(moments, _members_on_device(backend, binding), factor, running_mean,
                                    running_var)


def eval_kstats(backend, binding: Binding, running_mean, running_var, eps: float, dtype):
    """Evaluation's kstats [g, 3] (`dtype`) from the running statistics, on the device."""
    kstats = backend.device.empty((max(1, math.prod(binding.stats_shape)), 3), dtype)
    kernels(backend).eval_kstats(running_mean, running_var, _members_on_device(backend, binding), eps, kstats)
    return kstats
