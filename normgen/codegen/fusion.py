"""What the fused templates print: per-element statements and the arrays each pass walks.

The plan's `Fusion` (plan/fusion.py) says where each pass finds h; this module spells it
out for a template, in the template's names: element i of array `a` is `a_v[i]` (Numba), or
`a_e`, loaded by the CUDA template before the statements (which store with `st(a, a_o, v)`);
the prologue's value is `hv`, the normalized affine value `yv`, the epilogue's value `o`, the
gradient of y (after the epilogue's chain rule) `gy`, the gradient of h `dhv`.

    forward   moments pass   `pro`: hv from x_v[i] and the extras (stored into `hb_v[i]`)
              normalize      `h_load` (when h is read back) or `pro` again; `epi`: o from yv
    backward  sums pass      `h_sums` then `epi_gy`
              apply pass     `h_apply` (hv and the prologue's derivative factors), `epi_apply`
                             (gy and the epilogue's factors), then `grads`: dx_v[i], d_<e>_v[i]
"""

from __future__ import annotations

from typing import Any

from ..plan.model import Direction, Fusion, HSource, Kernel, extra_array, extra_grad
from ..spec.derive import derivative
from ..spec.expr import Expr, Num
from .exprs import emit, literal

#: the largest magnitude of each quantized type, and its storage type on the CPU
QMAX = {"int8": 127.0, "float8_e4m3": 448.0}


def _elem(a: str, target: str = "cpu") -> str:
    """Element i of array `a` as the statements read it."""
    return f"{a}_v[i]" if target == "cpu" else f"{a}_e"


def _set(name: str, value: str, target: str) -> str:
    """A local variable of the compute type."""
    return f"{name} = {value}" if target == "cpu" else f"const CT {name} = {value};"


def _times(factor: str | Expr, var: str, target: str) -> str:
    """`var * factor`, with the factor folded when it is a number (no `dh * 1`)."""
    if isinstance(factor, Num):
        if factor.value == 1.0:
            return var
        return f"{var} * {literal(factor.value, target)}"
    return f"{var} * {factor}"


def fused_context(k: Kernel) -> dict[str, Any] | None:
    """The `fx` of a fused kernel's template context (None for a plain kernel)."""
    f = k.fusion
    if f is None:
        return None
    t, dt = k.target, k.dtype
    pro_arrays = tuple(extra_array(e) for e in f.pro_inputs)
    epi_arrays = tuple(extra_array(e) for e in f.epi_inputs)
    pro_env = {"x": _elem("x", t), **{e: _elem(extra_array(e), t) for e in f.pro_inputs}}
    epi_env = {"y": "yv", **{e: _elem(extra_array(e), t) for e in f.epi_inputs}}
    pro = emit([("hv", f.prologue)], pro_env, t, "p", dt) + _rounded(k) if f.prologue is not None else [_set("hv", _elem("x", t), t)]
    out: dict[str, Any] = {"h_from": f.h_from.value, "keep": f.keep, "prologue": f.prologue is not None,
                           "epilogue": f.epilogue is not None, "pro": pro, "pro_arrays": pro_arrays,
                           "epi_arrays": epi_arrays, "quantize": f.quantize, "dh": f.dh,
                           "doc": _doc(f)}
    if f.quantize:
        out["qmax"] = literal(QMAX[f.quantize], t)
        out["qmax_f"] = f"{QMAX[f.quantize]}f"  # CUDA: the scale and the codes are computed in float
    if k.direction is Direction.FORWARD:
        out["epi"] = emit([("o", f.epilogue)], epi_env, t, "q", dt) if f.epilogue is not None else [_set("o", "yv", t)]
        out["moments_arrays"] = ("x",) + pro_arrays + (("h",) if f.keep else ())
        source = {HSource.X: ("x",), HSource.STORED: ("h",), HSource.HELD: (),
                  HSource.RECOMPUTE: ("x",) + pro_arrays}[f.h_from]
        out["normalize_arrays"] = _unique(source + epi_arrays + ("y",))
        out["apply_arrays"] = _unique(("x",) + pro_arrays + epi_arrays + ("y",) + (("h",) if f.keep else ()))
        out["h_load"] = {HSource.X: [_set("hv", _elem("x", t), t)], HSource.STORED: [_set("hv", _elem("h", t), t)],
                         HSource.HELD: ["hv = hb_v[i]"], HSource.RECOMPUTE: pro}[f.h_from]
    else:
        out.update(_backward(f, t, dt, pro_arrays, epi_arrays, pro_env, epi_env, _rounded(k)))
    # templates join these lists with their own
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _rounded(k: Kernel) -> list[str]:
    """Half types on the CPU: h rounded to the input dtype where it is computed, as PyTorch's
    elementwise op stores it, so statistics, y, the kept h and the backward see one h."""
    return ["hv = round_half(hv, bf16)"] if k.target == "cpu" and k.dtype in ("float16", "bfloat16") else []


