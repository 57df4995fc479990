"""The Spec: the validated, frozen description of a normalization variant.

A spec says which indices share statistics (see README, "Spec language"). It knows
nothing about shapes, layouts or hardware: those arrive with the call (plan/bind.py) and
the planner. Its invariants live here, in `__post_init__`, so a Spec built directly in
Python obeys the same rules as one loaded from a file; the loader (loader.py) turns a
broken rule into an error with the file, the key and a caret under the token.
"""

from __future__ import annotations

import enum
import keyword
import math
from dataclasses import dataclass, field

from ..errors import Location, SpecError
from .axes import AxisExpr
from .expr import FUNCTIONS, Expr


class Center(enum.Enum):
    MEAN = "mean"  # subtract the group mean
    NONE = "none"  # no centering (RMSNorm, weight norm)


class Scale(enum.Enum):
    STD = "std"  # sqrt(mean((x - mu)^2) + eps); needs center = mean
    RMS = "rms"  # sqrt(mean(x^2) + eps); needs center = none
    L2 = "l2"  # sqrt(sum(x_c^2) + eps), x_c centered or not (weight norm: eps = 0)
    NONE = "none"  # no division; needs center = mean


#: Call arguments every op already has; a call-time size or an extra input cannot take one of these names.
RESERVED_ARGS = frozenset(
    {"x", "y", "input", "out", "eps", "momentum", "training", "running_mean", "running_var",
     "num_batches_tracked", "mean_weight", "var_weight", "weight", "bias", "target", "process_group", "comm",
     "save", "dprologue"}
)
#: what `[fuse] quantize` may ask for (float8_e4m3 on CUDA only)
QUANTIZE = ("int8", "float8_e4m3")


class SpecRuleError(SpecError):
    """A rule of the spec language broken by a Spec's values.

    It names the key and, when one token is at fault, the token (and for an array value,
    the index of the element), so that the loader can put a caret under it in the file.
    """

    def __init__(self, key: str, message: str, allowed: str | None = None, *, token: str | None = None,
                 index: int | None = None, whole: bool = False):
        self.key, self.token, self.index, self.whole = key, token, index, whole
        super().__init__(message, location=Location("<python>", key), allowed=allowed)


@dataclass(frozen=True)
class Affine:
    """The learned elementwise transform y = weight * x_hat + bias."""

    axes: AxisExpr  # one parameter dimension per item; "(G c)" is one dimension of size G*c
    weight: str | None  # parameter name, or None when there is no multiplicative parameter
    bias: str | None  # parameter name, or None
    weight_offset: float = 0.0  # the effective weight is weight + weight_offset (Gemma: 1)
    # where a float16/bfloat16 result is rounded to the input dtype (CASTS): "after_weight"
    # (y = cast(x_hat * w + b), Gemma, torch.nn) or "before_weight" (y = cast(cast(x_hat) * w + b),
    # Llama: normalize in float32, cast, then multiply the weight)
    cast: str = "after_weight"

    @property
    def axis_names(self) -> tuple[str, ...]:
        return self.axes.names

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(p for p in (self.weight, self.bias) if p)


@dataclass(frozen=True)
class Fuse:
    """Elementwise neighbours fused into the kernels (DESIGN.md, "Fusion: prologue and epilogue").

    h = prologue(x, extras) is what is normalized (x when absent); out = epilogue(y, extras)
    is what is written (y when absent). Extra inputs are arrays shaped like x, named by the
    identifiers of the expressions other than x and y.
    """

    prologue: Expr | None = None
    epilogue: Expr | None = None
    keep_prologue: bool = False  # also return h (the new residual stream)
    quantize: str | None = None  # "int8" | "float8_e4m3": out quantized per kept index (forward only)

    @property
    def prologue_inputs(self) -> tuple[str, ...]:
        """The extra inputs the prologue reads (not x), in order of first use."""
        return tuple(n for n in self.prologue.names() if n != "x") if self.prologue else ()

    @property
    def epilogue_inputs(self) -> tuple[str, ...]:
        return tuple(n for n in self.epilogue.names() if n != "y") if self.epilogue else ()

    @property
    def extras(self) -> tuple[str, ...]:
        """Every extra input, prologue's first, each once."""
        return tuple(dict.fromkeys(self.prologue_inputs + self.epilogue_inputs))


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
    fuse: Fuse | None = None
    doc: str = ""
    source: str = "<python>"
    text: str = field(default="", compare=False, repr=False)  # the spec file, for `show`

    def __post_init__(self) -> None:
        validate(self)

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

    @property
    def extras(self) -> tuple[str, ...]:
        """Extra inputs of a fused spec (arrays shaped like x), by name."""
        return self.fuse.extras if self.fuse else ()

    @property
    def weight_offset(self) -> float:
        return self.affine.weight_offset if self.affine else 0.0

    def axes_str(self, names: tuple[str, ...]) -> str:
        """Axis names as written in the notation: variadic groups with their '*'."""
        return " ".join(("*" + n if n in self.variadic_names else n) for n in names)

    def __str__(self) -> str:
        kept = " | ".join(self.axes_str(k) or "(none)" for k in self.kept)
        parts = [f"{self.name}: input '{self.input}', kept '{kept}'",
                 f"center {self.center.value}, scale {self.scale.value}, eps {self.eps}"]
        if self.affine:
            names = ", ".join(self.affine.params) or "none"
            offset = f" (weight + {self.affine.weight_offset:g})" if self.affine.weight_offset else ""
            cast = ", half types cast before the weight" if self.affine.cast == "before_weight" else ""
            parts.append(f"affine {names}{offset} over '{self.affine.axes}'{cast}")
        if self.running:
            parts.append(f"running stats over '{self.axes_str(self.running.axes)}', momentum {self.running.momentum}")
        if self.fuse:
            parts.append(describe_fuse(self.fuse))
        if self.sizes:
            parts.append("sizes " + ", ".join(f"{k}={v}" for k, v in self.sizes))
        return "; ".join(parts)


