"""Where normgen's data lives: templates, bundled specs, the reference generated sources.

In a source checkout (and an editable install) they are the top-level folders beside the
`normgen` package; a regular install maps them into the package (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE.parent / name, _PACKAGE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"normgen: cannot find its {name}/ folder next to {_PACKAGE}")


def templates_dir() -> Path:
    return _find("templates")


def specs_dir() -> Path:
    return _find("specs")


def repo_root() -> Path | None:
    """The source checkout, when normgen runs from one (for `generated/`)."""
    root = _PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "generated").is_dir() else None
