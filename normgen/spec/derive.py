"""Symbolic derivatives of fused expressions (expr.py), so every fused spec gets a fused backward.

`derivative(e, name)` is ∂e/∂name as another expression tree, simplified as it is built
(constants folded, `0 * u` and `1 * u` and `u + 0` dropped), so that `x + residual` gives
`1` and `x * silu(z)` gives `silu(z)` for x. The derivatives of the functions are those of
DESIGN.md ("Fusion: prologue and epilogue"):

    relu' = step(u) = [u > 0]      silu' = s (1 + u (1 - s)), s = sigmoid(u)
    sigmoid' = s (1 - s)           tanh' = 1 - tanh(u)^2
    gelu' = ncdf(u) + u npdf(u)    gelu_tanh' from its tanh form (`gelu_tanh_form`)
    exp' = exp(u)                  square' = 2 u        abs' = sign(u)

    >>> str(derivative(parse_expr("x * silu(z)"), "z"))
    'x * (sigmoid(z) * (1 + z * (1 - sigmoid(z))))'
"""

from __future__ import annotations

import math

from .expr import Bin, Call, Expr, Neg, Num, Var

#: gelu_tanh(u) = 0.5 u (1 + tanh(C (u + A u^3))), torch's approximate="tanh"
GELU_TANH_C = math.sqrt(2.0 / math.pi)
GELU_TANH_A = 0.044715

ZERO, ONE = Num(0.0), Num(1.0)


def is_num(e: Expr, value: float | None = None) -> bool:
    return isinstance(e, Num) and (value is None or e.value == value)


def is_constant(e: Expr) -> bool:
    """True when e reads no variable."""
    return not e.names()


# ---- constructors that simplify --------------------------------------------------------


def neg(a: Expr) -> Expr:
    if isinstance(a, Num):
        return Num(-a.value)
    if isinstance(a, Neg):
        return a.arg
    return Neg(a)


def add(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Num) and isinstance(b, Num):
        return Num(a.value + b.value)
    if is_num(a, 0.0):
        return b
    if is_num(b, 0.0):
        return a
    if isinstance(b, Neg):
        return sub(a, b.arg)
    return Bin("+", a, b)


def sub(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Num) and isinstance(b, Num):
        return Num(a.value - b.value)
    if is_num(b, 0.0):
        return a
    if is_num(a, 0.0):
        return neg(b)
    if isinstance(b, Neg):
        return add(a, b.arg)
    return Bin("-", a, b)


def mul(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Num) and isinstance(b, Num):
        return Num(a.value * b.value)
    if isinstance(b, Num):  # constants first: 2 * u
        a, b = b, a
    if is_num(a, 0.0):
        return ZERO  # a derivative term that does not depend on the variable
    if is_num(a, 1.0):
        return b
    if is_num(a, -1.0):
        return neg(b)
    if isinstance(a, Neg) and isinstance(b, Neg):
        return mul(a.arg, b.arg)
    if isinstance(a, Neg):
        return neg(mul(a.arg, b))
    if isinstance(b, Neg):
        return neg(mul(a, b.arg))
    return Bin("*", a, b)


def div(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Num) and isinstance(b, Num) and b.value != 0.0:
        return Num(a.value / b.value)
    if is_num(b, 1.0):
        return a
    if is_num(a, 0.0):
        return ZERO
    return Bin("/", a, b)


def call(fn: str, a: Expr) -> Expr:
    return Call(fn, a)


# ---- derivatives ------------------------------------------------------------------------


def gelu_tanh_form(u: Expr) -> Expr:
    """gelu_tanh(u) written out: 0.5 * u * (1 + tanh(C * (u + A * u * u * u)))."""
    inner = mul(Num(GELU_TANH_C), add(u, mul(Num(GELU_TANH_A), mul(mul(u, u), u))))
    return mul(mul(Num(0.5), u), add(ONE, call("tanh", inner)))


def function_derivative(fn: str, u: Expr) -> Expr:
    """d fn(u) / du, as an expression of u."""
    if fn == "relu":
        return call("step", u)
    if fn == "silu":
        s = call("sigmoid", u)
        return mul(s, add(ONE, mul(u, sub(ONE, s))))
    if fn == "sigmoid":
        s = call("sigmoid", u)
        return mul(s, sub(ONE, s))
    if fn == "tanh":
        t = call("tanh", u)
        return sub(ONE, mul(t, t))
    if fn == "gelu":
        return add(call("ncdf", u), mul(u, call("npdf", u)))
    if fn == "gelu_tanh":
        v = Var("\0u")  # differentiate the written-out form in a placeholder, then put u back
        return substitute(derivative(gelu_tanh_form(v), v.name), {v.name: u})
    if fn == "exp":
        return call("exp", u)
    if fn == "square":
        return mul(Num(2.0), u)
    if fn == "abs":
        return call("sign", u)
    if fn == "ncdf":
        return call("npdf", u)
    if fn == "npdf":
        return neg(mul(u, call("npdf", u)))
    if fn in ("step", "sign"):
        return ZERO  # piecewise constant (their jumps have no derivative; 0 as in PyTorch)
    raise ValueError(f"no derivative for function {fn!r}")


def derivative(e: Expr, name: str) -> Expr:
    """∂e/∂name, simplified."""
    if isinstance(e, Num):
        return ZERO
    if isinstance(e, Var):
        return ONE if e.name == name else ZERO
    if isinstance(e, Neg):
        return neg(derivative(e.arg, name))
    if isinstance(e, Bin):
        da, db = derivative(e.a, name), derivative(e.b, name)
        if e.op == "+":
            return add(da, db)
        if e.op == "-":
            return sub(da, db)
        if e.op == "*":
            return add(mul(da, e.b), mul(e.a, db))
        # (a / b)' = a' / b - a b' / b^2
        return sub(div(da, e.b), div(mul(e.a, db), mul(e.b, e.b)))
    if isinstance(e, Call):
        du = derivative(e.arg, name)
        return ZERO if is_num(du, 0.0) else mul(function_derivative(e.fn, e.arg), du)
    raise TypeError(f"not an expression: {e!r}")


def substitute(e: Expr, values: dict[str, Expr]) -> Expr:
    """e with the variables in `values` replaced (and simplified again)."""
    if isinstance(e, Var):
        return values.get(e.name, e)
    if isinstance(e, Num):
        return e
    if isinstance(e, Neg):
        return neg(substitute(e.arg, values))
    if isinstance(e, Call):
        return call(e.fn, substitute(e.arg, values))
    a, b = substitute(e.a, values), substitute(e.b, values)
    return {"+": add, "-": sub, "*": mul, "/": div}[e.op](a, b)
