"""The plan a call would use, without making the call: for `normgen plan` and `normgen generate`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CallError
from ..layouts import layout_strides, like_strides
from ..plan.bind import bind
from ..plan.device import Device, profile
from ..plan.model import Direction, Plan
from ..runtime import select
from ..runtime.arrays import dense_strides
from .fused import plan_arrays


def plan_for(op, x: np.ndarray | tuple[int, ...], *, direction: str = "forward", params: bool = True,
             strides: tuple[int, ...] | None = None, dtype: str | None = None, target: str = "cpu",
             device: str | Device | None = None, **sizes: Any) -> Plan:
    """The plan a call of `op` would use, for an array `x` or a shape with element `strides`.

    The output (y or dx) and dy are taken dense in x's dimension order, as a call that
    allocates them would. `device` (target="cuda"): plan for this GPU, or a profile name
    such as "h100" (plan/device.py), instead of the one calls run on.

    >>> plan_for(normgen.load("batch_norm"), (32, 128, 56, 56), strides=layout_strides(shape, "channels_last"))
    """
    backend = select(None, target)
    if isinstance(x, np.ndarray):
        shape, dtype = x.shape, str(x.dtype)
        strides = backend.strides(x)
        if strides is None:
            raise CallError(f"{op.name}: x has strides the kernels cannot walk; it would be copied")
    else:
        shape = tuple(x)
        strides = strides if strides is not None else layout_strides(shape, "contiguous")
        dtype = dtype or "float32"
    spec = op.spec
    binding = bind(spec, shape, sizes)
    has_w = params and bool(spec.affine and spec.affine.weight)
    has_b = params and bool(spec.affine and spec.affine.bias)
    out = like_strides(shape, strides)
    unit = tuple(0 if n == 1 else s for n, s in zip(shape, strides))
    arrays = ({"x": unit, "y": out} if direction == "forward" else {"x": unit, "dy": out, "dx": out})
    arrays.update(plan_arrays(spec, direction, unit, out))  # a fused spec's other arrays
    if device is not None and target == "cuda":
        dev = profile(device) if isinstance(device, str) else device
        return backend.plan(binding, arrays, Direction(direction), dtype, has_w, has_b, op.options, device=dev)
    return backend.plan(binding, arrays, Direction(direction), dtype, has_w, has_b, op.options)


def stand_in_plan(op, call) -> Plan | None:
    """For a rank without elements, across ranks on the device: the plan of its shape with every
    empty dim made 1 (the same kept axes, so the same groups), whose forward_merge finalizes the
    reduced moments exactly as the other ranks' plans do (bit-identical statistics everywhere).
    None when that shape does not bind (a call-time size names the empty dim) or has other groups."""
    shape = tuple(max(1, int(n)) for n in call.x.shape)
    try:
        binding = op._bind(shape, call.sizes)
    except CallError:
        return None
    if binding.n_groups != call.binding.n_groups:
        return None
    be, dense = call.backend, dense_strides(shape)
    strides = {"x": dense, "y": dense}
    has_w, has_b = call.weight is not None, call.bias is not None
    key = ("stand-in", be.plan_key(), shape, repr(sorted(call.sizes.items())), call.dtype, has_w, has_b)
    return op._plans.get_or_make(key, lambda: be.plan(binding, strides, Direction.FORWARD, call.dtype, has_w, has_b,
                                                      op.options))
