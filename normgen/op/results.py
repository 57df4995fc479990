"""What a forward call returns (and its backward needs), and what a backward returns."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..plan.bind import Binding
from .args import Call
from .mixture import Mix


@dataclass(frozen=True)
class Forward:
    """The result of a forward call: y, the statistics, and what backward needs.

    The kernels keep, per kept index, the mean split into hi + lo (for float32, hi alone
    loses the digits that x - mean needs) and rstd: `kstats`, an array [groups, 3] of the
    backend (NumPy on the CPU, CuPy on a GPU). `mean` and `rstd` are views of it, in the
    statistics' shape (the kept axes, in kept order).
    """

    y: Any
    kstats: Any = field(repr=False)
    call: Call = field(repr=False)
    centered: bool = field(repr=False, default=True)
    mix: Mix | None = field(repr=False, default=None)  # a mixture's intermediates
    count: np.ndarray | None = field(repr=False, default=None)  # elements per group over all ranks
    # (count, mean, M2) per group [groups, 3], float64, of the backend (host for mixtures and across
    # ranks), when this call computed batch statistics (None in evaluation): what a caller that keeps
    # running statistics itself (normgen.torch) updates them from
    moments: Any = field(repr=False, default=None)

    @property
    def binding(self) -> Binding:
        return self.call.binding

    @property
    def backend(self):
        return self.call.backend

    @property
    def x(self):
        return self.call.x

    @property
    def prologue(self):
        """h, the value a fused spec normalized (its kept prologue, e.g. x + residual); None unless kept."""
        return self.call.prologue

    @property
    def scale(self):
        """A quantized output's scale per kept index (kept order): y ≈ fwd.y * fwd.scale; None otherwise."""
        return self.call.qscale

    @property
    def mean(self):
        """The mean per kept index (kept order); None without centering."""
        return self.kstats[:, 0].reshape(self.binding.stats_shape) if self.centered else None

    @property
    def rstd(self):
        """1 / sigma per kept index (kept order)."""
        return self.kstats[:, 2].reshape(self.binding.stats_shape)

    @functools.cached_property
    def host(self) -> np.ndarray:
        """kstats on the host (copied once from a GPU)."""
        return self.backend.to_host(self.kstats)

    @property
    def mu64(self) -> np.ndarray:
        """The mean in float64 (hi + lo), on the host, in the statistics' shape."""
        h = self.host
        return (h[:, 0].astype(np.float64) + h[:, 1]).reshape(self.binding.stats_shape)

    @property
    def rstd64(self) -> np.ndarray:
        return self.host[:, 2].astype(np.float64).reshape(self.binding.stats_shape)


@dataclass(frozen=True)
class Grads:
    """Gradients of a backward call: dx, one entry per parameter that was passed, and one per
    extra input of a fused spec (by its name)."""

    dx: Any
    params: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name in ("x", "dx"):
            return self.dx
        return self.extras[name] if name in self.extras else self.params[name]


def param_grads(spec, call: Call, dw, db) -> dict[str, Any]:
    """Gradients of the weight and bias a call was given, shaped like them, in their dtype
    (float32 for half types); None sums (no elements) are zeros."""
    be, binding = call.backend, call.binding
    pdt = be.stat_dtype(call.dtype) if call.dtype in ("float16", "bfloat16") else np.dtype(call.dtype)
    a = spec.affine
    out = {}
    for name, p, g in ((a.weight if a else None, call.weight, dw), (a.bias if a else None, call.bias, db)):
        if p is not None:
            if g is not None and getattr(be, "device_stats", False) and be.owns(g):  # reduced on the device
                out[name] = g.reshape(binding.param_shape).astype(pdt)
                continue
            g = np.zeros(binding.param_shape) if g is None else np.asarray(g).reshape(binding.param_shape)
            out[name] = be.from_host(g.astype(pdt))
    return out
