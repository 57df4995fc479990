"""The oracle's evaluation of fused expressions, in NumPy float64, on its own.

It walks the spec's expression tree (spec/expr.py) directly and differentiates it in
forward mode: every node yields its value and its derivative with respect to one chosen
variable, with the derivatives of the functions written out here from the math (DESIGN.md,
"Fusion"), not taken from spec/derive.py or the code generators. Tests compare both with
central finite differences.

    >>> value(parse_expr("x * silu(z)"), {"x": x, "z": z})
    >>> grad(parse_expr("x * silu(z)"), {"x": x, "z": z}, "z")     # x * silu'(z)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..spec.expr import Bin, Call, Expr, Neg, Num, Var

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(u: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow for large |u|
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _phi(u: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * u * u) / _SQRT2PI


def _cdf(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(u / _SQRT2))


_K, _A = math.sqrt(2.0 / math.pi), 0.044715


def _gelu_tanh(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative of 0.5 u (1 + tanh(K (u + A u^3)))."""
    t = np.tanh(_K * (u + _A * u ** 3))
    return 0.5 * u * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * _K * (1.0 + 3.0 * _A * u * u)


def _function(fn: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(u) and f'(u)."""
    if fn == "relu":
        return np.maximum(u, 0.0), (u > 0).astype(np.float64)
    if fn == "silu":
        s = _sigmoid(u)
        return u * s, s * (1.0 + u * (1.0 - s))
    if fn == "sigmoid":
        s = _sigmoid(u)
        return s, s * (1.0 - s)
    if fn == "tanh":
        t = np.tanh(u)
        return t, 1.0 - t * t
    if fn == "gelu":
        return u * _cdf(u), _cdf(u) + u * _phi(u)
    if fn == "gelu_tanh":
        return _gelu_tanh(u)
    if fn == "exp":
        e = np.exp(u)
        return e, e
    if fn == "square":
        return u * u, 2.0 * u
    if fn == "abs":
        return np.abs(u), np.sign(u)
    # the functions derivatives are written with (spec/derive.py), so tests can evaluate those too
    if fn == "step":
        return (u > 0).astype(np.float64), np.zeros_like(u)
    if fn == "sign":
        return np.sign(u), np.zeros_like(u)
    if fn == "ncdf":
        return _cdf(u), _phi(u)
    if fn == "npdf":
        return _phi(u), -u * _phi(u)
    raise ValueError(f"unknown function {fn!r}")


def _eval(e: Expr, env: Mapping[str, np.ndarray], wrt: str | None) -> tuple[np.ndarray, np.ndarray | float]:
    """(value, d value / d wrt) of a node; the derivative is 0.0 when wrt is None or absent."""
    if isinstance(e, Num):
        return np.float64(e.value), 0.0
    if isinstance(e, Var):
        return np.asarray(env[e.name], dtype=np.float64), (1.0 if e.name == wrt else 0.0)
    if isinstance(e, Neg):
        v, d = _eval(e.arg, env, wrt)
        return -v, -d
    if isinstance(e, Bin):
        a, da = _eval(e.a, env, wrt)
        b, db = _eval(e.b, env, wrt)
        if e.op == "+":
            return a + b, da + db
        if e.op == "-":
            return a - b, da - db
        if e.op == "*":
            return a * b, da * b + a * db
        return a / b, (da * b - a * db) / (b * b)
    if isinstance(e, Call):
        u, du = _eval(e.arg, env, wrt)
        f, fp = _function(e.fn, u)
        return f, fp * du
    raise TypeError(f"not an expression: {e!r}")


def value(e: Expr, env: Mapping[str, np.ndarray]) -> np.ndarray:
    """The expression's value, elementwise, in float64, broadcast to the shape of the inputs."""
    shape = np.broadcast_shapes(*(np.shape(v) for v in env.values()))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        v = _eval(e, env, None)[0]
    return np.broadcast_to(np.asarray(v, dtype=np.float64), shape).copy()


def grad(e: Expr, env: Mapping[str, np.ndarray], wrt: str) -> np.ndarray:
    """∂e/∂wrt, elementwise, broadcast to the shape of the inputs."""
    shape = np.broadcast_shapes(*(np.shape(v) for v in env.values()))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d = _eval(e, env, wrt)[1]
    return np.broadcast_to(np.asarray(d, dtype=np.float64), shape).copy()
