"""`normgen bench --target cuda --fused`: the fused specs' CUDA kernels on a GPU against the
PyTorch lines they replace, in one run (bench/fused.py has the cases and the CPU version).

Providers: "normgen" (the Op on CuPy arrays: the kernels of templates/cuda/*_fused.cu.j2),
"eager" (the unfused PyTorch lines on CUDA tensors), "compile" (torch.compile of the same
lines), "copy" (a device-to-device copy of the bytes the fused kernels move: every array
read once and written once, the ceiling of a memory-bound kernel). Each timed call runs
after L2 is flushed, with CUDA events around it; the providers are interleaved and the
median is reported (bench/cuda.py `_time`). The arrays are the same memory for every
provider (CuPy views of the tensors, through DLPack), in the case's layout.

Without a GPU it stops before anything is allocated, saying so (`require_gpu`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..layouts import make_array
from ..op.op import load
from .cuda import L2Flush, _time, require_gpu
from .fused import FusedCase, FusedResult, _torch_lines, cases

#: the dtypes the fused GPU benchmark takes (NumPy makes the inputs; bfloat16 has no NumPy type)
DTYPES = ("float32", "float16")


def setup(case: FusedCase, direction: str, dtype: str, compiled: dict[Any, Callable]) -> tuple[int, dict]:
    """(bytes the fused kernels move, one callable per provider) for one case and direction."""
    import cupy as cp
    import torch

    rng = np.random.default_rng(0)
    op = load(case.spec)
    sizes = dict(case.sizes)
    b = op.binding(case.shape, **sizes)

    def tensor(values: np.ndarray, layout: str):  # a CUDA tensor with the layout's strides
        return torch.from_numpy(make_array(values, layout, dtype)).to("cuda")

    x = tensor(rng.standard_normal(case.shape), case.layout)
    extras = {e: tensor(rng.standard_normal(case.shape), case.layout) for e in op.spec.extras}
    params = {p: tensor(rng.standard_normal(b.param_shape) * 0.1 + 1, "contiguous") for p in op.spec.param_names}
    dy = tensor(rng.standard_normal(case.shape), case.layout)
    train = direction == "train"
    xc, dyc = cp.from_dlpack(x), cp.from_dlpack(dy)
    ec = {e: cp.from_dlpack(t) for e, t in extras.items()}
    pc = {p: cp.from_dlpack(t) for p, t in params.items()}

    def normgen_call():
        fwd = op.forward(xc, **pc, **ec, **sizes)
        return op.backward(dyc, fwd) if train else fwd

    inputs = [x, *extras.values(), *params.values()]
    if train:
        inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    lines = _torch_lines(case)
    key = (case.spec, train)
    if key not in compiled:
        compiled[key] = torch.compile(lines)
    def torch_call(fn: Callable) -> Callable:
        if train:
            return lambda: torch.autograd.grad(fn(*inputs)[0], inputs, dy)
        return lambda: fn(*inputs)

    run: dict[str, Callable] = {"normgen": normgen_call, "eager": torch_call(lines), "compile": torch_call(compiled[key])}
    nbytes = case.arrays[direction] * x.numel() * x.element_size()
    src, dst = cp.empty(nbytes // 2, cp.uint8), cp.empty(nbytes // 2, cp.uint8)
    run["copy"] = lambda: dst.__setitem__(Ellipsis, src)  # reads nbytes / 2, writes nbytes / 2
    return nbytes, run


def run(directions: tuple[str, ...] = ("forward", "train"), dtype: str = "float32", repeat: int = 20,
        warmup: int = 3, progress: Callable[[FusedResult], None] | None = None) -> list[FusedResult]:
    """Every fused case on the GPU CuPy sees; a NormgenError, before any work, when there is none."""
    require_gpu()
    if dtype not in DTYPES:
        from ..errors import NormgenError

        raise NormgenError(f"bench --target cuda --fused takes {' or '.join(DTYPES)}, got {dtype}")
    flush = L2Flush()
    compiled: dict[Any, Callable] = {}
    out = []
    for case in cases():
        for direction in directions:
            nbytes, providers = setup(case, direction, dtype, compiled)
            r = FusedResult(case.name, direction, nbytes, _time(providers, repeat, warmup, flush))
            out.append(r)
            if progress:
                progress(r)
    return out


def table(results: list[FusedResult]) -> str:
    """ms per provider, normgen's speed-up over eager and torch.compile, its fraction of the copy's speed."""
    head = (f"{'case':<36} {'dir':<7} {'normgen':>8} {'eager':>8} {'compile':>8} {'x eager':>8} {'x compile':>9} "
            f"{'of copy':>7}")
    lines = [head, f"{'':<36} {'':<7} {'ms':>8} {'ms':>8} {'ms':>8}"]
    for r in results:
        lines.append(f"{r.case:<36} {r.direction:<7} {r.ms['normgen']:8.3f} {r.ms['eager']:8.3f} "
                     f"{r.ms['compile']:8.3f} {r.speedup('eager'):7.2f}x {r.speedup('compile'):8.2f}x "
                     f"{r.ms['copy'] / r.ms['normgen']:7.0%}")
    return "\n".join(lines)
