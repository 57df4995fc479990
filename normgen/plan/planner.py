"""The planner: (binding, strides, dtype, target) -> Plan. Every decision lives here.

`make_plan` runs the passes in order, one line each:

1-5. passes.py        logical dims -> drop unit dims -> memory order -> coalesce -> strategy
6.   launch.py        how units run on the CPU (parts, blocks, tiles), the steps of a call,
                      and how parameter gradients are reduced
     launch_cuda.py   ... on a GPU (device.py): units, copies, parts, grids, vector width,
                      registers kept; traffic.py: the kernels of a call and their DRAM traffic
7.   fusion.py        fused specs: where each pass finds h, which gradients the backward writes
then the Kernel (structure: what the generated source depends on) and the Launch (numbers:
what the kernels receive at run time) are assembled.

    >>> plan = make_plan(bind(spec, (32, 128, 56, 56)), {"x": strides, "y": strides},
    ...                  direction=Direction.FORWARD, dtype="float32", has_weight=True, has_bias=True)
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from ..spec import Spec
from .bind import Binding
from .device import DEFAULT_PROFILE, Device, profile
from .fusion import plan_fusion, whole_groups
from .launch import cpu_launch, param_grads, steps
from .launch_cuda import cuda_launch
from .model import Dim, Direction, Fusion, Kernel, Options, ParamGrads, Plan, Reduction
from .passes import Layout, PDim, choose_strategy, coalesce, drop_unit_dims, logical_dims, memory_order, stride_class
from .traffic import cuda_steps

DEFAULT_OPTIONS = Options()


def make_plan(binding: Binding, arrays: dict[str, tuple[int, ...]], *, direction: Direction, dtype: str,
              has_weight: bool, has_bias: bool, target: str = "cpu", threads: int = 1, device: Device | None = None,
              reduction: Reduction = Reduction.STATS, options: Options = DEFAULT_OPTIONS) -> Plan:
    """Plan one call. `arrays` maps each x-like array to its element strides; `device` is the
    GPU a cuda plan is for (default: the h100 profile)."""
    whole = whole_groups(binding.spec, direction)
    dims = logical_dims(binding, arrays, reduction)
    dims = drop_unit_dims(dims)
    dims = memory_order(dims)
    dims = coalesce(dims, binding)
    lay = choose_strategy(dims, columns=not whole)
    if target == "cpu":
        launch, compiled = cpu_launch(dims, lay, direction, threads, options, whole), {}
    else:
        device = device or profile(DEFAULT_PROFILE)
        choice = cuda_launch(dims, lay, device, direction, dtype, reduction, binding.spec.is_mixture, options)
        launch = choice.launch
        compiled = {"vec": choice.vec, "cache": choice.cache, "tile": choice.tile, "copies": choice.copies,
                    "span": choice.span, "wide": choice.wide}
    fusion = None if reduction is Reduction.PARAMS else \
        plan_fusion(binding.spec, direction, tuple(arrays), lay.strategy, launch.fused, binding.group_size)
    grads = param_grads(target, lay, dims, direction, has_weight or has_bias, reduction)
    params = None
    if grads is ParamGrads.REDUCTION:
        params = make_plan(binding, arrays, direction=direction, dtype=dtype, has_weight=has_weight,
                           has_bias=has_bias, target=target, threads=threads, device=device,
                           reduction=Reduction.PARAMS, options=options)
    kernel = _kernel(binding.spec, dims, lay, tuple(arrays), direction, target, dtype, has_weight, has_bias,
                     reduction, compiled, fusion)
    plan = Plan(kernel, launch, binding, (), grads, params, device)
    if target == "cpu":
        n_groups = max(1, math.prod(binding.stats_shape))
        return replace(plan, steps=steps(direction, launch, n_groups, grads))
    train, evaluate, min_bytes = cuda_steps(plan, binding.spec.is_mixture)
    return replace(plan, steps=train, eval_steps=evaluate, min_bytes=min_bytes)


def _kernel(spec: Spec, dims: tuple[PDim, ...], lay: Layout, arrays: tuple[str, ...], direction: Direction,
            target: str, dtype: str, has_weight: bool, has_bias: bool, reduction: Reduction,
            compiled: dict, fusion: Fusion | None) -> Kernel:
    """The structure of the plan: roles and stride classes of the loop dims; on the GPU the
    vector width, the registers kept and the tile (`compiled`, from launch_cuda.py)."""
    loop_inner = [lay.inner] + ([lay.tail] if lay.tail is not None else [])
    unit = tuple((f"{a}@{dims[i].name}", stride_class(dims[i].s(a)))
                 for i in loop_inner for a in arrays + ("stat", "param"))
    return Kernel(spec=spec.name, spec_from=spec_from(spec), direction=direction, target=target, dtype=dtype,
                  strategy=lay.strategy, dims=tuple(Dim(d.name, d.axes, d.kept, d.s("param") != 0, d.s("stat") != 0) for d in dims),
                  groups=lay.groups, rows=lay.rows, inner=lay.inner, tail=lay.tail, unit_stride=unit,
                  center=spec.center, scale=spec.scale, has_weight=has_weight, has_bias=has_bias,
                  reduction=reduction, arrays=arrays, fusion=fusion, **compiled)


def spec_from(spec: Spec) -> str:
    """The spec's file name, input and kept sets: for generated headers."""
    kept = " | ".join(spec.axes_str(c) for c in spec.kept)
    return f"{Path(spec.source).name}: input '{spec.input}', kept '{kept}'"
