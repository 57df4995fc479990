"""The geometry vector: the run-time numbers of a plan, in the one order everyone uses.

Kernels receive sizes, strides and launch numbers in one int64 vector `g`. This table is
the only place that says what is in it: the renderer prints each kernel's unpacking of
the entries it uses (with these names and descriptions), and the backends fill it with
`geometry_values`. Sizes come first, then the element strides of every array along every
loop dim (0 where the array does not move: statistics along reduced dims, parameters
along non-affine dims), then the launch numbers of the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .fusion import hold_elements
from .model import Kernel, Plan

#: prefix of each array's stride variables in generated code, and what the array is
STRIDE_PREFIX = {"x": "xs", "y": "ys", "dy": "dys", "dx": "dxs", "h": "hs", "dh": "dhs", "stat": "ss", "param": "ps"}
_NOUN = {"x": "x", "y": "y", "dy": "dy", "dx": "dx", "h": "h (the prologue)", "dh": "dh (the prologue's gradient)",
         "stat": "statistics", "param": "parameter"}


def stride_prefix(array: str) -> str:
    """xs for x, es_residual for the extra input e_residual, ds_residual for its gradient d_residual."""
    if array in STRIDE_PREFIX:
        return STRIDE_PREFIX[array]
    kind, _, name = array.partition("_")
    return f"{kind}s_{name}"


def _noun(array: str) -> str:
    if array in _NOUN:
        return _NOUN[array]
    kind, _, name = array.partition("_")
    return f"extra input {name}" if kind == "e" else f"gradient of {name}"


def _n_param(plan: Plan) -> int:
    return math.prod(plan.binding.param_shape) if plan.binding.param_shape else 0


#: the launch numbers of each target: (name in code, description, value for a plan)
LAUNCH_FIELDS: dict[str, tuple[tuple[str, str, Callable[[Plan], int]], ...]] = {
    "cpu": (
        ("n_parts", "parts per group (1: a unit reduces a whole group)", lambda p: p.launch.n_parts),
        ("n_blocks", "parallel blocks of units", lambda p: p.launch.n_blocks),
        ("seg", "elements per chunk (rows) / columns per unit (columns)", lambda p: p.launch.seg),
        ("row_chunk", "rows per two-pass chunk (columns)", lambda p: p.launch.row_chunk),
        ("kb", "rows per block step; the scratch holds kb rows of a tile (columns)", lambda p: p.launch.kb),
        ("kb_read", "1: the reading pass takes kb rows a step (columns)", lambda p: int(p.launch.kb_read)),
        ("kb_write", "1: the writing pass takes kb rows a step (columns)", lambda p: int(p.launch.kb_write)),
        ("n_param", "elements per parameter", _n_param),
        ("n_hold", "elements of h a block holds between passes (fused rows)", hold_elements),
        ("bf16", "1: the half-type arrays hold bfloat16 bits, 0: float16 bits",
         lambda p: int(p.kernel.dtype == "bfloat16")),
    ),
    "cuda": (
        ("n_parts", "parts per group (1: a unit reduces a whole group)", lambda p: p.launch.n_parts),
        ("threads_per_unit", "threads per unit (rows): 32 (a warp) to 1024", lambda p: p.launch.threads_per_unit),
        ("vec_ok", "1: sizes and strides allow 16-byte loads (pointers are checked too)",
         lambda p: int(p.launch.vec_ok)),
        ("n_param", "elements per parameter", _n_param),
    ),
}


@dataclass(frozen=True)
class Field:
    name: str  # the variable in generated code
    doc: str


def geometry_fields(kernel: Kernel) -> tuple[Field, ...]:
    """The entries of the geometry vector of a kernel, in order."""
    out = [Field(f"n_{d.name}", f"size of {d.label}") for d in kernel.dims]
    for a in kernel.arrays + ("stat", "param"):
        out += [Field(f"{stride_prefix(a)}_{d.name}", f"{_noun(a)} stride along {d.label}") for d in kernel.dims]
    return tuple(out) + tuple(Field(name, doc) for name, doc, _ in LAUNCH_FIELDS[kernel.target])


def geometry_values(plan: Plan) -> tuple[int, ...]:
    """The geometry vector of a plan (the order of `geometry_fields`)."""
    k, la = plan.kernel, plan.launch
    values = list(la.sizes)
    for a in k.arrays + ("stat", "param"):
        values += la.stride(a)
    return tuple(values) + tuple(int(get(plan)) for _, _, get in LAUNCH_FIELDS[k.target])
