"""Tensors as the kernels see them, without copies: NumPy views of CPU tensors, CuPy views
(through DLPack) of CUDA tensors, bfloat16 (which NumPy and CuPy lack) as a BF16 of its
bits; and back."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CallError
from ..runtime import alloc
from ..runtime.arrays import BF16

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: what runtime/alloc.py's recycled buffers hold (NumPy dtypes: not bfloat16)
_POOLED = (torch.float16, torch.float32, torch.float64)
#: "use the spec's default momentum" (None already means a cumulative average)
_SPEC_MOMENTUM: Any = object()


def _array(t: Tensor, what: str) -> Any:
    """A zero-copy view of a tensor for the kernels: NumPy for CPU tensors, CuPy for CUDA ones
    (through DLPack; bfloat16 as a BF16 view of its bits). Strides and offset are kept."""
    t = t.detach()
    if t.dtype not in _FLOATS:
        raise CallError(f"normgen.torch: {what} has dtype {t.dtype}; normgen takes torch.float16, torch.bfloat16, "
                        "torch.float32 or torch.float64")
    if t.device.type == "cpu":
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: pass the bits
            return BF16(t.view(torch.int16).numpy().view(np.uint16))
        return t.numpy()
    if t.device.type != "cuda":
        raise CallError(f"normgen.torch: {what} is on device '{t.device}'; normgen runs CPU and CUDA tensors")
    import cupy

    if t.dtype == torch.bfloat16:  # CuPy has no bfloat16: pass the bits
        return BF16(cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16))
    return cupy.from_dlpack(t)


def _tensor(a: Any) -> Tensor:
    """The kernels' result as a tensor, without a copy (the inverse of `_array`)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    bits = getattr(a, "bits", None)
    if isinstance(bits, np.ndarray):  # BF16 on the CPU
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    if bits is not None:  # BF16 on the GPU
        return torch.from_dlpack(bits.view("int16")).view(torch.bfloat16)
    return torch.from_dlpack(a)


def empty_like(x: Tensor) -> Tensor:
    """torch.empty_like(x): the layout the custom ops' fake implementations promise for y and
    dx (x's strides when x is dense, else torch's suggested memory format). Large CPU outputs
    come from normgen's recycled buffers (runtime/alloc.py: no page faults per call) when
    those have exactly x's strides."""
    if x.device.type == "cpu" and x.dtype in _POOLED and x.numel() * x.element_size() >= alloc.MIN_BYTES:
        a = alloc.empty_like(x.detach().numpy())
        if tuple(s // a.itemsize for s in a.strides) == x.stride():
            return torch.from_numpy(a)
    return torch.empty_like(x)


def _on_stream(t: Tensor):
    """CuPy launches on the current PyTorch stream for CUDA tensors (nothing to do on CPU)."""
    if t.device.type != "cuda":
        return contextlib.nullcontext()
    import cupy

    return cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream)