# ---- the rules ------------------------------------------------------------------------


def _identifier(value: object) -> bool:
    return isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)


def validate(spec: Spec) -> None:
    """Raise SpecRuleError for the first broken rule, in the order a reader checks a spec."""
    if not _identifier(spec.name):
        raise SpecRuleError("name", f"name {spec.name!r} is not a Python identifier",
                            "letters, digits and '_', not starting with a digit")
    if not spec.input.items:
        raise SpecRuleError("input", "the input has no axes", 'e.g. input = "N C *spatial"', whole=True)
    _center_scale(spec.center, spec.scale)
    _kept(spec)
    _sizes(spec)
    _eps(spec)
    if spec.affine is not None:
        _affine(spec)
    if spec.running is not None:
        _running(spec)
    params = spec.affine.params if spec.affine else ()
    for axis, value in spec.sizes:
        if isinstance(value, str) and value in params:
            raise SpecRuleError(f"sizes.{axis}", f"argument '{value}' is also a parameter name", "distinct names",
                                whole=True)
    if spec.fuse is not None:
        _fuse(spec)


def _center_scale(center: Center, scale: Scale) -> None:
    if scale is Scale.STD and center is Center.NONE:
        raise SpecRuleError("scale", "scale 'std' measures spread around the mean, but center = 'none'",
                            "center = 'mean' with scale 'std', or scale 'rms' without centering", whole=True)
    if scale is Scale.RMS and center is Center.MEAN:
        raise SpecRuleError("scale", "scale 'rms' of centered values is scale 'std'",
                            "scale = 'std' with center = 'mean', or center = 'none' with 'rms'", whole=True)
    if scale is Scale.NONE and center is Center.NONE:
        raise SpecRuleError("scale", "center = 'none' and scale = 'none' leave nothing to normalize",
                            "center 'mean', or a scale 'std' | 'rms' | 'l2'", whole=True)


def _allowed_axes(spec: Spec) -> str:
    return f"the axes of input '{spec.input.text}': " + ", ".join(
        ("*" if it.variadic else "") + n for it in spec.input.items for n in it.names)


def _kept(spec: Spec) -> None:
    names = spec.input.names
    if not spec.kept:
        raise SpecRuleError("kept", "a spec needs the kept axes (the axes that index the statistics)",
                            'e.g. kept = "N G"; "" for one statistic over the whole input')
    index = (lambda k: k) if spec.is_mixture else (lambda k: None)
    for k, comp in enumerate(spec.kept):
        for axis in comp:
            if axis not in names:
                raise SpecRuleError("kept", f"unknown axis '{axis}'", _allowed_axes(spec), token=axis, index=index(k))
        if set(comp) == set(names) and names:
            raise SpecRuleError("kept", "every input axis is kept, so each statistic covers one element",
                                "leave at least one input axis out of kept (the reduced axes)", index=index(k),
                                whole=True)
    finest = spec.kept[0]
    for k, comp in enumerate(spec.kept[1:], start=1):
        extra = [a for a in comp if a not in finest]
        if extra:
            raise SpecRuleError("kept", f"mixture component '{spec.axes_str(comp)}' keeps '{extra[0]}', "
                                f"which the first component '{spec.axes_str(finest)}' reduces",
                                "each component keeps a subset of the first one's axes (its statistics "
                                "are merged from the first's)", token=extra[0], index=k)
    if len(set(map(frozenset, spec.kept))) != len(spec.kept):
        raise SpecRuleError("kept", "a mixture lists the same kept set twice", "distinct kept sets")


