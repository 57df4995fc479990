"""The bundled spec library in specs/: one TOML file per variant."""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import NormgenError
from ..paths import specs_dir
from .loader import Spec, load_spec


def bundled_paths() -> list[Path]:
    return sorted(specs_dir().glob("*.toml"))


def bundled_names() -> list[str]:
    return [p.stem for p in bundled_paths()]


@functools.lru_cache(maxsize=None)
def find_spec(name: str) -> Spec:
    """The bundled spec called `name` (its file is specs/<name>.toml)."""
    path = specs_dir() / f"{name}.toml"
    if not path.is_file():
        raise NormgenError(f"no bundled spec named '{name}'", allowed=", ".join(bundled_names())
                           + ", or a path to a .toml spec file")
    return load_spec(path)