def _backward(f: Fusion, t: str, dt: str, pro_arrays: tuple[str, ...], epi_arrays: tuple[str, ...],
              pro_env: dict[str, str], epi_env: dict[str, str], rounded: list[str]) -> dict[str, Any]:
    source = {HSource.X: ("x",), HSource.STORED: ("h",), HSource.FROM_Y: ("y",),
              HSource.RECOMPUTE: ("x",) + pro_arrays}[f.h_from]
    recompute = f.h_from is HSource.RECOMPUTE
    h_lines = {HSource.X: [_set("hv", _elem("x", t), t)], HSource.STORED: [_set("hv", _elem("h", t), t)],
               HSource.FROM_Y: [],
               HSource.RECOMPUTE: emit([("hv", f.prologue)], pro_env, t, "p", dt) + rounded if recompute else []}[f.h_from]
    # the prologue's derivative factors: numbers are folded into `grads`, expressions get a variable
    factors: dict[str, Expr | str] = {}
    outputs = [("hv", f.prologue)] if recompute else []
    if f.prologue is not None:
        for name in ("x",) + tuple(e for e in f.pro_inputs if e in f.grads):
            d = derivative(f.prologue, name)
            if isinstance(d, Num):
                factors[name] = d
            else:
                outputs.append((f"p_{name}", d))
                factors[name] = f"p_{name}"
    h_apply = emit(outputs, pro_env, t, "p", dt) + rounded if recompute else \
        list(h_lines) + emit(outputs, pro_env, t, "p", dt)
    derivs = (("x",) if f.reads_x and not recompute else ()) + (pro_arrays if f.reads_pro and not recompute else ())
    epi_gy = epi_apply = []
    efactors: dict[str, str] = {}
    if f.epilogue is not None:
        gy = ("gy_e", derivative(f.epilogue, "y"))
        epi_gy = emit([gy], epi_env, t, "q", dt) + [_set("gy", f"{_elem('dy', t)} * gy_e", t)]
        extra = [(f"f_{e}", derivative(f.epilogue, e)) for e in f.epi_inputs if e in f.grads]
        epi_apply = emit([gy] + extra, epi_env, t, "q", dt) + [_set("gy", f"{_elem('dy', t)} * gy_e", t)]
        efactors = {e: f"f_{e}" for e in f.epi_inputs if e in f.grads}
    grads = []
    if f.prologue is None:
        grads.append(_assign("dx", "dhv", t))
    else:
        grads.append(_assign("dx", _times(factors["x"], "dhv", t), t))
    for e in f.grads:
        terms = []
        if e in f.pro_inputs:
            terms.append(_times(factors[e], "dhv", t))
        if e in efactors:
            terms.append(f"{_elem('dy', t)} * {efactors[e]}")
        grads.append(_assign(extra_grad(e), " + ".join(terms), t))
    return {"h_sums": h_lines, "h_apply": h_apply, "epi_gy": epi_gy, "epi_apply": epi_apply, "grads": grads,
            "from_y": f.h_from is HSource.FROM_Y,
            "sums_arrays": _unique(source + epi_arrays + ("dy",)),
            "apply_arrays": _unique(source + derivs + epi_arrays + ("dy",) + (("dh",) if f.dh else ())
                                    + ("dx",) + tuple(extra_grad(e) for e in f.grads))}


def _assign(array: str, value: str, target: str) -> str:
    """Element i of an output array set to `value`."""
    return f"{array}_v[i] = {value}" if target == "cpu" else f"st({array}, {array}_o, {value});"


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _doc(f: Fusion) -> str:
    parts = []
    if f.prologue is not None:
        parts.append(f"h = {f.prologue}" + (" (written)" if f.keep else ""))
    if f.epilogue is not None:
        parts.append(f"out = {f.epilogue}")
    if f.quantize:
        parts.append(f"quantized to {f.quantize} per group")
    if f.h_from is HSource.FROM_Y:
        parts.append("x_hat from y (save='y')")
    return "; ".join(parts)
