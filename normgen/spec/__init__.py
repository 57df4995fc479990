"""The spec language: what a normalization variant is, independent of shapes and hardware.

    axes.py      the axis-expression notation ("N (G c) *spatial")
    tomlpos.py   where keys and strings sit in a TOML text (for carets in errors)
    expr.py      the expressions of fused specs ("x + residual", "silu(y)")
    derive.py    their symbolic derivatives
    model.py     the frozen Spec and its rules (checked in __post_init__)
    loader.py    TOML text or Python arguments -> a Spec, errors with a caret in the file
    library.py   the bundled specs in specs/
"""

from .library import bundled_names, bundled_paths, find_spec
from .loader import build_spec, load_spec, parse_spec
from .model import RESERVED_ARGS, Affine, Center, Fuse, Running, Scale, Spec

__all__ = ["Spec", "Center", "Scale", "Affine", "Running", "Fuse", "RESERVED_ARGS", "load_spec", "parse_spec",
           "build_spec",
           "find_spec", "bundled_names", "bundled_paths"]
