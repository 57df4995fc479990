"""Render a Plan's kernel structure to source code with the Jinja2 templates in templates/.

Templates only format: every number, name and choice they print comes from the plan
through `context()`. The environment uses StrictUndefined, so a variable the template
expects and the context lacks is an error, not an empty string. After the templates, three
finishing touches that need the whole text: each kernel unpacks the geometry entries it
uses (and no others), a CPU module imports the helpers it calls (and no others), and the
header's key is the hash of the code below the header, so identical bodies share a key
(and one compiled module).

    >>> source = render(plan.kernel)
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import jinja2

from .. import __version__
from ..paths import templates_dir
from ..plan.geometry import STRIDE_PREFIX, geometry_fields, stride_prefix
from ..plan.launch_cuda import ITEMSIZE, launch_bounds, stream_batch
from ..plan.model import Kernel, Reduction, Strategy
from ..plan.traffic import shared_doubles
from ..spec import Center, Scale
from . import PRELUDE_DIR
from .abi import ENTRY_DOC, arguments, signature
from .fusion import fused_context

#: CUDA storage type, compute type, load and store of each dtype, and the 16-byte vector type
CUDA_TYPES = {
    "float32": ("float", "float", "p[i]", "v", "float4"),
    "float64": ("double", "double", "p[i]", "v", "double2"),
    "float16": ("__half", "float", "__half2float(p[i])", "__float2half_rn(v)", "uint4"),
    "bfloat16": ("__nv_bfloat16", "float", "__bfloat162float(p[i])", "__float2bfloat16_rn(v)", "uint4"),
}
#: the fields of each vector type, in memory order
VECTOR_LANES = {"float4": "xyzw", "double2": "xy", "uint4": "xyzw", "uint2": "xy"}
#: a half type's bits and back (16-byte vectors of half types move as uint4)
HALF_BITS = {"float16": ("__half_as_ushort", "__ushort_as_half"),
             "bfloat16": ("__bfloat16_as_ushort", "__ushort_as_bfloat16")}
#: what generated CPU modules may import, and from where
_CPU_IMPORTS = {"math": "import math", "np": "import numpy as np", "float64": "from numba import float64",
                "dt": "from numba import {dtype} as dt"}
_CPU_PRELUDE = ("add_chunk", "add_squares", "affine_row", "chan", "col_add", "col_add4", "col_dev", "col_dev2",
                "col_grad", "col_grad2", "dev_sums", "exp_f32", "exp_f64", "grad_row", "half_to_f32", "ld_half",
                "round_half", "st_half", "sum_f64")
#: CPU kernels take these as uint16 bits and compute in float32 (one code for both: see half.j2)
CPU_HALF = ("float16", "bfloat16")
_FINALIZE_DOC = {Scale.STD: "rstd = 1 / sqrt(M2 / n + eps)", Scale.RMS: "rstd = 1 / sqrt(sum(x^2) / n + eps)",
                 Scale.L2: "rstd = 1 / sqrt(sum(x_c^2) + eps)", Scale.NONE: "rstd = 1"}
_KEY = "@key"
_KERNELS = "@kernels"


@dataclass(frozen=True)
class Source:
    """A rendered module: its text, and the key of its body (the code below the header)."""

    text: str
    key: str


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
    """One template per target and strategy; a fused plan's loops have templates of their own."""
    ext = "cu" if kernel.target == "cuda" else "py"
    fused = "_fused" if kernel.fusion is not None else ""
    return f"{kernel.target}/{kernel.strategy.value}{fused}.{ext}.j2"


