"""Fused specs in the spec language: expressions parse, print and differentiate; bad
expressions fail with a caret under the token (pinned); random expressions never crash
the loader."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normgen import SpecError, build_spec, parse_spec
from normgen.spec.derive import derivative, is_constant
from normgen.spec.expr import FUNCTIONS, ExprSyntaxError, parse_expr
from normgen.verify import npexpr

BASE = '''
input = "*batch *normalized"
kept = "*batch"
center = "none"
scale = "rms"
[sizes]
normalized = "normalized_shape"
[affine]
axes = "*normalized"
bias = false
'''


def _err(fuse: str, base: str = BASE) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(base).lstrip() + textwrap.dedent(fuse).lstrip(), "my_norm.toml",
                   default_name="my_norm")
    return str(info.value)


PINNED = {
    "unknown function": (
        '''
        [fuse]
        prologue = "x + swish(residual)"
        ''',
        '''my_norm.toml:11:17: key 'fuse.prologue': unknown function 'swish'
            prologue = "x + swish(residual)"
                            ^^^^^
          allowed: relu, silu, sigmoid, tanh, gelu, gelu_tanh, exp, square, abs'''),
    "y in a prologue": (
        '''
        [fuse]
        prologue = "x * y"
        ''',
        '''my_norm.toml:11:17: key 'fuse.prologue': 'y' in the prologue: the prologue runs before normalization, so y does not exist yet
            prologue = "x * y"
                            ^
          allowed: 'x', extra inputs, numbers, + - * /, and relu, silu, sigmoid, tanh, gelu, gelu_tanh, exp, square, abs'''),
    "x in an epilogue": (
        '''
        [fuse]
        epilogue = "y + x"
        ''',
        '''my_norm.toml:11:17: key 'fuse.epilogue': 'x' in the epilogue: the epilogue sees y, the normalized output; x is the prologue's input
            epilogue = "y + x"
                            ^
          allowed: 'y', extra inputs, numbers, + - * /, and relu, silu, sigmoid, tanh, gelu, gelu_tanh, exp, square, abs'''),
    "empty expression": (
        '''
        [fuse]
        epilogue = "  "
        ''',
        '''my_norm.toml:11:13: key 'fuse.epilogue': the expression is empty
            epilogue = "  "
                        ^^
          allowed: an expression such as "x + residual" or "silu(y)"'''),
    "dangling operator": (
        '''
        [fuse]
        prologue = "x * (residual +"
        ''',
        '''my_norm.toml:11:28: key 'fuse.prologue': the expression ends where a number, a name or '(' is expected
            prologue = "x * (residual +"
                                       ^
          allowed: an operand after the operator'''),
    "two operators": (
        '''
        [fuse]
        prologue = "x ** 2"
        ''',
        '''my_norm.toml:11:16: key 'fuse.prologue': expected a number, a name or '(', found '*'
            prologue = "x ** 2"
                           ^
          allowed: an operand: a number, x or y, an extra input, a call, or '(...)\''''),
    "function without parentheses": (
        '''
        [fuse]
        epilogue = "silu * y"
        ''',
        '''my_norm.toml:11:13: key 'fuse.epilogue': function 'silu' needs its argument in parentheses
            epilogue = "silu * y"
                        ^^^^
          allowed: silu(...)'''),
    "prologue without x": (
        '''
        [fuse]
        prologue = "residual * 2"
        ''',
        '''my_norm.toml:11:13: key 'fuse.prologue': the prologue does not use 'x'
            prologue = "residual * 2"
                        ^^^^^^^^^^^^
          allowed: an expression of 'x' and extra inputs, e.g. "x + residual"'''),
    "extra input named like a parameter": (
        '''
        [fuse]
        prologue = "x * weight"
        ''',
        '''my_norm.toml:11:17: key 'fuse.prologue': 'weight' names an argument the op already has, not an extra input
            prologue = "x * weight"
                            ^^^^^^
          allowed: any other identifier, e.g. residual, gate, z'''),
    "keep without a prologue": (
        '''
        [fuse]
        epilogue = "silu(y)"
        keep_prologue = true
        ''',
        '''my_norm.toml:12:17: key 'fuse.keep_prologue': keep_prologue = true without a prologue
            keep_prologue = true
                            ^
          allowed: a prologue such as prologue = "x + residual", or remove keep_prologue'''),
    "unknown quantization": (
        '''
        [fuse]
        quantize = "int4"
        ''',
        '''my_norm.toml:11:13: key 'fuse.quantize': unknown quantization 'int4'
            quantize = "int4"
                        ^^^^
          allowed: 'int8', 'float8_e4m3' (float8_e4m3 on CUDA only)'''),
    "unknown key in [fuse]": (
        '''
        [fuse]
        prolog = "x + r"
        ''',
        '''my_norm.toml:11:1: key 'fuse.prolog': unknown key 'prolog' in table [fuse]
            prolog = "x + r"
            ^^^^^^
          allowed: prologue, keep_prologue, epilogue, quantize'''),
    "weight offset without a weight": (
        '''
        [fuse]
        epilogue = "y"
        ''',
        '''my_norm.toml:11:17: key 'affine.weight_offset': weight_offset without a weight
            weight_offset = 1.0
                            ^
          allowed: weight = true (or a name), or remove weight_offset'''),
}


@pytest.mark.parametrize("case", list(PINNED), ids=lambda c: c.replace(" ", "-"))
def test_pinned_fusion_errors(case):
    fuse, message = PINNED[case]
    base = BASE.replace("bias = false", "bias = true\nweight = false\nweight_offset = 1.0") \
        if case == "weight offset without a weight" else BASE
    assert _err(fuse, base) == textwrap.dedent(message).replace("\n        ", "\n")


def test_python_built_fused_spec_and_its_errors():
    spec = build_spec("gated", "N C", kept="N", center="none", scale="rms", affine={"axes": "C", "bias": False},
                      fuse={"prologue": "x * silu(gate)", "epilogue": "y * f"})
    assert spec.extras == ("gate", "f")
    assert spec.fuse.prologue_inputs == ("gate",) and spec.fuse.epilogue_inputs == ("f",)
    with pytest.raises(SpecError) as info:
        build_spec("gated", "N C", kept="N", fuse={"prologue": "x + tanh(q) + y"})
    assert str(info.value) == (
        "<python>: key 'fuse.prologue': 'y' in the prologue: the prologue runs before normalization, so y does "
        "not exist yet\n"
        '    prologue = "x + tanh(q) + y"\n'
        "                              ^\n"
        "  allowed: 'x', extra inputs, numbers, + - * /, and " + ", ".join(FUNCTIONS))


def test_parse_precedence_and_printing():
    assert str(parse_expr("x+r*2")) == "x + r * 2"
    assert str(parse_expr("(x+r)*2")) == "(x + r) * 2"
    assert str(parse_expr("x-(a-b)")) == "x - (a - b)"
    assert str(parse_expr("x/(a*b)")) == "x / (a * b)"
    assert str(parse_expr("--x")) == "--x"
    assert parse_expr("x - a - b") == parse_expr("(x - a) - b")
    assert parse_expr(" silu( x )") == parse_expr("silu(x)")


def test_derivatives_simplify():
    assert str(derivative(parse_expr("x + residual"), "x")) == "1"
    assert str(derivative(parse_expr("x + residual"), "residual")) == "1"
    assert str(derivative(parse_expr("x * silu(z)"), "x")) == "silu(z)"
    assert str(derivative(parse_expr("x - 2 * r"), "r")) == "-2"
    assert str(derivative(parse_expr("relu(y)"), "y")) == "step(y)"
    assert str(derivative(parse_expr("abs(y)"), "y")) == "sign(y)"
    assert is_constant(derivative(parse_expr("3 * x - r / 4"), "r"))


# ---- random expressions --------------------------------------------------------------

NAMES = ["x", "r", "z"]


def _exprs(max_leaves: int = 12):
    leaf = st.one_of(st.sampled_from(NAMES), st.sampled_from(["0.5", "2", "1.5e-1", "3"]))

    def extend(children):
        return st.one_of(
            st.tuples(children, st.sampled_from("+-*/"), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(st.sampled_from(FUNCTIONS), children).map(lambda t: f"{t[0]}({t[1]})"),
            children.map(lambda c: f"-{c}"))
    return st.recursive(leaf, extend, max_leaves=max_leaves)


@settings(max_examples=200, deadline=None)
@given(_exprs())
def test_printing_round_trips(text):
    e = parse_expr(text)
    assert parse_expr(str(e)) == e


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_exprs(8), st.sampled_from(NAMES))
def test_symbolic_derivative_matches_finite_differences(text, name):
    """derive.py against central differences of the oracle's evaluation, at points away from kinks."""
    e = parse_expr(text)
    d = derivative(e, name)
    rng = np.random.default_rng(len(text))
    env = {n: rng.uniform(0.3, 1.2, 16) * rng.choice([-1, 1], 16) for n in NAMES}
    h = 1e-6
    up = npexpr.value(e, {**env, name: env[name] + h})
    down = npexpr.value(e, {**env, name: env[name] - h})
    num = (up - down) / (2 * h)
    sym = np.broadcast_to(npexpr.value(d, env), num.shape)
    fwd = npexpr.grad(e, env, name)
    base = npexpr.value(e, env)
    # compare where the function is smooth and moderate around the point (no kink, pole or overflow inside h)
    smooth = np.isfinite(num) & np.isfinite(sym) & (np.abs(base) < 1e4) & (np.abs(num) < 1e4)
    for fn in ("relu", "abs"):  # kinks: skip points within 1e-4 of one
        if fn in text:
            smooth &= _away_from_kinks(e, env, name)
    np.testing.assert_allclose(sym[smooth], num[smooth], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fwd[smooth], sym[smooth], rtol=1e-9, atol=1e-12)


