"""Spec: the validated, frozen description of a normalization variant.

A spec says which indices share statistics. Written as TOML (see README, "Spec language"):

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

`load_spec(path)` and `parse_spec(text)` read a file; `build_spec(...)` builds the same
thing from Python. All three apply the same rules and raise `SpecError` with the file,
the key and a caret under the offending token. A Spec knows nothing about shapes,
layouts or hardware: those arrive with the call (bind.py) and the planner (plan.py).
"""

from __future__ import annotations

import enum
import keyword
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .axes import AxisExpr, AxisSyntaxError, parse_axes
from ..errors import Location, SpecError
from .tomlpos import TomlPositions


class Center(enum.Enum):
    MEAN = "mean"  # subtract the group mean
    NONE = "none"  # no centering (RMSNorm, weight norm)


class Scale(enum.Enum):
    STD = "std"  # sqrt(mean((x - mu)^2) + eps); needs center = mean
    RMS = "rms"  # sqrt(mean(x^2) + eps); needs center = none
    L2 = "l2"  # sqrt(sum(x_c^2) + eps), x_c centered or not (weight norm: eps = 0)
    NONE = "none"  # no division; needs center = mean


#: Call arguments every op already has; a call-time size cannot take one of these names.
RESERVED_ARGS = frozenset(
    {"x", "input", "out", "eps", "momentum", "training", "running_mean", "running_var",
     "num_batches_tracked", "mean_weight", "var_weight", "weight", "bias"}
)

MAX_SPEC_CHARS = 1_000_000
TOP_KEYS = ("name", "doc", "input", "kept", "center", "scale", "eps", "sizes", "affine", "running")
TABLE_KEYS = {"affine": ("axes", "weight", "bias"), "running": ("axes", "momentum")}


@dataclass(frozen=True)
class Affine:
    """The learned elementwise transform y = weight * x_hat + bias."""

    axes: AxisExpr  # one parameter dimension per item; "(G c)" is one dimension of size G*c
    weight: str | None  # parameter name, or None when there is no multiplicative parameter
    bias: str | None  # parameter name, or None

    @property
    def axis_names(self) -> tuple[str, ...]:
        return self.axes.names

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(p for p in (self.weight, self.bias) if p)


@dataclass(frozen=True)
class Running:
    """Running statistics, updated in training and used in evaluation (PyTorch formulas)."""

    axes: tuple[str, ...]  # the axes they are indexed by: a subset of the kept axes
    momentum: float  # default momentum of the call


@dataclass(frozen=True)
class Spec:
    """A normalization variant, independent of shapes and hardware."""

    name: str
    input: AxisExpr
    kept: tuple[tuple[str, ...], ...]  # one kept set, or the components of a mixture (finest first)
    center: Center
    scale: Scale
    eps: float | str  # a float, or "dtype" for the machine epsilon of the input dtype
    sizes: tuple[tuple[str, int | str], ...] = ()  # axis -> constant or call argument name
    affine: Affine | None = None
    running: Running | None = None
    doc: str = ""
    source: str = "<python>"
    text: str = field(default="", compare=False, repr=False)  # the spec file, for `show`

    # ---- derived views -------------------------------------------------------------
    @property
    def is_mixture(self) -> bool:
        return len(self.kept) > 1

    @property
    def kept_axes(self) -> tuple[str, ...]:
        """The kept axes that index the statistics (the finest component of a mixture)."""
        return self.kept[0]

    @property
    def axis_names(self) -> tuple[str, ...]:
        return self.input.names

    @property
    def variadic_names(self) -> tuple[str, ...]:
        return tuple(i.names[0] for i in self.input.items if i.variadic)

    @property
    def reduced_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.axis_names if a not in self.kept_axes)

    @property
    def size_args(self) -> dict[str, str]:
        """Call-time size arguments: argument name -> axis it sizes."""
        return {v: k for k, v in self.sizes if isinstance(v, str)}

    @property
    def size_consts(self) -> dict[str, int]:
        return {k: v for k, v in self.sizes if isinstance(v, int)}

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.affine.params if self.affine else ()

    def axes_str(self, names: tuple[str, ...]) -> str:
        """Axis names as written in the notation: variadic groups with their '*'."""
        return " ".join(("*" + n if n in self.variadic_names else n) for n in names)

    def __str__(self) -> str:
        kept = " | ".join(self.axes_str(k) or "(none)" for k in self.kept)
        parts = [f"{self.name}: input '{self.input}', kept '{kept}'",
                 f"center {self.center.value}, scale {self.scale.value}, eps {self.eps}"]
        if self.affine:
            names = ", ".join(self.affine.params) or "none"
            parts.append(f"affine {names} over '{self.affine.axes}'")
        if self.running:
            parts.append(f"running stats over '{self.axes_str(self.running.axes)}', momentum {self.running.momentum}")
        if self.sizes:
            parts.append("sizes " + ", ".join(f"{k}={v}" for k, v in self.sizes))
        return "; ".join(parts)


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
        raise SpecError(f"cannot read spec file ({e.strerror or e})", location=Location(str(path), None)) from None
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
               doc: str = "") -> Spec:
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
    for key, value in (("sizes", sizes), ("affine", affine), ("running", running)):
        if value is not None:
            data[key] = dict(value)
    return _Checker("<python>", None, None).spec(data, None)