def context(k: Kernel) -> dict[str, Any]:
    """Everything a template prints, derived from the kernel structure of a plan."""
    dims = [{"name": d.name, "label": d.label, "kept": d.kept, "affine": d.affine, "stat": d.stat,
             "role": "kept" if d.kept else "reduced"} for d in k.dims]

    def label(ds: list[dict[str, Any]]) -> str:
        return ", ".join(d["label"] for d in ds) or "nothing"

    groups = [dims[i] for i in k.groups]
    rows = [dims[i] for i in k.rows]
    inner = dims[k.inner]
    tail = dims[k.tail] if k.tail is not None else None
    names = tuple(dict.fromkeys(("x", "y", "dy", "dx") + k.arrays + ("stat", "param")))

    def classes(dim: int | None) -> dict[str, str]:
        return {a: (k.stride_class(a, dim) if (a in k.arrays or a in ("stat", "param")) else "0") for a in names}

    reduced = [d for d in dims if not d["kept"]]
    cls = classes(k.inner)
    ctx = {
        "version": __version__, "template": template_name(k).split("/", 1)[1], "key": _KEY, "kernels_doc": _KERNELS,
        "spec_name": k.spec, "spec_from": k.spec_from,
        "center": k.center.value, "scale": k.scale.value, "finalize_doc": _FINALIZE_DOC[k.scale],
        "summary": summary(k), "dims_line": " ".join(f"{d['label']}({'K' if d['kept'] else 'R'})" for d in dims),
        "direction": k.direction.value, "dtype": k.dtype,
        "dims": dims, "groups": groups, "rows": rows, "inner": inner, "col": inner, "tail": tail,
        "groups_label": label(groups), "rows_label": label(rows), "reduced_label": label(reduced),
        "cls": cls, "tcls": classes(k.tail),
        "pre": {**{a: stride_prefix(a) for a in ("x", "y", "dy", "dx") + k.arrays},
                "s": STRIDE_PREFIX["stat"], "p": STRIDE_PREFIX["param"]},
        "has_weight": k.has_weight, "has_bias": k.has_bias, "affine": k.affine,
        "affine_inner": cls["param"] != "0",
        "centered": k.center is Center.MEAN,
        "split": k.dtype in ("float32", *CPU_HALF) and k.center is Center.MEAN,
        "half": k.target == "cpu" and k.dtype in CPU_HALF,
        "per_count": k.scale in (Scale.STD, Scale.RMS), "reduce_by": k.reduction.value,
        "sig": {entry: _wrap(signature(k, entry), k.target) for entry in ENTRY_DOC},
        "fx": fused_context(k),
    }
    if k.target == "cuda":
        ctype, compute, load, store, vtype = CUDA_TYPES[k.dtype]
        vbytes = k.vec * ITEMSIZE[k.dtype]
        vtype = "uint2" if vbytes == 8 else vtype  # half types, 4 at a time
        ctx.update(prelude=cuda_prelude(), ctype=ctype, compute=compute, load_expr=load, store_expr=store,
                   vtype=vtype, vbytes=vbytes, lanes=VECTOR_LANES[vtype], bits=HALF_BITS.get(k.dtype), vec=k.vec, cache=k.cache,
                   tile=k.tile, copies=k.copies, span=k.span, wide=k.wide, flush=stream_batch(k)[0], scalar_batch=stream_batch(k)[1],
                   bounds=launch_bounds(k),
                   noun={"x": "x", "y": "y", "dy": "dy", "dx": "dx", "s": "stat", "p": "param"},
                   shared={entry: shared_doubles(k, entry) for entry in ENTRY_DOC},
                   usig={entry: _wrap(signature(k, entry) + "".join(f", NG_SHARED_PTR(double) {name}"
                                                                   for name in shared_doubles(k, entry)), k.target)
                         for entry in ENTRY_DOC},
                   uargs={entry: ", ".join([a.name for a in arguments(k, entry)] + list(shared_doubles(k, entry)))
                          for entry in ENTRY_DOC})
    return ctx


def _wrap(params: str, target: str) -> str:
    """A CUDA parameter list broken into lines of at most ~110 characters (4-space indent)."""
    if target != "cuda":
        return params
    lines, line = [], ""
    for p in params.split(", "):
        if line and len(line) + len(p) + 2 > 110:
            lines.append(line + ",")
            line = p
        else:
            line = f"{line}, {p}" if line else p
    return "\n    ".join(lines + [line])


def summary(k: Kernel) -> str:
    """One line: direction, dtype, strategy and the roles of the loop dims."""
    parts = [k.direction.value, k.dtype, k.strategy.value]
    if k.reduction is Reduction.PARAMS:
        parts.append("parameter-gradient reduction")
    parts.append("groups (" + ", ".join(k.dims[i].label for i in k.groups) + ")")
    if k.rows or k.strategy is Strategy.COLUMNS:
        parts.append("rows (" + ", ".join(k.dims[i].label for i in k.rows) + ")")
    if k.strategy is Strategy.ROWS:
        parts.append(f"inner {k.dims[k.inner].label}")
    else:
        parts.append(f"columns {k.dims[k.inner].label}")
        if k.tail is not None:
            parts.append(f"tail {k.dims[k.tail].label}")
    return " · ".join(parts)


