"""normgen: a compiler for normalization layers.

Describe a variant by which indices share statistics (a spec file), and normgen plans,
generates, compiles, caches and checks fused forward and backward kernels for it.

    >>> import normgen
    >>> op = normgen.load("group_norm")             # a bundled spec, or a path to a .toml
    >>> y = op(x, weight, bias, num_groups=32)
    >>> from normgen.ops import layer_norm           # torch.nn.functional-style signatures

Importing normgen compiles nothing: kernels are built (or loaded from the disk cache) on
first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import CallError, NormgenError, SpecError  # noqa: E402
from .spec import Spec, build_spec, load_spec, parse_spec  # noqa: E402

__all__ = ["__version__", "NormgenError", "SpecError", "CallError", "Spec", "load_spec", "parse_spec",
           "build_spec", "load", "ops"]


def load(name_or_path, **kwargs):
    """An Op for a bundled spec name, a spec file path, or a Spec object.

    >>> normgen.load("layer_norm")(x, normalized_shape=(1024,))
    """
    from .op import load as _load  # the op pipeline imports NumPy-side machinery: on first use

    return _load(name_or_path, **kwargs)


def __getattr__(name: str):
    if name == "ops":
        import importlib

        return importlib.import_module("normgen.ops")
    raise AttributeError(f"module 'normgen' has no attribute {name!r}")
