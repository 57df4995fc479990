"""Fused expressions as statements of a kernel's language (Numba Python or CUDA C).

`emit(outputs, env, target, prefix)` evaluates expression trees (spec/expr.py, and their
derivatives from spec/derive.py) per element: a subtree used twice, and every function
call, gets a temporary (`{prefix}0`, `{prefix}1`, ...), so `silu(z)` and its derivative
share one `sigmoid(z)`; the rest is written inline. Functions are first written in terms
of fewer ones (`lower`): silu(u) = u sigmoid(u), gelu(u) = u ncdf(u), gelu_tanh by its
tanh form, square(u) = u u. Constants are typed in the kernel's compute type, so float32
kernels compute in float32.

    >>> emit([("h", parse_expr("x * silu(z)"))], {"x": "x_v[i]", "z": "e_z_v[i]"}, "cpu", "p")
    ['p0 = dt(1.0) / (dt(1.0) + exp_f32(-e_z_v[i]))', 'h = x_v[i] * (e_z_v[i] * p0)']
"""

from __future__ import annotations

from collections import Counter

from ..spec.derive import gelu_tanh_form
from ..spec.expr import Bin, Call, Expr, Neg, Num, Var

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327

#: each target's spelling of the functions left after `lower`: a format of the argument {0}
#: (and of the target's literal {one}, {zero}, {half}, and its exponential {exp}: on the CPU the
#: prelude's exp_f32 / exp_f64, which vectorize, where np.exp calls the C library per element);
#: relu and step keep NaN as NaN / 0 as PyTorch does
FUNCTIONS = {
    "cpu": {
        "sigmoid": "{one} / ({one} + {exp}(-{0}))",
        "tanh": "np.tanh({0})",
        "exp": "{exp}({0})",
        "abs": "abs({0})",
        "relu": "({0} if not {0} <= {zero} else {zero})",
        "step": "({one} if {0} > {zero} else {zero})",
        "sign": "np.sign({0})",
        "ncdf": "{half} * ({one} + math.erf({0} * " + "{sqrt_half}))",
        "npdf": "{exp}(-{half} * {0} * {0}) * {inv_sqrt_2pi}",
    },
    "cuda": {
        "sigmoid": "{one} / ({one} + {exp}(-{0}))",
        "tanh": "{tanh}({0})",
        "exp": "{exp}({0})",
        "abs": "{fabs}({0})",
        "relu": "({0} <= {zero} ? {zero} : {0})",
        "step": "({0} > {zero} ? {one} : {zero})",
        "sign": "(CT)(({0} > {zero}) - ({0} < {zero}))",
        "ncdf": "{half} * ({one} + {erf}({0} * {sqrt_half}))",
        "npdf": "{exp}(-{half} * {0} * {0}) * {inv_sqrt_2pi}",
    },
}


def literal(value: float, target: str) -> str:
    """A constant in the compute type: dt(0.5) (Numba) or CT(0.5) (CUDA)."""
    text = repr(float(value))
    return f"dt({text})" if target == "cpu" else f"CT({text})"


def lower(e: Expr) -> Expr:
    """The tree with silu, gelu, gelu_tanh and square written in terms of other functions."""
    if isinstance(e, (Num, Var)):
        return e
    if isinstance(e, Neg):
        return Neg(lower(e.arg))
    if isinstance(e, Bin):
        return Bin(e.op, lower(e.a), lower(e.b))
    u = lower(e.arg)
    if e.fn == "silu":
        return Bin("*", u, Call("sigmoid", u))
    if e.fn == "gelu":
        return Bin("*", u, Call("ncdf", u))
    if e.fn == "gelu_tanh":
        return lower(gelu_tanh_form(u))
    if e.fn == "square":
        return Bin("*", u, u)
    return Call(e.fn, u)


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


#: the exponential each target and dtype calls
EXP = {("cpu", "float32"): "exp_f32", ("cpu", "float64"): "exp_f64",
       ("cpu", "float16"): "exp_f32", ("cpu", "bfloat16"): "exp_f32"}  # (half types compute in float32)


def _cuda_math(dtype: str) -> dict[str, str]:
    """CUDA's math functions in the compute type: expf, tanhf, erff, fabsf for float (the half
    types compute in float), exp, tanh, erf, fabs for double."""
    suffix = "" if dtype == "float64" else "f"
    return {f: f + suffix for f in ("exp", "tanh", "erf", "fabs")}


def emit(outputs: list[tuple[str, Expr]], env: dict[str, str], target: str, prefix: str,
         dtype: str = "float32") -> list[str]:
    """Statements that set each output variable to its expression, sharing common subtrees."""
    trees = [(name, lower(e)) for name, e in outputs]
    uses: Counter = Counter()
    for _, t in trees:
        _count(t, uses)
    lines: list[str] = []
    temps: dict[Expr, str] = {}
    consts = {"one": literal(1.0, target), "zero": literal(0.0, target), "half": literal(0.5, target),
              "sqrt_half": literal(_SQRT_HALF, target), "inv_sqrt_2pi": literal(_INV_SQRT_2PI, target),
              "exp": EXP.get((target, dtype), "exp"), "tanh": "tanh", "erf": "erf", "fabs": "fabs"}
    if target == "cuda":
        consts.update(_cuda_math(dtype))

    def code(e: Expr) -> tuple[str, int]:
        """(text, precedence) of a node: 4 atoms, 3 unary minus, 2 * /, 1 + -."""
        if e in temps:
            return temps[e], 4
        if isinstance(e, Num):
            return literal(e.value, target), 4
        if isinstance(e, Var):
            return env[e.name], 4
        if isinstance(e, Neg):
            text, p = code(e.arg)
            out = ("-" + (text if p >= 3 else f"({text})"), 3)
        elif isinstance(e, Bin):
            a, pa = code(e.a)
            b, pb = code(e.b)
            p = _PREC[e.op]
            a = a if pa >= p else f"({a})"
            b = b if pb > p else f"({b})"  # left-associative: equal precedence on the right needs parentheses
            out = (f"{a} {e.op} {b}", p)
        else:
            arg, p = code(e.arg)
            if p < 4:  # the formats use their argument as an operand, some of them twice
                arg = f"{prefix}{len(temps)}"
                lines.append(_assign(arg, code(e.arg)[0], target))
                temps[e.arg] = arg
            out = (FUNCTIONS[target][e.fn].format(arg, **consts), 4)
        if isinstance(e, Call) or uses[e] > 1:
            name = f"{prefix}{len(temps)}"
            lines.append(_assign(name, out[0], target))
            temps[e] = name
            return name, 4
        return out

    for name, t in trees:
        lines.append(_assign(name, code(t)[0], target))
    return lines


def _count(e: Expr, uses: Counter) -> None:
    """How often each subtree occurs (a shared subtree's children are counted once)."""
    uses[e] += 1
    if uses[e] == 1:
        for c in e.children():
            _count(c, uses)


def _assign(name: str, value: str, target: str) -> str:
    return f"{name} = {value}" if target == "cpu" else f"const CT {name} = {value};"
