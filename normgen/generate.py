"""Readable generated sources: for `normgen generate` and the reference copies in generated/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cache import source_key, write_if_changed
from .layouts import layout_strides
from .op import Op, load
from .reference import REFERENCES
from .render import render


def sources(op: Op, shape: tuple[int, ...], *, layout: str = "contiguous", dtype: str = "float32",
            sizes: dict[str, Any] | None = None, directions: tuple[str, ...] = ("forward", "backward"),
            label: str | None = None) -> dict[str, str]:
    """{file name: source} of the plans for one shape and layout, forward and backward."""
    sizes = dict(sizes or {})
    strides = layout_strides(shape, layout)
    out = {}
    for direction in directions:
        plan = op.plan(shape, strides=strides, dtype=dtype, direction=direction, **sizes)
        canonical = plan.kernel.canonical()
        name = f"{label or op.name + '.' + layout}.{direction}.py"
        out[name] = render(plan.kernel, source_key(canonical))
    return out


def reference_sources() -> dict[str, str]:
    """{path under generated/: source} for every reference plan of the bundled specs."""
    out = {}
    for ref in REFERENCES:
        for name, src in sources(load(ref.spec), ref.shape, layout=ref.layout, sizes=dict(ref.sizes)).items():
            out[f"cpu/{name}"] = src
    return out


def write(outdir: Path, files: dict[str, str]) -> list[tuple[Path, bool]]:
    """Write files under outdir (only those whose bytes change). [(path, written)]."""
    done = []
    for rel, src in sorted(files.items()):
        path = Path(outdir) / rel
        done.append((path, write_if_changed(path, src.encode())))
    return done
