"""Loading specs: TOML text (or Python arguments) -> a validated, frozen Spec.

    name   = "group_norm"
    input  = "N (G c) *spatial"     # axes of x; (G c) splits C, *spatial is 0+ dims
    kept   = "N G"                  # statistics per (N, G); c and *spatial are reduced
    center = "mean"                 # mean | none
    scale  = "std"                  # std | rms | l2 | none
    eps    = 1e-5                   # a number >= 0, or "dtype" (machine epsilon)

    [sizes]
    G = "num_groups"                # G is given at call time as num_groups=

    [affine]
    axes   = "(G c)"                # weight and bias span C = G·c
    weight = true
    bias   = true
    weight_offset = 0.0             # the effective weight is weight + weight_offset
    cast   = "after_weight"         # half types: round after the weight, or "before_weight" (Llama)

    [fuse]                          # elementwise neighbours, fused into the kernels (expr.py)
    prologue = "x + residual"       # what is normalized: an expression of x and extra inputs
    keep_prologue = true            # return it too
    epilogue = "silu(y)"            # what is written: an expression of y and extra inputs
    quantize = "int8"               # out as int8 with a scale per kept index (forward only)

`load_spec(path)` and `parse_spec(text)` read a file; `build_spec(...)` builds the same
thing from Python. The loader checks what is about the file: its keys, the TOML types of
the values, the axis notation; the Spec checks its own rules (model.py). Either way a
broken rule is a `SpecError` with the file, the key and a caret under the offending token.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import Location, SpecError
from .axes import AxisExpr, AxisSyntaxError, parse_axes
from .expr import Expr, ExprSyntaxError, parse_expr
from .model import Affine, Center, Fuse, Running, Scale, Spec, SpecRuleError
from .tomlpos import TomlPositions

MAX_SPEC_CHARS = 1_000_000
TOP_KEYS = ("name", "doc", "input", "kept", "center", "scale", "eps", "sizes", "affine", "running", "fuse")
TABLE_KEYS = {"affine": ("axes", "weight", "bias", "weight_offset", "cast"), "running": ("axes", "momentum"),
              "fuse": ("prologue", "keep_prologue", "epilogue", "quantize")}


# ---- loading --------------------------------------------------------------------------


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file.

    >>> load_spec("specs/group_norm.toml").kept_axes
    ('N', 'G')
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text ({e.reason} at byte {e.start})", location=Location(str(path), None),
                        allowed="a TOML text file in UTF-8") from None
    except OSError as e:
        raise SpecError(f"cannot read spec file ({e.strerror or e})", location=Location(str(path), None),
                        allowed="a readable .toml spec file, or a bundled spec name (normgen list)") from None
    return parse_spec(text, str(path), default_name=path.stem)


def parse_spec(text: str, file: str = "<string>", *, default_name: str | None = None) -> Spec:
    """Validate the TOML text of a spec; `file` is only used in messages."""
    pos = TomlPositions(text)
    if pos.duplicates:
        key, first, again = pos.duplicates[0]
        loc = Location(file, key, again.line, _key_column(again), again.text, len(key.split(".")[-1]))
        raise SpecError(f"duplicate key '{key}' (first set at line {first.line})", location=loc,
                        allowed="each key once")
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(f"a spec file of {len(text)} characters is too large", location=Location(file, None),
                        allowed=f"at most {MAX_SPEC_CHARS} characters")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _toml_error(e, text, file) from None
    except RecursionError:
        raise SpecError("not valid for a spec: arrays or tables nested too deeply", location=Location(file, None),
                        allowed="a flat TOML file: key = value lines and [tables]") from None
    checker = _Checker(file, pos, text)
    return checker.spec(data, default_name)


def build_spec(name: str, input: str, kept: str | list[str] | tuple[str, ...], *, center: str = "mean",
               scale: str = "std", eps: float | str | None = None, sizes: dict[str, int | str] | None = None,
               affine: dict[str, Any] | None = None, running: dict[str, Any] | None = None,
               fuse: dict[str, Any] | None = None, doc: str = "") -> Spec:
    """Build a Spec in Python, with the same rules (and messages) as a spec file.

    >>> build_spec("my_norm", "N C *spatial", kept="N", affine={"axes": "C"}).reduced_axes
    ('C', 'spatial')
    """
    data: dict[str, Any] = {"name": name, "input": input, "kept": list(kept) if isinstance(kept, tuple) else kept,
                            "center": center, "scale": scale}
    if eps is not None:
        data["eps"] = eps
    if doc:
        data["doc"] = doc
    for key, value in (("sizes", sizes), ("affine", affine), ("running", running), ("fuse", fuse)):
        if value is not None:
            data[key] = dict(value) if isinstance(value, Mapping) else value  # else: "expected a table"
    return _Checker("<python>", None, None).spec(data, None)


# ---- validation -----------------------------------------------------------------------


class _Checker:
    """Reads parsed TOML data into a Spec, raising located SpecErrors."""

    def __init__(self, file: str, pos: TomlPositions | None, text: str | None):
        self.file, self.pos, self.text = file, pos, text
        self.data: dict[str, Any] = {}

    # -- where things are, and errors there --
    def where(self, key: str, offset: int | None = None, width: int = 1, index: int | None = None) -> Location:
        """Location of `key`'s value, or of the token at `offset` inside its string."""
        if self.pos is None:  # built in Python: show the key and value as if written in TOML
            value = self.value(key, index)
            shown = f'{key.split(".")[-1]} = ' + (f'"{value}"' if isinstance(value, str) else repr(value))
            col = None
            if offset is not None and isinstance(value, str):
                col = shown.index('"') + 2 + offset
            return Location(self.file, key, None, col, shown if col else None, width)
        if offset is not None:
            p = self.pos.string(key, index)
            if p is not None:
                return Location(self.file, key, p.line, p.column + offset, p.text, width)
        p = self.pos.value(key)
        if p is None:
            return Location(self.file, key)
        return Location(self.file, key, p.line, p.column, p.text, width)

    def value(self, key: str, index: int | None = None) -> Any:
        """The raw value of a dotted key (the index-th element of an array value)."""
        value: Any = self.data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list) and index is not None and index < len(value):
            value = value[index]
        return value

    def fail(self, key: str, message: str, allowed: str | None = None, *, offset: int | None = None,
             width: int = 1, index: int | None = None) -> SpecError:
        return SpecError(message, location=self.where(key, offset, width, index), allowed=allowed)

    def located(self, e: SpecRuleError) -> SpecError:
        """A rule the Spec found broken, with a caret under its token (or its whole value)."""
        text = self.value(e.key, e.index)
        offset, width = None, 1
        if isinstance(text, str) and e.whole:
            offset, width = 0, max(1, len(text))
        elif isinstance(text, str) and e.token:
            m = re.search(r"(?<![\w])" + re.escape(e.token) + r"(?![\w])", text)
            if m:
                offset, width = m.start(), len(e.token)
        return self.fail(e.key, e.message, e.allowed, offset=offset, width=width, index=e.index)

    # -- reading values --
    def expr(self, key: str, text: Any, index: int | None = None, **kw: bool) -> AxisExpr:
        if not isinstance(text, str):
            raise self.fail(key, f"expected a string of axis names, got {_tname(text)}",
                            'an axis expression such as "N (G c) *spatial"', index=index)
        try:
            return parse_axes(text, **kw)
        except AxisSyntaxError as e:
            raise self.fail(key, e.message, e.allowed, offset=e.offset, width=e.width, index=index) from None

    def string(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            shown = repr(value) if isinstance(value, str) else _tname(value)
            raise self.fail(key, f"unknown value {shown}", ", ".join(repr(c) for c in choices),
                            offset=0 if isinstance(value, str) else None, width=max(1, len(str(value))))
        return value

    def keys(self, table: dict[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None:
        for key in table:
            if key not in allowed:
                full = f"{prefix}{key}"
                loc = self.where(full)
                if self.pos is not None and (p := self.pos.value(full)) is not None:
                    loc = Location(self.file, full, p.line, _key_column(p, key), p.text, len(key))
                what = f"table [{prefix[:-1]}]" if prefix else "a spec"
                raise SpecError(f"unknown key '{key}' in {what}", location=loc, allowed=", ".join(allowed))

    def axis_refs(self, key: str, inp: AxisExpr, expr: AxisExpr, index: int | None = None) -> None:
        """Names of variadic groups are written with their '*', and only theirs (notation)."""
        variadic = {it.names[0] for it in inp.items if it.variadic}
        allowed = f"the axes of input '{inp.text}': " + ", ".join(
            ("*" if it.variadic else "") + n for it in inp.items for n in it.names)
        for item in expr.items:
            for axis in item.axes:
                if axis.name in variadic and not item.variadic:
                    raise self.fail(key, f"'{axis.name}' is a variadic group in the input; write it '*{axis.name}'",
                                    allowed, offset=axis.offset, width=len(axis.name), index=index)
                if item.variadic and axis.name in inp.names and axis.name not in variadic:
                    raise self.fail(key, f"'{axis.name}' is a single axis in the input, not a variadic group",
                                    allowed, offset=axis.offset - 1, width=len(axis.name) + 1, index=index)

    # -- the file's parts --
    def spec(self, data: dict[str, Any], default_name: str | None) -> Spec:
        self.data = data
        self.keys(data, TOP_KEYS)
        for table in (*TABLE_KEYS, "sizes"):
            if table in data and not isinstance(data[table], dict):
                allowed = ('[sizes] with entries such as G = "num_groups"' if table == "sizes"
                           else f"[{table}] with keys " + ", ".join(TABLE_KEYS[table]))
                raise self.fail(table, f"expected a table, got {_tname(data[table])}", allowed)
        for table, allowed in TABLE_KEYS.items():
            if table in data:
                self.keys(data[table], allowed, prefix=f"{table}.")
        name = data.get("name", default_name)
        if name is None:
            raise self.fail("name", "a spec needs a name", "a Python identifier such as 'my_norm'")
        if not isinstance(name, str):
            raise self.fail("name", f"name {name!r} is not a Python identifier",
                            "letters, digits and '_', not starting with a digit")
        doc = data.get("doc", "")
        if not isinstance(doc, str):
            raise self.fail("doc", f"expected a string, got {_tname(doc)}")
        if "input" not in data:
            raise self.fail("input", "a spec needs an input", 'e.g. input = "N C *spatial"')
        inp = self.expr("input", data["input"])
        center = Center(self.string("center", data.get("center", "mean"), tuple(c.value for c in Center)))
        scale = Scale(self.string("scale", data.get("scale", "std"), tuple(s.value for s in Scale)))
        kept = self.kept(inp, data.get("kept"))
        try:
            return Spec(name=name, input=inp, kept=kept, center=center, scale=scale, eps=self.eps(scale, data),
                        sizes=self.sizes(data.get("sizes", {})),
                        affine=self.affine(inp, data["affine"]) if "affine" in data else None,
                        running=self.running(data["running"]) if "running" in data else None,
                        fuse=self.fuse(data["fuse"]) if "fuse" in data else None,
                        doc=doc, source=self.file, text=self.text or "")
        except SpecRuleError as e:
            raise self.located(e) from None

    def kept(self, inp: AxisExpr, value: Any) -> tuple[tuple[str, ...], ...]:
        if value is None:
            raise self.fail("kept", "a spec needs the kept axes (the axes that index the statistics)",
                            'e.g. kept = "N G"; "" for one statistic over the whole input')
        if isinstance(value, list) and len(value) < 2:
            raise self.fail("kept", "a mixture needs two or more kept sets",
                            'kept = "N C" (one set) or kept = ["N C", "N", "C"] (a mixture)')
        sets = []
        for index, text in enumerate(value if isinstance(value, list) else [value]):
            idx = index if isinstance(value, list) else None
            expr = self.expr("kept", text, index=idx, allow_split=False)
            self.axis_refs("kept", inp, expr, idx)
            sets.append(expr.names)
        return tuple(sets)

    def sizes(self, table: dict[str, Any]) -> tuple[tuple[str, int | str], ...]:
        for axis, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise self.fail(f"sizes.{axis}", f"expected a positive integer or an argument name, got "
                                f"{_tname(value)}", 'a constant (G = 32) or the call argument that gives it '
                                '(G = "num_groups")')
        return tuple(table.items())

    def eps(self, scale: Scale, data: dict[str, Any]) -> float | str:
        if "eps" not in data:
            return 0.0 if scale in (Scale.L2, Scale.NONE) else 1e-5
        value = data["eps"]
        if scale is Scale.NONE:
            raise self.fail("eps", "eps has no effect when scale = 'none'", "remove the key")
        if value == "dtype" or _real(value):
            return value if value == "dtype" else _number(value)
        shown = repr(value) if isinstance(value, str) else _tname(value)
        raise self.fail("eps", f"eps must be a finite number >= 0, got {shown}",
                        'a number such as 1e-5, or "dtype" for the machine epsilon of the input dtype')

    def affine(self, inp: AxisExpr, table: dict[str, Any]) -> Affine:
        if "axes" not in table:
            raise self.fail("affine", "[affine] needs axes: the input axes its parameters span",
                            'e.g. axes = "C", or "(G c)" for one dimension of size G*c')
        expr = self.expr("affine.axes", table["axes"])
        self.axis_refs("affine.axes", inp, expr)
        names = {}
        for role in ("weight", "bias"):
            value = table.get(role, True)
            if value is True or value is False:
                names[role] = role if value else None
            elif isinstance(value, str):
                names[role] = value
            else:
                raise self.fail(f"affine.{role}", f"expected true, false or a parameter name, got {value!r}",
                                "true (named '" + role + "'), false (no " + role + "), or a name such as 'g'")
        offset = table.get("weight_offset", 0.0)
        if not _real(offset):
            raise self.fail("affine.weight_offset", f"expected a number, got {_tname(offset)}",
                            "e.g. 1.0 (Gemma: the effective weight is weight + 1)")
        cast = table.get("cast", "after_weight")
        if not isinstance(cast, str):
            raise self.fail("affine.cast", f"expected a string, got {_tname(cast)}",
                            '"after_weight" (the default) or "before_weight" (Llama\'s order)')
        return Affine(expr, names["weight"], names["bias"], float(offset) if math.isfinite(offset) else offset, cast)

    def fuse(self, table: dict[str, Any]) -> Fuse:
        exprs = {key: self.expression(f"fuse.{key}", table[key]) for key in ("prologue", "epilogue") if key in table}
        keep = table.get("keep_prologue", False)
        if not isinstance(keep, bool):
            raise self.fail("fuse.keep_prologue", f"expected true or false, got {_tname(keep)}",
                            "true (return the prologue's value too) or false")
        quantize = table.get("quantize")
        if quantize is not None and not isinstance(quantize, str):
            raise self.fail("fuse.quantize", f"expected a string, got {_tname(quantize)}", '"int8" or "float8_e4m3"')
        return Fuse(exprs.get("prologue"), exprs.get("epilogue"), keep, quantize)

    def expression(self, key: str, text: Any) -> Expr:
        if not isinstance(text, str):
            raise self.fail(key, f"expected an expression in a string, got {_tname(text)}",
                            '"x + residual" (prologue) or "silu(y)" (epilogue)')
        try:
            return parse_expr(text)
        except ExprSyntaxError as e:
            raise self.fail(key, e.message, e.allowed, offset=e.offset, width=e.width) from None

    def running(self, table: dict[str, Any]) -> Running:
        if "axes" not in table:
            raise self.fail("running", "[running] needs axes: the kept axes the running statistics are indexed by",
                            'e.g. axes = "C"')
        expr = self.expr("running.axes", table["axes"], allow_split=False)
        return Running(expr.names, _number(table.get("momentum", 0.1)))


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> Any:
    """A valid number as a float; anything else as it came (so the Spec's message shows it)."""
    return float(value) if _real(value) and math.isfinite(value) and value >= 0 else value


def _tname(value: Any) -> str:
    return {dict: "a table", list: "an array", bool: "a boolean", int: "an integer", float: "a number",
            str: "a string"}.get(type(value), type(value).__name__)


def _key_column(pos: Any, key: str | None = None) -> int:
    """Column of a key's name on its line (the value position is to the right of it)."""
    line = pos.text
    if key is None:
        stripped = line.lstrip()
        return len(line) - len(stripped) + 1
    idx = line.rfind(key, 0, pos.column - 1)
    return idx + 1 if idx >= 0 else 1


def _toml_error(e: tomllib.TOMLDecodeError, text: str, file: str) -> SpecError:
    msg = str(e)
    m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
    allowed = "TOML: key = value lines, [tables], strings in double quotes"
    lines = text.splitlines()
    if not m:  # "at end of document": point past the last line
        m2 = re.search(r"\(at end of document\)$", msg)
        base = msg[: m2.start()].strip() if m2 else msg
        return SpecError(f"not valid TOML: {base} (at end of file)", allowed=allowed,
                         location=Location(file, None, len(lines) or 1))
    line, col = int(m.group(1)), int(m.group(2))
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    km = re.match(r"\s*([A-Za-z0-9_\-]+)\s*=", src)
    loc = Location(file, km.group(1) if km else None, line, col, src)
    return SpecError(f"not valid TOML: {msg[: m.start()].strip()}", location=loc, allowed=allowed)
