"""A CUDA-on-CPU emulator: run the CUDA C kernels normgen generates without a GPU, and catch their bugs.

The same `.cu` source compiles with nvcc (or NVRTC through CuPy) for the GPU and with g++ for
the emulator: every generated source starts with the prelude (`PRELUDE`, or
`#include "prelude.cuh"` with `include_dirs()` on the include path), which picks the CUDA
headers or, under `-DNORMGEN_EMULATE`, `ngemu.h`. SUBSET.md lists what templates may use.

    >>> import numpy as np
    >>> from normgen.testing.cuda_emu import compile_source, EmulationError
    >>> mod = compile_source(source, ["block_sum"])
    >>> mod.launch("block_sum", grid=(8,), block=(256,), args=(x, out, np.int32(x.size)))

A launch runs each block's threads as fibers and reports, as an `EmulationError` naming the
kernel, block, threads, shared array, element and source lines:

* data races on shared memory (two threads, no barrier between, at least one write),
* barriers that not every thread of the block reaches (divergent or after an early return),
* warp shuffles/ballots/syncwarps whose lanes disagree on the mask or never arrive,
* out-of-bounds shared indices, reads of never-written shared memory,
* out-of-bounds global writes (guard bytes around every array), writes to read-only arrays,
* device assert()/__trap(), and launches that run past a time limit (no hangs).

`nvcc_check(source)` compiles a source with the real nvcc for sm_80 and sm_90 (warnings are
errors), so that nothing runs in the emulator that nvcc would reject.
"""

from .base import PRELUDE, EmulationError
from .driver import compile_source, include_dirs, nvcc_check, nvcc_path
from .module import EmuKernel, EmuModule, Param

__all__ = ["PRELUDE", "EmuKernel", "EmuModule", "EmulationError", "Param", "compile_source", "include_dirs",
           "nvcc_check", "nvcc_path"]
