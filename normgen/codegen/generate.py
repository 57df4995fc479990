"""Readable generated sources: for `normgen generate` and the reference copies in generated/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..layouts import layout_strides
from ..op import Op, load
from ..plan.device import DEFAULT_PROFILE
from ..runtime.cache import write_if_changed
from ..verify.reference import REFERENCES
from .render import render


def sources(op: Op, shape: tuple[int, ...], *, layout: str = "contiguous", dtype: str = "float32",
            sizes: dict[str, Any] | None = None, directions: tuple[str, ...] = ("forward", "backward"),
            label: str | None = None, target: str = "cpu", device: Any = DEFAULT_PROFILE) -> dict[str, str]:
    """{file name: source} of the plans for one shape and layout, forward and backward.

    Files are named SPEC.LAYOUT.DTYPE.STRATEGY.DIRECTION.EXT (e.g.
    layer_norm.contiguous.float64.rows.forward.py), so that runs for other dtypes or shapes
    that plan another strategy write files of their own; `label` replaces
    SPEC.LAYOUT.DTYPE.STRATEGY (the reference copies in generated/ keep their short names).
    When the plan reduces parameter gradients in a second kernel (CUDA, parameters that vary
    inside a group), its source is there too (DIRECTION "params"). CUDA sources are planned
    for `device` (a profile name or a plan.device.Device).
    """
    strides = layout_strides(shape, layout)
    ext = "cu" if target == "cuda" else "py"
    out = {}
    for direction in directions:
        plan = op.plan(shape, strides=strides, dtype=dtype, direction=direction, target=target,
                       device=device if target == "cuda" else None, **dict(sizes or {}))
        base = label or f"{op.name}.{layout}.{dtype}.{plan.kernel.strategy.value}"
        out[f"{base}.{direction}.{ext}"] = render(plan.kernel).text
        if plan.params is not None:
            base = label or f"{op.name}.{layout}.{dtype}.{plan.params.kernel.strategy.value}"
            out[f"{base}.params.{ext}"] = render(plan.params.kernel).text
    return out


def reference_sources(target: str = "cpu", dtypes: tuple[str, ...] = ("float32",),
                      device: str = DEFAULT_PROFILE) -> dict[str, str]:
    """{path under generated/: source} for every reference plan of the bundled specs (CUDA:
    planned for the `device` profile)."""
    out = {}
    for ref in REFERENCES:
        op = load(ref.spec)
        if target == "cuda" and op.spec.fuse is not None:
            continue  # the CUDA templates do not fuse yet
        for dtype in dtypes:
            label = f"{op.name}.{ref.layout}" + (f".{dtype}" if target == "cuda" else "")
            for name, src in sources(op, ref.shape, layout=ref.layout, sizes=dict(ref.sizes), dtype=dtype,
                                     label=label, target=target, device=device).items():
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
