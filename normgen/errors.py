"""normgen's one error type, with an optional location in a spec.

Every user-facing failure (a bad spec file, a bad call, a corrupt cache entry that
cannot be rebuilt) raises `NormgenError`. When the error comes from a spec, it carries a
`Location` (file, key, line, column, the source line) and prints a caret under the bad
token, the way compilers do:

    specs/my_norm.toml:4:10: key 'kept': unknown axis 'K'
        kept = "N K"
                  ^
      allowed: the axes of input 'N C *spatial': N, C, spatial
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a spec token lives: file, key, and (when known) its line and column."""

    file: str  # a path, or "<python>" for specs built in code
    key: str | None  # the spec key, e.g. "kept" or "affine.axes" (None: the file as a whole)
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based, of the first character of the token
    source_line: str | None = None  # the text of that line, for the caret
    width: int = 1  # how many carets to draw

    def header(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: key '{self.key}'" if self.key else where

    def caret_lines(self) -> list[str]:
        if self.source_line is None or self.column is None:
            return []
        text = self.source_line.rstrip("\n")
        return ["    " + text, "    " + " " * (self.column - 1) + "^" * max(1, self.width)]


class NormgenError(Exception):
    """A user error: bad spec, bad call, or an unusable environment.

    `message` states the rule that was broken; `allowed` (optional) says what would be
    accepted; `location` (optional) points into the spec.
    """

    def __init__(self, message: str, *, location: Location | None = None, allowed: str | None = None):
        self.message = message
        self.location = location
        self.allowed = allowed
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        if self.location is not None:
            lines.append(f"{self.location.header()}: {self.message}")
            lines.extend(self.location.caret_lines())
        else:
            lines.append(self.message)
        if self.allowed:
            lines.append(f"  allowed: {self.allowed}")
        return "\n".join(lines)


class SpecError(NormgenError):
    """A spec file or a Python-built spec broke a rule of the spec language."""


class CallError(NormgenError, ValueError):
    """An op was called with arguments that do not fit its spec (shape, dtype, layout)."""
