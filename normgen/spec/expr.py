"""The expression notation of fused specs: what a prologue or an epilogue computes per element.

    prologue = "x * silu(z)"        # x: the input; z: an extra input shaped like x
    epilogue = "gelu(y) + 0.5 * f"  # y: the normalized, affine output; f: an extra input

Expressions have numbers, names (`x` or `y`, and extra inputs: any other identifier), the
operators `+ - * /`, unary minus, parentheses, and the functions in `FUNCTIONS`. `parse_expr`
returns a frozen tree whose nodes remember their column in the text (for carets); nodes
compare by structure only. `derive.py` differentiates these trees; the oracle and the
code generators evaluate them, each in its own way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

#: functions a spec may call, one argument each
FUNCTIONS = ("relu", "silu", "sigmoid", "tanh", "gelu", "gelu_tanh", "exp", "square", "abs")
#: functions that only derivatives use: [u > 0], sign(u), the standard normal's cdf and pdf
INTERNAL = ("step", "sign", "ncdf", "npdf")
#: the longest expression text, and the deepest tree (nesting, and chains of operators), a spec may hold:
#: every pass over a tree may recurse, so its height is bounded well inside Python's recursion limit
MAX_CHARS = 2000
MAX_DEPTH = 64

_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op>[-+*/(),]))")


class ExprSyntaxError(Exception):
    """A rule of the notation broken at `offset` (0-based) in the text; the loader locates it."""

    def __init__(self, message: str, offset: int, width: int = 1, allowed: str | None = None):
        super().__init__(message)
        self.message, self.offset, self.width, self.allowed = message, offset, width, allowed


class Expr:
    """A node of an expression tree (Num, Var, Neg, Bin, Call)."""

    def children(self) -> tuple[Expr, ...]:
        return ()

    def names(self) -> tuple[str, ...]:
        """The variables the expression reads, in order of first appearance."""
        out: list[str] = []
        stack: list[Expr] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Var) and node.name not in out:
                out.append(node.name)
            stack.extend(reversed(node.children()))
        return tuple(out)

    def find(self, name: str) -> Var | None:
        """The first use of variable `name` (for its column), or None."""
        stack: list[Expr] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Var) and node.name == name:
                return node
            stack.extend(reversed(node.children()))
        return None


@dataclass(frozen=True)
class Num(Expr):
    value: float
    offset: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return repr(int(self.value)) if self.value == int(self.value) and abs(self.value) < 1e15 else repr(self.value)


@dataclass(frozen=True)
class Var(Expr):
    name: str
    offset: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Neg(Expr):
    arg: Expr
    offset: int = field(default=0, compare=False)

    def children(self) -> tuple[Expr, ...]:
        return (self.arg,)

    def __str__(self) -> str:
        return "-" + _wrap(self.arg, 3)


@dataclass(frozen=True)
class Bin(Expr):
    op: str  # + - * /
    a: Expr
    b: Expr
    offset: int = field(default=0, compare=False)

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def __str__(self) -> str:
        p = _PREC[self.op]
        # left-associative: the right operand needs parentheses at equal precedence
        return f"{_wrap(self.a, p)} {self.op} {_wrap(self.b, p + 1)}"


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    arg: Expr
    offset: int = field(default=0, compare=False)

    def children(self) -> tuple[Expr, ...]:
        return (self.arg,)

    def __str__(self) -> str:
        return f"{self.fn}({self.arg})"


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _prec(e: Expr) -> int:
    if isinstance(e, Bin):
        return _PREC[e.op]
    if isinstance(e, Neg):
        return 3
    return 4 if not (isinstance(e, Num) and e.value < 0) else 3


def _wrap(e: Expr, p: int) -> str:
    return f"({e})" if _prec(e) < p else str(e)


# ---- parsing --------------------------------------------------------------------------


def parse_expr(text: str) -> Expr:
    """Parse an expression; raise ExprSyntaxError at the first broken rule.

    >>> str(parse_expr("x*silu(z)+ 1"))
    'x * silu(z) + 1'
    """
    if not isinstance(text, str):
        raise ExprSyntaxError(f"expected a string, got {type(text).__name__}", 0)
    if len(text) > MAX_CHARS:
        raise ExprSyntaxError(f"an expression of {len(text)} characters is too long", 0,
                              allowed=f"at most {MAX_CHARS} characters")
    if not text.strip():
        raise ExprSyntaxError("the expression is empty", 0, max(1, len(text)),
                              allowed='an expression such as "x + residual" or "silu(y)"')
    e = _Parser(text).parse()
    _check_height(e)
    return e


def _check_height(root: Expr) -> None:
    """Raise at the first node deeper than MAX_DEPTH (an explicit stack: no recursion here)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExprSyntaxError("the expression is nested too deeply", getattr(node, "offset", 0),
                                  allowed=f"a tree at most {MAX_DEPTH} operations deep")
        stack.extend((c, depth + 1) for c in node.children())