def _sizes(spec: Spec) -> None:
    inp = spec.input
    split_parts = {n for it in inp.items if it.is_split for n in it.names}
    variadics = {it.names[0] for it in inp.items if it.variadic}
    for axis, value in spec.sizes:
        key = f"sizes.{axis}"
        if axis not in split_parts and axis not in variadics:
            reason = "its size comes from the input shape" if axis in inp.names else "it is not an input axis"
            givable = [f"split part {n}" for n in sorted(split_parts)] + [f"variadic {n}" for n in sorted(variadics)]
            raise SpecRuleError(key, f"cannot give the size of '{axis}': {reason}",
                                ", ".join(givable) or "nothing: this input has no split or variadic axes")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SpecRuleError(key, f"expected a positive integer or an argument name, got {type(value).__name__}",
                                'a constant (G = 32) or the call argument that gives it (G = "num_groups")')
        if isinstance(value, int):
            if axis in variadics:
                raise SpecRuleError(key, "a variadic group's shape is given at call time, not as a number",
                                    f'an argument name, e.g. {axis} = "{axis}_shape"')
            if not 0 < value < 2**40:
                raise SpecRuleError(key, f"size {value} is out of range", "1 <= size < 2**40")
        elif not _identifier(value):
            raise SpecRuleError(key, f"argument name {value!r} is not a Python identifier",
                                "letters, digits and '_', not starting with a digit", whole=True)
    given = dict(spec.sizes)
    for item in inp.items:
        unknown = [n for n in item.names if n not in given]
        if item.is_split and len(unknown) > 1:
            raise SpecRuleError("input", f"the sizes of {' and '.join(repr(u) for u in unknown)} in "
                                f"'{item}' cannot be known from the shape",
                                "give all but one part of a split in [sizes], e.g. "
                                f'{unknown[0]} = "num_{unknown[0].lower()}" or {unknown[0]} = 4', token=str(item))
    free = [it for it in inp.items if it.variadic and it.names[0] not in given]
    if len(free) > 1:
        second = free[1]
        raise SpecRuleError("input", f"two variadic groups ('{free[0]}' and '{second}') without a given shape: "
                            "the split between them cannot be known", "give one of them in [sizes], e.g. "
                            f'{second.names[0]} = "{second.names[0]}_shape"', token=str(second))
    args = [v for _, v in spec.sizes if isinstance(v, str)]
    for a in args:
        if args.count(a) > 1:
            raise SpecRuleError("sizes", f"argument '{a}' gives two sizes", "one argument per size")
        if a in RESERVED_ARGS:
            axis = next(k for k, v in spec.sizes if v == a)
            raise SpecRuleError(f"sizes.{axis}", f"argument name '{a}' is taken by the op",
                                "any name except " + ", ".join(sorted(RESERVED_ARGS)), whole=True)


def _eps(spec: Spec) -> None:
    if spec.scale is Scale.NONE and spec.eps not in (0, 0.0):
        raise SpecRuleError("eps", "eps has no effect when scale = 'none'", "remove the key")
    if spec.eps == "dtype":
        return
    value = spec.eps
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        shown = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
        raise SpecRuleError("eps", f"eps must be a finite number >= 0, got {shown}",
                            'a number such as 1e-5, or "dtype" for the machine epsilon of the input dtype')


def _affine(spec: Spec) -> None:
    a = spec.affine
    for item in a.axes.items:
        for axis in item.axes:
            if axis.name not in spec.input.names:
                raise SpecRuleError("affine.axes", f"unknown axis '{axis.name}'", _allowed_axes(spec),
                                    token=axis.name)
    for role in ("weight", "bias"):
        value = getattr(a, role)
        if value is not None and not _identifier(value):
            raise SpecRuleError(f"affine.{role}", f"expected true, false or a parameter name, got {value!r}",
                                "true (named '" + role + "'), false (no " + role + "), or a name such as 'g'")
    if a.weight is None and a.bias is None:
        raise SpecRuleError("affine", "[affine] with neither weight nor bias", "remove [affine], or enable one")
    if a.weight == a.bias:
        raise SpecRuleError("affine.bias", f"weight and bias are both named '{a.bias}'", "two distinct names")
    _weight_offset(spec)
    _cast(spec)


