"""The command line's values, checked before any work starts.

argparse turns text into numbers (`shape`, `strides`, `size`, `count`); the functions
below check those numbers against a spec or a backend (`call_sizes`, `target_dtype`,
`call_strides`, `output_dir`). Each refusal is a usage error (exit 2) that names what it
received and what it accepts, so a typo never reaches a kernel, and nothing is written
before everything was checked.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import NormgenError

INT64_MAX = 2 ** 63 - 1  # the kernels index elements with int64


def _ints(text: str, what: str) -> tuple[int, ...]:
    parts = [t.strip() for t in text.replace("x", ",").split(",")]
    if not text.strip() or any(not t for t in parts):
        raise argparse.ArgumentTypeError(f"expected {what}: integers separated by commas (e.g. 32,128,56,56), "
                                         f"got {text!r}")
    try:
        return tuple(int(t) for t in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}: integers separated by commas (e.g. 32,128,56,56), "
                                         f"got {text!r}") from None


def shape(text: str) -> tuple[int, ...]:
    """--shape: sizes >= 1 whose product fits int64 (an empty input runs no kernels: no plan to show)."""
    dims = _ints(text, "a shape")
    if any(n < 1 for n in dims):
        why = " (an input with a zero dimension is empty: a call runs no kernels)" if 0 in dims else ""
        raise argparse.ArgumentTypeError(f"every dimension must be >= 1, got {text!r}{why}")
    if math.prod(dims) > INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} has {math.prod(dims):.3g} elements; expected at most "
                                         f"2**63 - 1 (the kernels index with int64)")
    return dims


def strides(text: str) -> tuple[int, ...]:
    """--strides: element strides of any sign (a call copies what it cannot walk: see call_strides)."""
    out = _ints(text, "element strides")
    if any(abs(s) > INT64_MAX for s in out):
        raise argparse.ArgumentTypeError(f"--strides {text}: expected strides within +-(2**63 - 1)")
    return out


def size(text: str) -> tuple[str, tuple[int, ...]]:
    """--size NAME=VALUE: the value as integers; call_sizes checks the name and the form against the spec."""
    name, eq, value = text.partition("=")
    if not eq or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. num_groups=32 or normalized_shape=1024), "
                                         f"got {text!r}")
    return name, _ints(value, f"the value of {name}")


def count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (threads, repeats, jobs)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return n
    parse.__name__ = f"integer >= {low}"
    return parse


def seconds(text: str) -> float:
    """A duration in seconds, >= 0."""
    try:
        s = float(text)
    except ValueError:
        s = math.nan
    if not s >= 0 or math.isinf(s):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return s


def call_sizes(spec, given: list[tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """--size values as a call takes them: a tuple for the shape of a variadic axis
    (normalized_shape=1024 -> (1024,)), an int for a split part (num_groups=32)."""
    args = spec.size_args  # argument name -> the axis it sizes
    variadic = {item.names[0] for item in spec.input.items if item.variadic}
    allowed = ", ".join(f"{a} (the shape of '*{ax}')" if ax in variadic else f"{a} (the size of axis '{ax}')"
                        for a, ax in sorted(args.items())) or f"none: {spec.name} takes no call-time sizes"
    out: dict[str, Any] = {}
    for name, value in given:
        if name not in args:
            raise NormgenError(f"--size {name}: {spec.name} has no call-time size named {name!r}", allowed=allowed)
        if name in out:
            raise NormgenError(f"--size {name} given twice", allowed="each name once")
        if args[name] in variadic:
            out[name] = value
        elif len(value) != 1:
            raise NormgenError(f"--size {name}={','.join(map(str, value))}: {name} sizes axis '{args[name]}' and "
                               "takes one integer", allowed=f"{name}=N with N >= 1")
        else:
            out[name] = value[0]
    missing = [a for a in args if a not in out]  # a call needs every size its spec names (plan/bind.py)
    if missing:
        raise NormgenError(f"{spec.name} needs " + " and ".join(f"--size {a}=..." for a in missing), allowed=allowed)
    return out


def target_dtype(dtype: str, target: str) -> str:
    """`dtype` if the target's backend runs it (the backend's own list, not a copy of it)."""
    supported = backend_dtypes(target)
    if dtype not in supported:
        raise NormgenError(f"--dtype {dtype}: the {target.upper()} kernels do not run {dtype}",
                           allowed=f"{', '.join(supported)} (with --target {target})")
    return dtype


def backend_dtypes(target: str) -> tuple[str, ...]:
    from .runtime import select

    return tuple(select(None, target).dtypes)


def call_strides(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[tuple[int, ...], str | None]:
    """The strides a call's kernels would see for an input with these element strides, and a
    note when the call copies the input first: a negative or zero stride along a dimension of
    size > 1 cannot be walked in place (runtime/arrays.py `elem_strides`), so the op copies
    such an input into a contiguous array."""
    from .layouts import layout_strides

    if len(strides) != len(shape):
        raise NormgenError(f"--strides has {len(strides)} entries for a shape of {len(shape)} dims "
                           f"{shape}", allowed="one stride per dimension")
    bad = [f"dim {d} (size {n}) has stride {s}" for d, (n, s) in enumerate(zip(shape, strides)) if n > 1 and s <= 0]
    if not bad:
        return strides, None
    dense = layout_strides(shape, "contiguous")
    return dense, (f"a call copies x to a contiguous array first ({'; '.join(bad)}: the kernels walk only "
                   f"positive strides in place); the plan below is for the copy, strides {dense}")


def output_dir(path: str | Path) -> Path:
    """-o: a folder that exists or can be made, and that we may write into (checked before rendering
    anything is written, so that a bad path leaves nothing behind)."""
    out = Path(path)
    try:
        if out.exists() and not out.is_dir():
            raise NormgenError(f"-o {path}: exists and is not a folder",
                               allowed="a folder, or a path to create one at")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # no such parent, not a folder, a name too long, no permission
        raise NormgenError(f"-o {path}: cannot create the folder ({e.strerror})",
                           allowed="a folder you can write to, or a path where one can be made") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise NormgenError(f"-o {path}: the folder is not writable", allowed="a folder you can write to")
    return out


def output_file(path: str | Path, option: str) -> Path:
    """A file a command writes when it is done (--json, --plot): checked first, by opening it,
    so that an hour of benchmarking does not end in an unwritable path. Its folder is made now
    if missing; a file that was not there is not left behind."""
    out = Path(path)
    try:
        if out.is_dir() or str(path).endswith(os.sep):
            raise NormgenError(f"{option} {path}: is a folder", allowed="a file path (its folder is made if missing)")
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        with open(out, "ab"):
            pass
        if not existed:
            out.unlink()
    except OSError as e:  # no such parent, not a folder, a name too long, no permission, a read-only disk
        raise NormgenError(f"{option} {path}: cannot write there ({e.strerror})",
                           allowed="a file path in a folder you can write to") from None
    return out
