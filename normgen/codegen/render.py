"""Render a Plan to source code with the Jinja2 templates in templates/.

Templates only format: every number, name and choice they print comes from the Plan
through `context()`. The environment uses StrictUndefined, so a variable the template
expects and the context lacks is an error, not an empty string.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2

from .. import __version__
from ..paths import templates_dir
from . import PRELUDE_DIR
from ..plan.planner import COL_APPLY, STRIDE_PREFIX, Kernel, Strategy, geometry_names
from ..spec.loader import Center, Scale

#: how each geometry entry is described in the generated unpack block
_GEOM_DOC = {"n": "size of {}", "xs": "x stride along {}", "ys": "y stride along {}", "dys": "dy stride along {}",
             "dxs": "dx stride along {}", "ss": "statistics stride along {}", "ps": "parameter stride along {}"}
_LAUNCH_DOC = {"n_parts": "parts per group (1: fused)", "n_blocks": "parallel blocks of units",
               "threads_per_unit": "threads per unit: 32 (a warp) or the block",
               "seg": "elements per chunk (rows) / columns per unit (columns)",
               "row_chunk": "rows per two-pass chunk (columns)", "n_param": "elements per parameter"}


@functools.lru_cache(maxsize=None)
def cuda_prelude() -> str:
    """The text every generated CUDA source starts with (codegen/prelude.cuh)."""
    return (PRELUDE_DIR / "prelude.cuh").read_text()


@functools.lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template_name(kernel: Kernel) -> str:
    ext = "cu" if kernel.target == "cuda" else "py"
    return f"{kernel.target}/{kernel.strategy.value}.{ext}.j2"


#: CUDA storage type, compute type, load and store of each dtype
CUDA_TYPES = {
    "float32": ("float", "float", "p[i]", "v"),
    "float64": ("double", "double", "p[i]", "v"),
    "float16": ("__half", "float", "__half2float(p[i])", "__float2half_rn(v)"),
    "bfloat16": ("__nv_bfloat16", "float", "__bfloat162float(p[i])", "__float2bfloat16_rn(v)"),
}


def _cuda_context(k: Kernel) -> dict[str, Any]:
    ctype, compute, load, store = CUDA_TYPES[k.dtype]
    return {"prelude": cuda_prelude(), "ctype": ctype, "compute": compute, "load_expr": load, "store_expr": store}


def context(k: Kernel, key: str) -> dict[str, Any]:
    """Everything a template prints, derived from the kernel structure of a plan."""
    dims = [{"name": d.name, "label": d.label, "kept": d.kept, "affine": d.affine,
             "role": "kept" if d.kept else "reduced"} for d in k.dims]
    by_dim = {d["name"]: d for d in dims}

    def label(ds: list[dict[str, Any]]) -> str:
        return ", ".join(d["label"] for d in ds) or "nothing"

    groups = [dims[i] for i in k.groups]
    rows = [dims[i] for i in k.rows]
    inner = dims[k.inner]
    tail = dims[k.tail] if k.tail is not None else None
    names = ("x", "y", "dy", "dx", "stat", "param")

    def classes(dim: int | None) -> dict[str, str]:
        return {a: (k.stride_class(a, dim) if (a in k.arrays or a in ("stat", "param")) else "0") for a in names}

    geom = []
    for name in geometry_names(k):
        prefix, _, dim = name.partition("_")
        if name in _LAUNCH_DOC:
            geom.append((name, _LAUNCH_DOC[name]))
        else:
            geom.append((name, _GEOM_DOC[prefix].format(by_dim[dim]["label"])))
    reduced = [d for d in dims if not d["kept"]]
    has_params = k.has_weight or k.has_bias
    cls = classes(k.inner)
    finalize = {Scale.STD: "rstd = 1 / sqrt(M2 / n + eps)", Scale.RMS: "rstd = 1 / sqrt(sum(x^2) / n + eps)",
                Scale.L2: "rstd = 1 / sqrt(sum(x_c^2) + eps)", Scale.NONE: "rstd = 1"}[k.scale]
    return {
        "version": __version__, "template": template_name(k).split("/", 1)[1], "key": key,
        "spec_name": k.spec, "spec_from": k.spec_from,
        "center": k.center.value, "scale": k.scale.value, "finalize_doc": finalize,
        "summary": summary(k), "dims_line": " ".join(f"{d['label']}({'K' if d['kept'] else 'R'})" for d in dims),
        "direction": k.direction.value, "dtype": k.dtype,
        "dims": dims, "groups": groups, "rows": rows, "inner": inner, "col": inner, "tail": tail,
        "groups_label": label(groups), "rows_label": label(rows), "reduced_label": label(reduced),
        "cls": cls, "tcls": classes(k.tail),
        "pre": {"x": "xs", "y": "ys", "dy": "dys", "dx": "dxs", "s": STRIDE_PREFIX["stat"], "p": STRIDE_PREFIX["param"]},
        "geom": geom, "has_weight": k.has_weight, "has_bias": k.has_bias, "affine": has_params,
        "affine_inner": cls["param"] != "0",
        "centered": k.center is Center.MEAN, "split": k.dtype == "float32" and k.center is Center.MEAN,
        "per_count": k.scale in (Scale.STD, Scale.RMS), "reduce_by": k.reduce_by, "col_apply": COL_APPLY,
        **(_cuda_context(k) if k.target == "cuda" else {}),
    }


def summary(k: Kernel) -> str:
    """One line: direction, dtype, strategy and the roles of the loop dims."""
    parts = [k.direction.value, k.dtype, k.strategy.value]
    if k.strategy is Strategy.ROWS:
        parts.append("groups (" + ", ".join(k.dims[i].label for i in k.groups) + ")")
        if k.rows:
            parts.append("rows (" + ", ".join(k.dims[i].label for i in k.rows) + ")")
        parts.append(f"inner {k.dims[k.inner].label}")
    else:
        parts.append("groups (" + ", ".join(k.dims[i].label for i in k.groups) + ")")
        parts.append("rows (" + ", ".join(k.dims[i].label for i in k.rows) + ")")
        parts.append(f"columns {k.dims[k.inner].label}")
        if k.tail is not None:
            parts.append(f"tail {k.dims[k.tail].label}")
    return " · ".join(parts)


def render(kernel: Kernel, key: str) -> str:
    """The source of the module for a plan's kernel structure, with `key` in its header."""
    return tidy(environment().get_template(template_name(kernel)).render(**context(kernel, key)))


def tidy(source: str) -> str:
    """Drop the blank lines that template blocks leave inside function bodies."""
    lines = source.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip() and out:
            nxt = next((n for n in lines[i + 1:] if n.strip()), "")
            if (out[-1][:1] == " " and nxt[:1] == " ") or (len(out) > 1 and not out[-1].strip() and not out[-2].strip()):
                continue
        out.append(line)
    return "\n".join(out)
