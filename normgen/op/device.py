"""The Op's steps that stay on a device backend (CUDA): statistics from the running ones,
across-rank statistics and the running update without copying anything to the host
(runtime/cuda_ranks.py, runtime/device_kernels.py). Each returns None where the backend
has no device path for the call, and the Op takes its host path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import stats as st
from .args import Call
from .planning import stand_in_plan


def _device_stats(call: Call) -> bool:
    return getattr(call.backend, "device_stats", False)


def eval_statistics(call: Call, plan, kw: dict[str, Any]):
    """Evaluation: kstats from the running statistics by a kernel, and y normalized with them."""
    if not _device_stats(call):
        return None
    be, run = call.backend, call.running
    kstats = be.running_kstats(call.binding, run.mean, run.var, call.eps, call.stat_dtype)
    if kstats is not None:
        be.apply(plan, call.x, call.y, call.weight, call.bias, kstats, **kw)
    return kstats


def ranks_statistics(op, call: Call, plan, kw: dict[str, Any]):
    """Across ranks: local moments, the collectives on the device, the plan's merge, then the
    apply: (moments, kstats)."""
    be, spec = call.backend, op.spec
    merge_plan = plan if plan is not None else stand_in_plan(op, call)
    moments, kstats = be.ranks_forward(plan, merge_plan, call.x, call.group, call.binding.n_groups, call.eps)
    if kstats is None:  # no plan for this rank's statistics (see stand_in_plan): from the host
        kstats = be.from_host(st.kstats(st.moments_normalizer(spec, be.to_host(moments), call.eps,
                                                              call.binding.stats_shape), call.stat_dtype))
    st.check_norms(spec, kstats, call)
    if plan is not None:
        be.apply(plan, call.x, call.y, call.weight, call.bias, kstats, **kw)
    return moments, kstats


def update_running(call: Call, moments, mix, on_host: Callable[[], None]) -> None:
    """Assign the running statistics after this batch: by a kernel when the backend has one and
    the moments are there (no host synchronization in a CUDA training step), else `on_host()`."""
    be, run = call.backend, call.running
    if mix is None and _device_stats(call) and be.update_running(call.binding, moments, run.factor, run.mean,
                                                                 run.var):
        tracked = run.num_batches_tracked
        if isinstance(tracked, np.ndarray):
            tracked += 1  # in place: the caller's counter (a host array)
        return
    on_host()