def _away_from_kinks(e, env, name):
    from normgen.spec.expr import Call

    ok = np.ones(16, bool)
    stack = [e]
    while stack:
        node = stack.pop()
        if isinstance(node, Call) and node.fn in ("relu", "abs"):
            ok &= np.abs(npexpr.value(node.arg, env)) > 1e-4
        stack.extend(node.children())
    return ok


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(list("xyrz0123456789.eE+-*/() _,\\'") + ["silu", "gelu_tanh", "foo", "weight", "é"]),
                max_size=40).map("".join), st.sampled_from(["prologue", "epilogue", "quantize"]))
def test_loader_never_crashes_on_random_expressions(text, key):
    toml = textwrap.dedent(BASE).lstrip() + f'[fuse]\n{key} = "{text}"\n'
    try:
        spec = parse_spec(toml, "fuzz.toml", default_name="fuzz")
    except SpecError as e:
        assert e.location is not None and e.location.file == "fuzz.toml", str(e)
        assert e.location.line is not None, str(e)  # every expression error points into the file
        return
    assert spec.fuse is not None


@settings(max_examples=200, deadline=2000)
@given(st.text(max_size=80))
def test_parser_raises_only_syntax_errors(text):
    try:
        parse_expr(text)
    except ExprSyntaxError as e:
        assert 0 <= e.offset <= len(text)


def test_deep_and_long_expressions_are_errors_not_crashes():
    with pytest.raises(ExprSyntaxError, match="nested too deeply"):
        parse_expr("(" * 500 + "x" + ")" * 500)
    with pytest.raises(ExprSyntaxError, match="nested too deeply"):
        parse_expr("-" * 1000 + "x")
    with pytest.raises(ExprSyntaxError, match="too long"):
        parse_expr("x" + " + x" * 1000)
    with pytest.raises(ExprSyntaxError, match="nested too deeply"):
        parse_expr(" + ".join(["x"] * 400))  # a chain of operators is a deep tree too
    e = parse_expr(" + ".join(["x"] * 40))
    assert str(e).count("x") == 40
