"""What convert() checks before it swaps a model's norm layer, and what it reports.

A replacement is run against the original on a small random input of the module's own
shape, in float32 and in the module's dtype, before it is swapped in: convert never
silently changes a model's numerics. float32 must agree within float32 rounding; float16
and bfloat16 within one unit in the last place (the casting order of model_norms.py's
specs is what makes that possible).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import NormgenError

#: torch.nn's norm base classes: a subclass that is not an exact torch.nn class has its own forward
_NORM_BASES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


#: how every reason from `mismatch` starts (convert warns about these)
CHECK_FAILED = "the check before swapping failed: "


@dataclass
class Report:
    """convert(model, report=True)'s answer: (path, qualified class) of each swapped module,
    and (path, qualified class, reason) of each norm-like module left on PyTorch."""

    swapped: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.swapped)}, left {len(self.left)}"]
        lines += [f"  left {path} ({cls}): {why}" for path, cls, why in self.left]
        return "\n".join(lines)


def looks_like_norm(module: nn.Module) -> bool:
    """A leaf module that is a torch.nn norm (subclass) or whose class name says Norm: what a
    user expects convert() to handle, so the report says why it did not."""
    if type(module).__module__.startswith("normgen."):
        return False
    if isinstance(module, _NORM_BASES):
        return True
    return "Norm" in type(module).__name__ and not any(True for _ in module.children())


def unknown_reason(module: nn.Module) -> str:
    for base in _NORM_BASES:
        if isinstance(module, base):
            return (f"a subclass of {base.__module__}.{base.__qualname__} with its own forward, "
                    "not in normgen.torch.model_norms.NORM_CLASSES")
    return "not in normgen.torch.model_norms.NORM_CLASSES"


def mismatch(original: nn.Module, new: nn.Module, entry) -> str | None:
    """Why `new` does not reproduce `original` (None when it does), on random inputs shaped
    for the module: float32 (on float32 copies when the module is half) and its own dtype."""
    why = _first_difference(original, new, entry)
    return None if why is None else CHECK_FAILED + why


def _first_difference(original: nn.Module, new: nn.Module, entry) -> str | None:
    if original.weight.is_meta:  # a model built on device="meta" has no values: check the math on a CPU copy
        original = _materialized(original)
        new = type(new)(original, entry)
    weight = original.weight
    size = weight.shape[0] if entry.channels_first else None
    shape = (2, size, 3, 3) if size is not None else (2, 3, *weight.shape)
    pairs = [(weight.dtype, original, new)]
    if weight.dtype != torch.float32:
        ref32 = copy.deepcopy(original).float()
        pairs.insert(0, (torch.float32, ref32, type(new)(ref32, entry)))
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    for dtype, ref, twin in pairs:
        x = x64.to(device=weight.device, dtype=dtype)
        try:
            with torch.no_grad():
                want, got = ref(x), twin(x)
        except NormgenError as e:
            return f"normgen cannot run it in {dtype}: {e}"
        why = _compare(want, got, dtype)
        if why is not None:
            return why
    return None


def _materialized(module: nn.Module) -> nn.Module:
    """A CPU copy of a meta module, its floating parameters and buffers filled with random values."""
    out = copy.deepcopy(module).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in (*out.parameters(), *out.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64))
    return out


def _compare(want: Tensor, got: Tensor, dtype: torch.dtype) -> str | None:
    if want.dtype != got.dtype or want.shape != got.shape:
        return (f"the original returns {want.dtype} {tuple(want.shape)}, the replacement {got.dtype} "
                f"{tuple(got.shape)}")
    if dtype in (torch.float32, torch.float64):
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
            err = (got - want).abs().max().item()
            return f"in {dtype} the outputs differ by up to {err:.3g} (allowed: 1e-5 + 1e-5 * |value|)"
        return None
    ulps = ulp_distance(want, got)
    if ulps > 1:
        return f"in {dtype} the outputs differ by up to {ulps:g} units in the last place (allowed: 1)"
    return None


def ulp_distance(want: Tensor, got: Tensor) -> float:
    """The largest |got - want| in units in the last place of `want`'s dtype at `want`."""
    w, g = want.double(), got.double()
    eps = torch.finfo(want.dtype).eps
    tiny = torch.finfo(want.dtype).tiny
    ulp = torch.exp2(torch.floor(torch.log2(w.abs().clamp_min(tiny)))) * eps
    return float(((g - w).abs() / ulp).max()) if w.numel() else 0.0