class _Parser:
    """Recursive descent: expr := term (+|- term)*; term := unary (*|/ unary)*;
    unary := - unary | atom; atom := number | name | name ( expr ) | ( expr )."""

    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, offset)
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                if text[pos:].strip() == "":
                    break
                bad = pos + len(text[pos:]) - len(text[pos:].lstrip())
                raise ExprSyntaxError(f"unexpected character {text[bad]!r}", bad,
                                      allowed="numbers, names, + - * /, parentheses and function calls")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def end_offset(self) -> int:
        return len(self.text.rstrip())

    def expect_operand(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise ExprSyntaxError("the expression ends where a number, a name or '(' is expected",
                                  self.end_offset(), allowed="an operand after the operator")
        return tok

    def parse(self) -> Expr:
        e = self.expr()
        tok = self.peek()
        if tok is not None:
            what = "')' without a matching '('" if tok[1] == ")" else f"unexpected {tok[1]!r}"
            raise ExprSyntaxError(what, tok[2], len(tok[1]), allowed="an operator (+ - * /) between operands")
        return e

    def nest(self, offset: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprSyntaxError("the expression is nested too deeply", offset,
                                  allowed=f"at most {MAX_DEPTH} levels of parentheses, calls and signs")

    def expr(self) -> Expr:
        e = self.term()
        while (tok := self.peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.i += 1
            e = Bin(tok[1], e, self.term(), tok[2])
        return e

    def term(self) -> Expr:
        e = self.unary()
        while (tok := self.peek()) is not None and tok[1] in "*/" and tok[0] == "op":
            self.i += 1
            e = Bin(tok[1], e, self.unary(), tok[2])
        return e

    def unary(self) -> Expr:
        tok = self.expect_operand()
        if tok[1] == "-":
            self.i += 1
            self.nest(tok[2])
            arg = self.unary()
            self.depth -= 1
            return Neg(arg, tok[2])
        return self.atom()

    def atom(self) -> Expr:
        kind, text, offset = self.expect_operand()
        self.i += 1
        if kind == "num":
            value = float(text)
            if not math.isfinite(value):
                raise ExprSyntaxError(f"number {text} is out of range", offset, len(text),
                                      allowed="a finite number")
            return Num(value, offset)
        if kind == "name":
            nxt = self.peek()
            if nxt is not None and nxt[1] == "(":
                if text not in FUNCTIONS:
                    raise ExprSyntaxError(f"unknown function '{text}'", offset, len(text),
                                          allowed=", ".join(FUNCTIONS))
                self.i += 1
                self.nest(offset)
                arg = self.expr()
                self.close(nxt[2])
                self.depth -= 1
                return Call(text, arg, offset)
            if text in FUNCTIONS:
                raise ExprSyntaxError(f"function '{text}' needs its argument in parentheses", offset, len(text),
                                      allowed=f"{text}(...)")
            return Var(text, offset)
        if text == "(":
            self.nest(offset)
            e = self.expr()
            self.close(offset)
            self.depth -= 1
            return e
        raise ExprSyntaxError(f"expected a number, a name or '(', found {text!r}", offset, len(text),
                              allowed="an operand: a number, x or y, an extra input, a call, or '(...)'")

    def close(self, opened: int) -> None:
        tok = self.peek()
        if tok is None:
            raise ExprSyntaxError("'(' is never closed", opened)
        if tok[1] != ")":
            what = "a function takes one argument" if tok[1] == "," else f"expected ')', found {tok[1]!r}"
            raise ExprSyntaxError(what, tok[2], len(tok[1]), allowed=f"')' to close the '(' at column {opened + 1}")
        self.i += 1