def _running(spec: Spec) -> None:
    r = spec.running
    if spec.center is not Center.MEAN or spec.scale is not Scale.STD:
        raise SpecRuleError("running", "running statistics track a mean and a variance: they need "
                            "center = 'mean' and scale = 'std'", "remove [running], or use mean/std")
    finest = spec.kept[0]
    for axis in r.axes:
        if axis not in finest:
            raise SpecRuleError("running.axes", f"'{axis}' is not a kept axis", "a subset of the kept axes: "
                                + (", ".join(finest) or "(none)"), token=axis)
    if spec.is_mixture and set(r.axes) not in [set(k) for k in spec.kept]:
        raise SpecRuleError("running.axes", "in a mixture, running statistics belong to one component",
                            "one of the kept sets: " + ", ".join(repr(" ".join(k)) for k in spec.kept), whole=True)
    m = r.momentum
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
        raise SpecRuleError("running.momentum", f"momentum must be a number in [0, 1], got {m!r}",
                            "e.g. 0.1 (the call may pass momentum=None for a cumulative average)")


def describe_fuse(f: Fuse) -> str:
    parts = []
    if f.prologue is not None:
        parts.append(f"prologue h = {f.prologue}" + (" (returned)" if f.keep_prologue else ""))
    if f.epilogue is not None:
        parts.append(f"epilogue out = {f.epilogue}")
    if f.quantize:
        parts.append(f"quantized to {f.quantize} per kept index")
    return ", ".join(parts)


def _fuse(spec: Spec) -> None:
    f = spec.fuse
    if f.keep_prologue is True and f.prologue is None:
        raise SpecRuleError("fuse.keep_prologue", "keep_prologue = true without a prologue",
                            'a prologue such as prologue = "x + residual", or remove keep_prologue')
    if f.prologue is None and f.epilogue is None and f.quantize is None:
        raise SpecRuleError("fuse", "[fuse] with neither prologue, epilogue nor quantize",
                            "remove [fuse], or give prologue = \"x + residual\", epilogue = \"silu(y)\" or "
                            "quantize = \"int8\"")
    for key, e, own, other in (("fuse.prologue", f.prologue, "x", "y"), ("fuse.epilogue", f.epilogue, "y", "x")):
        if e is None:
            continue
        if not isinstance(e, Expr):
            raise SpecRuleError(key, f"expected an expression, got {type(e).__name__}", 'e.g. "x + residual"')
        if e.find(other) is not None:
            what = "the prologue runs before normalization, so y does not exist yet" if own == "x" else \
                "the epilogue sees y, the normalized output; x is the prologue's input"
            raise SpecRuleError(key, f"'{other}' in the {key.split('.')[1]}: {what}",
                                f"'{own}', extra inputs, numbers, + - * /, and " + ", ".join(FUNCTIONS),
                                token=other)
        if e.find(own) is None:
            raise SpecRuleError(key, f"the {key.split('.')[1]} does not use '{own}'",
                                f"an expression of '{own}' and extra inputs, e.g. "
                                + ('"x + residual"' if own == "x" else '"silu(y)"'), whole=True)
        taken = set(RESERVED_ARGS) | set(spec.param_names) | set(spec.size_args) | {own}
        for name in e.names():
            if name in taken and name != own:
                raise SpecRuleError(key, f"'{name}' names an argument the op already has, not an extra input",
                                    "any other identifier, e.g. residual, gate, z", token=name)
            if keyword.iskeyword(name):
                raise SpecRuleError(key, f"'{name}' is a Python keyword, so it cannot be passed as {name}=",
                                    "any other identifier, e.g. residual, gate, z", token=name)
    if f.keep_prologue is not True and f.keep_prologue is not False:
        raise SpecRuleError("fuse.keep_prologue", f"expected true or false, got {f.keep_prologue!r}",
                            "true (return h too) or false")
    if f.quantize is not None and f.quantize not in QUANTIZE:
        raise SpecRuleError("fuse.quantize", f"unknown quantization {f.quantize!r}",
                            ", ".join(repr(q) for q in QUANTIZE) + " (float8_e4m3 on CUDA only)", whole=True)


#: [affine] cast: where a half-precision result is rounded to the input dtype
CASTS = ("after_weight", "before_weight")


def _cast(spec: Spec) -> None:
    cast = spec.affine.cast
    if cast not in CASTS:
        raise SpecRuleError("affine.cast", f"unknown cast {cast!r}", ", ".join(repr(c) for c in CASTS), whole=True)
    if cast == "before_weight" and spec.affine.weight is None:
        raise SpecRuleError("affine.cast", "cast = 'before_weight' without a weight",
                            "weight = true (or a name), or remove cast")


def _weight_offset(spec: Spec) -> None:
    off = spec.affine.weight_offset
    if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
        raise SpecRuleError("affine.weight_offset", f"weight_offset must be a finite number, got {off!r}",
                            "e.g. 1.0 (Gemma: the effective weight is weight + 1)")
    if off != 0 and spec.affine.weight is None:
        raise SpecRuleError("affine.weight_offset", "weight_offset without a weight",
                            "weight = true (or a name), or remove weight_offset")
