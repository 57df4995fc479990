"""The emulator's shared pieces: where its files are, how it builds, and its one error type."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ...codegen import PRELUDE_DIR
from ...errors import NormgenError

PACKAGE_DIR = Path(__file__).resolve().parent
HEADER = PACKAGE_DIR / "ngemu.h"
RUNTIME = PACKAGE_DIR / "ngemu_rt.cpp"
PRELUDE_FILE = PRELUDE_DIR / "prelude.cuh"
#: The prelude's text, for templates that paste it at the top of a source instead of including it.
PRELUDE = PRELUDE_FILE.read_text()

#: How every kernel source is compiled. -ffp-contract=off: the same float results on x86-64
#: and aarch64 (g++ would fuse a*b+c into an FMA on aarch64 only).
KERNEL_FLAGS = ("-std=c++17", "-O1", "-g", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off", "-pthread",
                "-DNORMGEN_EMULATE")
RUNTIME_FLAGS = ("-std=c++17", "-O2", "-g", "-fPIC", "-fvisibility=hidden", "-pthread", "-DNORMGEN_EMULATE")
GUARD_BYTES = 4096
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
ERROR_KINDS = {1: "race", 2: "barrier", 3: "shared-bounds", 4: "warp", 5: "timeout", 6: "trap", 7: "config",
               8: "uninitialized", 9: "abandoned"}
ABANDONED = 9


class EmulationError(NormgenError):
    """A kernel failed to compile, was called wrongly, or broke a rule of the CUDA model when run.

    `kind` says which: 'compile', 'argument', 'race', 'barrier', 'shared-bounds', 'warp',
    'global-bounds', 'readonly-write', 'uninitialized', 'timeout', 'abandoned', 'trap',
    'config', 'nvcc'. `kernel` and `block` (x, y, z) are set when known.

    >>> try:
    ...     mod.launch("racy", grid=1, block=64, args=(out,))
    ... except EmulationError as e:
    ...     assert e.kind == "race" and e.block == (0, 0, 0)
    """

    def __init__(self, message: str, *, kind: str, kernel: str | None = None,
                 block: tuple[int, int, int] | None = None):
        self.kind = kind
        self.kernel = kernel
        self.block = block
        super().__init__(message)


def _numbered(source: str, lines: Iterable[int] | None = None, context: int = 3) -> str:
    text = source.splitlines()
    if lines is None:
        keep = range(1, len(text) + 1)
    else:
        wanted = {n for line in lines for n in range(line - context, line + context + 1)}
        keep = [n for n in range(1, len(text) + 1) if n in wanted]
    out, prev = [], 0
    for n in keep:
        if prev and n != prev + 1:
            out.append("     ...")
        out.append(f"{n:5d} | {text[n - 1]}")
        prev = n
    return "\n".join(out)
