"""The axis-expression notation of spec files, einops style.

    "N (G c) *spatial"

names three items: a plain axis `N`, one physical dimension split into axes `G` and `c`
(row-major: `G` outer, `c` inner), and a variadic group `spatial` of zero or more
dimensions whose number is known only at call time. The same notation lists kept axes
("N G") and affine axes ("(G c)": one parameter dimension of size G·c).

`parse_axes` returns an `AxisExpr`, a frozen tuple of items that remember their column in
the text, so that errors can put a caret under the bad token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class AxisSyntaxError(Exception):
    """A rule of the notation was broken at `offset` (0-based) in the expression text.

    Raised by this module only; spec.py turns it into a SpecError with a file location.
    """

    def __init__(self, message: str, offset: int, width: int = 1, allowed: str | None = None):
        super().__init__(message)
        self.message, self.offset, self.width, self.allowed = message, offset, width, allowed


@dataclass(frozen=True)
class Axis:
    """A named axis, as written in an expression, with its column in the text."""

    name: str
    offset: int = 0


@dataclass(frozen=True)
class Item:
    """One physical dimension (a plain axis or a split group) or a variadic group."""

    axes: tuple[Axis, ...]  # one axis, or the parts of a split "(G c)"
    variadic: bool = False  # "*name": zero or more dimensions
    offset: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    @property
    def is_split(self) -> bool:
        return len(self.axes) > 1

    def __str__(self) -> str:
        if self.variadic:
            return "*" + self.axes[0].name
        if self.is_split:
            return "(" + " ".join(self.names) + ")"
        return self.axes[0].name


@dataclass(frozen=True)
class AxisExpr:
    """A parsed axis expression: items in order, and the text they came from."""

    items: tuple[Item, ...]
    text: str

    @property
    def names(self) -> tuple[str, ...]:
        """Every axis name, in order (split parts separately, variadic groups by name)."""
        return tuple(n for item in self.items for n in item.names)

    def find(self, name: str) -> Axis:
        for item in self.items:
            for axis in item.axes:
                if axis.name == name:
                    return axis
        raise KeyError(name)

    def __str__(self) -> str:
        return " ".join(str(i) for i in self.items)


def parse_axes(text: str, *, allow_variadic: bool = True, allow_split: bool = True) -> AxisExpr:
    """Parse an axis expression; raise AxisSyntaxError on the first broken rule.

    >>> str(parse_axes("N (G c) *spatial"))
    'N (G c) *spatial'
    """
    if not isinstance(text, str):
        raise AxisSyntaxError(f"expected a string of axis names, got {type(text).__name__}", 0)
    items: list[Item] = []
    seen: dict[str, int] = {}
    pos = 0
    group: list[Axis] | None = None
    group_start = 0

    def take_name(start: int) -> Axis:
        m = _NAME.match(text, start)
        if not m:
            bad = text[start] if start < len(text) else "end of text"
            raise AxisSyntaxError(
                f"expected an axis name, found {bad!r}",
                start,
                allowed="names like N, C, spatial (letters, digits, '_'; not starting with a digit)",
            )
        name = m.group(0)
        if name in seen:
            raise AxisSyntaxError(
                f"axis '{name}' is used twice (first at column {seen[name] + 1})",
                start,
                len(name),
                allowed="each axis name once per expression",
            )
        seen[name] = start
        return Axis(name, start)

    while pos < len(text):
        ch = text[pos]
        if ch.isspace():
            pos += 1
        elif ch == "(":
            if not allow_split:
                raise AxisSyntaxError("split groups '( … )' are not allowed here", pos)
            if group is not None:
                raise AxisSyntaxError("groups cannot nest", pos, allowed="one level: (G c)")
            group, group_start = [], pos
            pos += 1
        elif ch == ")":
            if group is None:
                raise AxisSyntaxError("')' without a matching '('", pos)
            if len(group) < 2:
                raise AxisSyntaxError(
                    "a group needs two or more axes",
                    group_start,
                    pos - group_start + 1,
                    allowed="(G c): one dimension split into G outer and c inner",
                )
            items.append(Item(tuple(group), offset=group_start))
            group = None
            pos += 1
        elif ch == "*":
            if group is not None:
                raise AxisSyntaxError("a variadic group cannot stand inside '( … )'", pos)
            if not allow_variadic:
                raise AxisSyntaxError("variadic groups '*name' are not allowed here", pos)
            axis = take_name(pos + 1)
            items.append(Item((axis,), variadic=True, offset=pos))
            pos = axis.offset + len(axis.name)
        else:
            axis = take_name(pos)
            if group is not None:
                group.append(axis)
            else:
                items.append(Item((axis,), offset=pos))
            pos = axis.offset + len(axis.name)
    if group is not None:
        raise AxisSyntaxError("'(' is never closed", group_start)
    return AxisExpr(tuple(items), text)
