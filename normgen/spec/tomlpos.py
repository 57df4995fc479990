"""Positions of keys and string values in a TOML text, for carets in error messages.

`tomllib` parses but forgets where things were. Spec files are small and flat (a few
top-level keys and tables such as `[affine]`), so a line scanner is enough to find where
the value of `table.key` starts and where the k-th string literal of an array lives.
It also finds duplicate keys, which tomllib reports without naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\- ]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=\s*")
_STRING = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'([^']*)'")


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    column: int  # 1-based
    text: str  # the whole source line


class TomlPositions:
    """Index of `dotted.key -> position of its value` for a TOML source text."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.values: dict[str, Pos] = {}
        self.duplicates: list[tuple[str, Pos, Pos]] = []  # (key, first, again)
        table = ""
        for i, line in enumerate(self.lines, start=1):
            m = _TABLE.match(line)
            if m:
                table = m.group(1).replace(" ", "")
                self._record(table, Pos(i, line.index("[") + 1, line))
                continue
            m = _KEY.match(line)
            if not m:
                continue
            key = f"{table}.{m.group(1)}" if table else m.group(1)
            self._record(key, Pos(i, m.end() + 1, line))
            rest = line[m.end():]
            if rest.lstrip().startswith("{"):  # inline table: index its keys too
                for km in re.finditer(r"(?:^|[{,])\s*([A-Za-z0-9_\-]+)\s*=\s*", rest):
                    self._record(f"{key}.{km.group(1)}", Pos(i, m.end() + km.end() + 1, line))

    def _record(self, key: str, pos: Pos) -> None:
        if key in self.values:
            self.duplicates.append((key, self.values[key], pos))
        else:
            self.values[key] = pos

    def value(self, key: str) -> Pos | None:
        """Where the value of `key` (dotted, e.g. 'affine.axes') starts."""
        return self.values.get(key)

    def string(self, key: str, index: int | None = None) -> Pos | None:
        """Where the characters of a string value start (just after its opening quote).

        With `index`, the index-th string literal of an array value, which may span lines.
        """
        pos = self.values.get(key)
        if pos is None:
            return None
        wanted = 0 if index is None else index
        seen = 0
        for line_no in range(pos.line, min(pos.line + 50, len(self.lines) + 1)):
            line = self.lines[line_no - 1]
            start = pos.column - 1 if line_no == pos.line else 0
            for m in _STRING.finditer(line, start):
                if seen == wanted:
                    return Pos(line_no, m.start() + 2, line)
                seen += 1
            if index is None:
                break
        return None
