"""The CUDA kernels on the CPU emulator: a Device for the CUDA backend that takes NumPy arrays.

This is how CI runs the generated CUDA C without a GPU (`normgen check --target cuda`,
`op.forward(x, target="cuda")` with NumPy arrays): the same source, compiled with g++
against normgen.testing.cuda_emu, whose launches run each block's threads as fibers and
report races, barrier divergence and out-of-bounds accesses.
"""

from __future__ import annotations

import numpy as np

from ..plan.device import EMULATOR
from ..testing.cuda_emu import compile_source, driver
from .arrays import bits, flat


class EmuDevice:
    """The CUDA kernels on the CPU emulator (NumPy arrays): for CI and for tests."""

    name = "emulator"
    profile = EMULATOR  # few SMs: small shapes still take the split (multi-part) paths

    def __init__(self, order: str = "forward", seed: int = 0):
        self.order, self.seed = order, seed

    def target_id(self) -> str:
        return f"cuda|emulator|{driver.compiler_id()}"

    def owns(self, a) -> bool:
        return isinstance(bits(a), np.ndarray)

    def compile(self, source: str, names: list[str], label: str):
        return compile_source(source, names, name=label)

    def launch(self, module, name: str, grid: int, block: tuple[int, int], args: tuple) -> None:
        conv = tuple(flat(a) if isinstance(a, np.ndarray) else a for a in args)
        module.launch(name, grid=(grid,), block=block, args=conv, order=self.order, seed=self.seed)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def empty_like(self, a):
        return np.empty_like(a)

    def asarray(self, a: np.ndarray):
        return np.ascontiguousarray(a)

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def overlaps(self, a, b) -> bool:
        return np.may_share_memory(a, b)