# ---- validation -----------------------------------------------------------------------


class _Checker:
    """Applies the spec rules to parsed TOML data, raising located SpecErrors."""

    def __init__(self, file: str, pos: TomlPositions | None, text: str | None):
        self.file, self.pos, self.text = file, pos, text
        self.data: dict[str, Any] = {}

    # -- error helpers --
    def where(self, key: str, offset: int | None = None, width: int = 1, index: int | None = None) -> Location:
        """Location of `key`'s value, or of the token at `offset` inside its string."""
        if self.pos is None:  # built in Python: show the key and value as if written in TOML
            value = self.data
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, list) and index is not None and index < len(value):
                value = value[index]
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

    def fail(self, key: str, message: str, allowed: str | None = None, *, offset: int | None = None,
             width: int = 1, index: int | None = None) -> SpecError:
        return SpecError(message, location=self.where(key, offset, width, index), allowed=allowed)

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
                raise SpecError(f"unknown key '{key}' in {what}", location=loc,
                                allowed=", ".join(allowed))

    # -- the rules --
    def spec(self, data: dict[str, Any], default_name: str | None) -> Spec:
        self.data = data
        self.keys(data, TOP_KEYS)
        for table in TABLE_KEYS:
            if table in data and not isinstance(data[table], dict):
                raise self.fail(table, f"expected a table, got {_tname(data[table])}",
                                f"[{table}] with keys " + ", ".join(TABLE_KEYS[table]))
        if "sizes" in data and not isinstance(data["sizes"], dict):
            raise self.fail("sizes", f"expected a table, got {_tname(data['sizes'])}",
                            '[sizes] with entries such as G = "num_groups"')
        for table, allowed in TABLE_KEYS.items():
            if table in data:
                self.keys(data[table], allowed, prefix=f"{table}.")

        name = data.get("name", default_name)
        if name is None:
            raise self.fail("name", "a spec needs a name", "a Python identifier such as 'my_norm'")
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise self.fail("name", f"name {name!r} is not a Python identifier",
                            "letters, digits and '_', not starting with a digit")
        doc = data.get("doc", "")
        if not isinstance(doc, str):
            raise self.fail("doc", f"expected a string, got {_tname(doc)}")

        if "input" not in data:
            raise self.fail("input", "a spec needs an input", 'e.g. input = "N C *spatial"')
        inp = self.expr("input", data["input"])
        if not inp.items:
            raise self.fail("input", "the input has no axes", 'e.g. input = "N C *spatial"', offset=0)

        center = Center(self.string("center", data.get("center", "mean"), tuple(c.value for c in Center)))
        scale = Scale(self.string("scale", data.get("scale", "std"), tuple(s.value for s in Scale)))
        self.check_center_scale(center, scale)
        kept = self.kept(inp, data.get("kept"))
        sizes = self.sizes(inp, data.get("sizes", {}))
        eps = self.eps(scale, data)
        affine = self.affine(inp, data["affine"]) if "affine" in data else None
        running = self.running(kept, center, scale, data["running"]) if "running" in data else None
        self.check_names(sizes, affine)
        return Spec(name=name, input=inp, kept=kept, center=center, scale=scale, eps=eps, sizes=sizes,
                    affine=affine, running=running, doc=doc, source=self.file, text=self.text or "")

    def check_center_scale(self, center: Center, scale: Scale) -> None:
        if scale is Scale.STD and center is Center.NONE:
            raise self.fail("scale", "scale 'std' measures spread around the mean, but center = 'none'",
                            "center = 'mean' with scale 'std', or scale 'rms' without centering", offset=0, width=3)
        if scale is Scale.RMS and center is Center.MEAN:
            raise self.fail("scale", "scale 'rms' of centered values is scale 'std'",
                            "scale = 'std' with center = 'mean', or center = 'none' with 'rms'", offset=0, width=3)
        if scale is Scale.NONE and center is Center.NONE:
            raise self.fail("scale", "center = 'none' and scale = 'none' leave nothing to normalize",
                            "center 'mean', or a scale 'std' | 'rms' | 'l2'", offset=0, width=4)

    def kept(self, inp: AxisExpr, value: Any) -> tuple[tuple[str, ...], ...]:
        if value is None:
            raise self.fail("kept", "a spec needs the kept axes (the axes that index the statistics)",
                            'e.g. kept = "N G"; "" for one statistic over the whole input')
        components = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) < 2:
            raise self.fail("kept", "a mixture needs two or more kept sets",
                            'kept = "N C" (one set) or kept = ["N C", "N", "C"] (a mixture)')
        sets: list[tuple[str, ...]] = []
        for index, text in enumerate(components):
            idx = index if isinstance(value, list) else None
            expr = self.expr("kept", text, index=idx, allow_split=False)
            names: list[str] = []
            for item in expr.items:
                axis = item.axes[0]
                self.check_axis_ref("kept", inp, axis.name, axis.offset, item.variadic, idx)
                names.append(axis.name)
            if set(names) == set(inp.names) and inp.names:
                raise self.fail("kept", "every input axis is kept, so each statistic covers one element",
                                "leave at least one input axis out of kept (the reduced axes)",
                                offset=0, width=max(1, len(text)), index=idx)
            sets.append(tuple(names))
        if len(sets) > 1:
            finest = set(sets[0])
            for index, comp in enumerate(sets[1:], start=1):
                extra = [a for a in comp if a not in finest]
                if extra:
                    expr = parse_axes(components[index], allow_split=False)
                    ax = expr.find(extra[0])
                    raise self.fail("kept", f"mixture component '{components[index]}' keeps '{extra[0]}', "
                                    f"which the first component '{components[0]}' reduces",
                                    "each component keeps a subset of the first one's axes (its statistics "
                                    "are merged from the first's)", offset=ax.offset, width=len(ax.name), index=index)
            if len(set(map(frozenset, sets))) != len(sets):
                raise self.fail("kept", "a mixture lists the same kept set twice", "distinct kept sets")
        return tuple(sets)

    def check_axis_ref(self, key: str, inp: AxisExpr, name: str, offset: int, variadic: bool,
                       index: int | None = None) -> None:
        allowed = f"the axes of input '{inp.text}': " + ", ".join(
            ("*" if it.variadic else "") + n for it in inp.items for n in it.names)
        item = next((it for it in inp.items if name in it.names), None)
        if item is None:
            raise self.fail(key, f"unknown axis '{name}'", allowed, offset=offset, width=len(name), index=index)
        if item.variadic and not variadic:
            raise self.fail(key, f"'{name}' is a variadic group in the input; write it '*{name}'", allowed,
                            offset=offset, width=len(name), index=index)
        if variadic and not item.variadic:
            raise self.fail(key, f"'{name}' is a single axis in the input, not a variadic group", allowed,
                            offset=offset - 1, width=len(name) + 1, index=index)

    def sizes(self, inp: AxisExpr, table: dict[str, Any]) -> tuple[tuple[str, int | str], ...]:
        split_parts = {n for it in inp.items if it.is_split for n in it.names}
        variadics = {it.names[0] for it in inp.items if it.variadic}
        out: list[tuple[str, int | str]] = []
        for axis, value in table.items():
            key = f"sizes.{axis}"
            if axis not in split_parts and axis not in variadics:
                reason = ("its size comes from the input shape" if axis in inp.names else "it is not an input axis")
                givable = [f"split part {n}" for n in sorted(split_parts)] + [f"variadic {n}" for n in sorted(variadics)]
                raise self.fail(key, f"cannot give the size of '{axis}': {reason}",
                                ", ".join(givable) or "nothing: this input has no split or variadic axes")
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise self.fail(key, f"expected a positive integer or an argument name, got {_tname(value)}",
                                'a constant (G = 32) or the call argument that gives it (G = "num_groups")')
            if isinstance(value, int):
                if axis in variadics:
                    raise self.fail(key, "a variadic group's shape is given at call time, not as a number",
                                    f'an argument name, e.g. {axis} = "{axis}_shape"')
                if not 0 < value < 2**40:
                    raise self.fail(key, f"size {value} is out of range", "1 <= size < 2**40")
            elif not value.isidentifier() or keyword.iskeyword(value):
                raise self.fail(key, f"argument name {value!r} is not a Python identifier",
                                "letters, digits and '_', not starting with a digit", offset=0, width=max(1, len(value)))
            out.append((axis, value))
        given = dict(out)
        for item in inp.items:
            if item.is_split:
                unknown = [n for n in item.names if n not in given]
                if len(unknown) > 1:
                    raise self.fail("input", f"the sizes of {' and '.join(repr(u) for u in unknown)} in "
                                    f"'{item}' cannot be known from the shape",
                                    "give all but one part of a split in [sizes], e.g. "
                                    f'{unknown[0]} = "num_{unknown[0].lower()}" or {unknown[0]} = 4',
                                    offset=item.offset, width=len(str(item)))
        free = [it for it in inp.items if it.variadic and it.names[0] not in given]
        if len(free) > 1:
            second = free[1]
            raise self.fail("input", f"two variadic groups ('{free[0]}' and '{second}') without a given shape: "
                            "the split between them cannot be known", "give one of them in [sizes], e.g. "
                            f'{second.names[0]} = "{second.names[0]}_shape"', offset=second.offset,
                            width=len(str(second)))
        args = [v for _, v in out if isinstance(v, str)]
        for a in args:
            if args.count(a) > 1:
                raise self.fail("sizes", f"argument '{a}' gives two sizes", "one argument per size")
            if a in RESERVED_ARGS:
                raise self.fail(f"sizes.{[k for k, v in out if v == a][0]}", f"argument name '{a}' is taken by the op",
                                "any name except " + ", ".join(sorted(RESERVED_ARGS)), offset=0, width=len(a))
        return tuple(out)

    def eps(self, scale: Scale, data: dict[str, Any]) -> float | str:
        if "eps" not in data:
            return 0.0 if scale in (Scale.L2, Scale.NONE) else 1e-5
        value = data["eps"]
        if scale is Scale.NONE:
            raise self.fail("eps", "eps has no effect when scale = 'none'", "remove the key")
        if value == "dtype":
            return "dtype"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            shown = repr(value) if isinstance(value, (int, float, str)) else _tname(value)
            raise self.fail("eps", f"eps must be a finite number >= 0, got {shown}",
                            'a number such as 1e-5, or "dtype" for the machine epsilon of the input dtype')
        return float(value)

    def affine(self, inp: AxisExpr, table: dict[str, Any]) -> Affine:
        if "axes" not in table:
            raise self.fail("affine", "[affine] needs axes: the input axes its parameters span",
                            'e.g. axes = "C", or "(G c)" for one dimension of size G*c')
        expr = self.expr("affine.axes", table["axes"])
        for item in expr.items:
            for axis in item.axes:
                self.check_axis_ref("affine.axes", inp, axis.name, axis.offset, item.variadic)
        names = {}
        for role in ("weight", "bias"):
            value = table.get(role, True)
            key = f"affine.{role}"
            if value is True:
                names[role] = role
            elif value is False:
                names[role] = None
            elif isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value):
                names[role] = value
            else:
                raise self.fail(key, f"expected true, false or a parameter name, got {value!r}",
                                "true (named '" + role + "'), false (no " + role + "), or a name such as 'g'")
        if names["weight"] is None and names["bias"] is None:
            raise self.fail("affine", "[affine] with neither weight nor bias", "remove [affine], or enable one")
        if names["weight"] == names["bias"]:
            raise self.fail("affine.bias", f"weight and bias are both named '{names['bias']}'", "two distinct names")
        return Affine(expr, names["weight"], names["bias"])

    def running(self, kept: tuple[tuple[str, ...], ...], center: Center, scale: Scale,
                table: dict[str, Any]) -> Running:
        if center is not Center.MEAN or scale is not Scale.STD:
            raise self.fail("running", "running statistics track a mean and a variance: they need "
                            "center = 'mean' and scale = 'std'", "remove [running], or use mean/std")
        if "axes" not in table:
            raise self.fail("running", "[running] needs axes: the kept axes the running statistics are indexed by",
                            'e.g. axes = "C"')
        expr = self.expr("running.axes", table["axes"], allow_split=False)
        finest = kept[0]
        for item in expr.items:
            axis = item.axes[0]
            if axis.name not in finest:
                raise self.fail("running.axes", f"'{axis.name}' is not a kept axis", "a subset of the kept axes: "
                                + (", ".join(finest) or "(none)"), offset=axis.offset, width=len(axis.name))
        names = tuple(item.axes[0].name for item in expr.items)
        if len(kept) > 1 and set(names) not in [set(k) for k in kept]:
            raise self.fail("running.axes", "in a mixture, running statistics belong to one component",
                            "one of the kept sets: " + ", ".join(repr(" ".join(k)) for k in kept), offset=0)
        momentum = table.get("momentum", 0.1)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise self.fail("running.momentum", f"momentum must be a number in [0, 1], got {momentum!r}",
                            "e.g. 0.1 (the call may pass momentum=None for a cumulative average)")
        return Running(names, float(momentum))

    def check_names(self, sizes: tuple[tuple[str, int | str], ...], affine: Affine | None) -> None:
        params = affine.params if affine else ()
        for axis, value in sizes:
            if isinstance(value, str) and value in params:
                raise self.fail(f"sizes.{axis}", f"argument '{value}' is also a parameter name",
                                "distinct names", offset=0, width=len(value))


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
    import re

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