def render(kernel: Kernel) -> Source:
    """The source of the module for a plan's kernel structure."""
    text = tidy(environment().get_template(template_name(kernel)).render(**context(kernel)))
    text = _unpack_geometry(text, kernel)
    if kernel.target == "cpu":
        text = _imports(text, kernel.dtype)
    text = _kernels_doc(text, kernel.target)
    key = body_key(text, kernel.target)
    return Source(text.replace(_KEY, key, 1), key)


def body_key(text: str, target: str) -> str:
    """sha256 (32 hex digits) of everything below the leading comment block."""
    mark = "//" if target == "cuda" else "#"
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith(mark)), len(lines))
    body = "\n".join(lines[start:])
    return hashlib.sha256(f"normgen={__version__}\0{target}\0{body}".encode()).hexdigest()[:32]


def _unpack_geometry(text: str, kernel: Kernel) -> str:
    """Replace each kernel's unpack marker with the geometry entries its body uses."""
    fields = geometry_fields(kernel)
    cuda = kernel.target == "cuda"
    marker = "//@unpack" if cuda else "#@unpack"
    lines = text.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() != marker:
            out.append(line)
            continue
        body = _function_body(lines, i + 1, cuda)
        used = set(re.findall(r"\b\w+\b", body))
        for index, f in enumerate(fields):
            if f.name in used:
                out.append(f"    const long long {f.name} = g[{index}];  // {f.doc}" if cuda
                           else f"    {f.name} = g[{index}]  # {f.doc}")
    return "\n".join(out)


def _function_body(lines: list[str], start: int, cuda: bool) -> str:
    """The lines of the function body that starts at `start`: up to the closing brace at
    column 0 (CUDA), or to the next text at column 0 (Python)."""
    end = start
    while end < len(lines) and (lines[end] != "}" if cuda else (not lines[end] or lines[end][0] in " \t")):
        end += 1
    return "\n".join(lines[start:end])


def _imports(text: str, dtype: str) -> str:
    """The import block of a CPU module: exactly what it uses."""
    used = set(re.findall(r"\b\w+\b", text))
    lines = [_CPU_IMPORTS[n] for n in ("math", "np") if n in used]
    lines.append("from numba import " + ", ".join(n for n in ("float64", "njit") if n in used))
    if "dt" in used:
        lines.append(_CPU_IMPORTS["dt"].format(dtype="float32" if dtype in CPU_HALF else dtype))
    prelude = [n for n in _CPU_PRELUDE if n in used]
    if prelude:
        lines.append("")
        lines.append(_import_line("from normgen.codegen.cpu_prelude import ", prelude))
    return text.replace("#@imports", "\n".join(lines), 1)


def _import_line(head: str, names: list[str]) -> str:
    """`head` + names, wrapped in parentheses at 120 characters."""
    one = head + ", ".join(names)
    if len(one) <= 120:
        return one
    pad = " " * (len(head) + 1)
    lines, line = [], head + "("
    for n in names:
        piece = n + ", "
        if len(line) + len(piece) > 119:
            lines.append(line.rstrip())
            line = pad
        line += piece
    return "\n".join(lines + [line.rstrip(", ") + ")"])


def _kernels_doc(text: str, target: str) -> str:
    """The header's list of the module's entry points, one line each with what it does."""
    pattern = r'^extern "C" __global__ void (?:__launch_bounds__\([\d, ]+\) )?(\w+)\(' if target == "cuda" \
        else r"^def ([a-z]\w*)\("
    entries = [e for e in re.findall(pattern, text, flags=re.M) if e in ENTRY_DOC]
    mark = "//" if target == "cuda" else "#"
    width = max(len(e) for e in entries)
    lines = [f"{e:<{width}}  {ENTRY_DOC[e]}" for e in entries]
    return text.replace(_KERNELS, f"\n{mark}            ".join(lines), 1)


def tidy(source: str) -> str:
    """Drop the blank lines that template blocks leave inside function bodies."""
    lines = source.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip() and out:
            nxt = next((n for n in lines[i + 1:] if n.strip()), "")
            if ((out[-1][:1] == " " and nxt[:1] == " ") or nxt == "}"
                    or (len(out) > 1 and not out[-1].strip() and not out[-2].strip())):
                continue
        out.append(line)
    return "\n".join(out)
