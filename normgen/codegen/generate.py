"""Readable generated sources: for `normgen generate` and the reference copies in generated/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runtime.cache import source_key, write_if_changed
from ..layouts import layout_strides
from ..op.op import Op, load
from ..verify.reference import REFERENCES
from .render import render


def sources(op: Op, shape: tuple[int, ...], *, layout: str = "contiguous", dtype: str = "float32",
            sizes: dict[str, Any] | None = None, directions: tuple[str, ...] = ("forward", "backward"),
            label: str | None = None, target: str = "cpu") -> dict[str, str]:
    """{file name: source} of the plans for one shape and layout, forward and backward.

    For CUDA the backward also has the parameter-gradient reduction ("params"), planned
    with the parameter indices as its groups.
    """
    from ..plan.bind import bind
    from ..layouts import like_strides
    from ..plan.planner import Direction, make_plan

    sizes = dict(sizes or {})
    strides = layout_strides(shape, layout)
    binding = bind(op.spec, shape, sizes)
    has_w = bool(op.spec.affine and op.spec.affine.weight)
    has_b = bool(op.spec.affine and op.spec.affine.bias)
    out_strides = like_strides(shape, strides)
    ext = "cu" if target == "cuda" else "py"
    base = label or (f"{op.name}.{layout}" + (f".{dtype}" if target == "cuda" else ""))
    out = {}
    for direction in directions:
        arrays = ({"x": strides, "y": out_strides} if direction == "forward"
                  else {"x": strides, "dy": out_strides, "dx": out_strides})
        plans = {direction: make_plan(binding, arrays, direction=Direction(direction), dtype=dtype,
                                      has_weight=has_w, has_bias=has_b, target=target)}
        if target == "cuda" and direction == "backward":
            from ..runtime.cuda import needs_param_plan

            if needs_param_plan(plans[direction]):
                plans["params"] = make_plan(binding, arrays, direction=Direction.BACKWARD, dtype=dtype,
                                            has_weight=has_w, has_bias=has_b, target=target, reduce_by="params")
        for part, plan in plans.items():
            out[f"{base}.{part}.{ext}"] = render(plan.kernel, source_key(plan.kernel.canonical()))
    return out


def reference_sources(target: str = "cpu", dtypes: tuple[str, ...] = ("float32",)) -> dict[str, str]:
    """{path under generated/: source} for every reference plan of the bundled specs."""
    out = {}
    for ref in REFERENCES:
        for dtype in dtypes:
            for name, src in sources(load(ref.spec), ref.shape, layout=ref.layout, sizes=dict(ref.sizes),
                                     dtype=dtype, target=target).items():
                out[f"{target}/{name}"] = src
    return out


def all_reference_sources() -> dict[str, str]:
    """What generated/ holds: the CPU modules and the float32 CUDA sources of every reference plan."""
    return {**reference_sources("cpu"), **reference_sources("cuda")}


def write(outdir: Path, files: dict[str, str]) -> list[tuple[Path, bool]]:
    """Write files under outdir (only those whose bytes change). [(path, written)]."""
    done = []
    for rel, src in sorted(files.items()):
        path = Path(outdir) / rel
        done.append((path, write_if_changed(path, src.encode())))
    return done
