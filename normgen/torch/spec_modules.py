"""A module for any spec: `SpecNorm`, `LazySpecNorm` (shapes from the first input), `from_spec`,
and Switchable Norm (`SwitchableNorm1d/2d/3d`) on the bundled mixture spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ..errors import CallError
from ..op import Op, load
from ..spec import Spec
from .function import _SPEC_MOMENTUM, normalize
from .functional import _shape
from .modules import Unscriptable, _momentum_step
from .registry import spec_key


class SpecNorm(Unscriptable, nn.Module):
    """A normalization layer for any normgen spec (bundled name, .toml path or Spec).

    Parameters are the spec's affine parameters (weight-like ones start at 1, bias-like at
    0), shaped `param_shape`, plus `mean_weight`/`var_weight` (ones: equal mixing) for a
    mixture spec. Specs with [running] get `running_mean`, `running_var` and
    `num_batches_tracked` buffers shaped `running_shape`, used as torch.nn's BatchNorm uses
    them: updated when training, normalized with in eval mode. `sizes` are the spec's
    call-time sizes (`{"num_groups": 4}`). Use `from_spec` to have the shapes worked out.

    >>> m = SpecNorm("batch_norm", (16,), running_shape=(16,))   # a BatchNorm2d, state_dict and all
    """

    def __init__(self, spec: str | Spec | Op, param_shape: tuple[int, ...] | None = None, *,
                 running_shape: tuple[int, ...] | None = None, sizes: Mapping[str, Any] | None = None,
                 eps: float | None = None, momentum: float | None = _SPEC_MOMENTUM, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None,
                 save: str = "x") -> None:
        super().__init__()
        self.op = load(spec)
        self.save = save  # "y": the backward rebuilds x_hat from y, and x is not kept (see normalize)
        self._key = spec_key(self.op)  # what the custom ops name the spec by (registry.py)
        s = self.op.spec
        unknown = sorted(set(sizes or {}) - set(s.size_args))
        if unknown:
            raise CallError(f"{s.name}: unknown size argument(s) {', '.join(unknown)}; this spec takes "
                            f"{', '.join(sorted(s.size_args)) or 'none'}")
        self.sizes = dict(sizes or {})
        self.eps = eps
        self.affine = affine and s.affine is not None
        self.track_running_stats = track_running_stats and s.running is not None
        if s.running is None:
            self.momentum = None
        else:
            self.momentum = s.running.momentum if momentum is _SPEC_MOMENTUM else momentum
        factory = {"device": device, "dtype": dtype}
        for name in s.param_names if self.affine else ():
            self.register_parameter(name, _parameter(param_shape, factory))
        if s.is_mixture:  # mixing logits, one per kept set (for switchable_norm: IN, LN, BN)
            for name in ("mean_weight", "var_weight"):
                self.register_parameter(name, nn.Parameter(torch.ones(len(s.kept), **factory)))
        for name in ("running_mean", "running_var"):
            self.register_buffer(name, _buffer(running_shape, factory) if self.track_running_stats else None)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
                             if self.track_running_stats else None)
        if not self.has_uninitialized:
            self.reset_parameters()
        elif not isinstance(self, LazySpecNorm):
            raise CallError(f"{s.name}: the shape of the parameters or running statistics is unknown; give "
                            "param_shape= and running_shape=, or use from_spec() or LazySpecNorm, which take "
                            "them from the first input")

    @property
    def spec(self) -> Spec:
        return self.op.spec

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._key = spec_key(self.op)  # registered again in a process that unpickles the module

    @property
    def has_uninitialized(self) -> bool:
        return any(isinstance(t, (UninitializedParameter, UninitializedBuffer))
                   for t in [*self._parameters.values(), *self._buffers.values()])

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        s = self.spec
        with torch.no_grad():
            for name in s.param_names if self.affine else ():  # the identity: effective weight 1, bias 0
                getattr(self, name).fill_(1.0 - s.weight_offset if name == s.affine.weight else 0.0)
            if s.is_mixture:
                self.mean_weight.fill_(1.0)
                self.var_weight.fill_(1.0)

    def forward(self, input: Tensor, **extras: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """y, or (y, h) for a spec that keeps its prologue; a fused spec's extra inputs by name
        (`m(x, residual=r)`)."""
        momentum = _momentum_step(self) if self.track_running_stats else _SPEC_MOMENTUM
        s = self.spec
        params = {n: getattr(self, n) for n in s.param_names} if self.affine else {}
        if s.is_mixture:
            params.update(mean_weight=self.mean_weight, var_weight=self.var_weight)
        use_batch = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        run = {"running_mean": self.running_mean, "running_var": self.running_var} if keep else {}
        return normalize(self._key, input, params, extras=extras, training=use_batch, momentum=momentum,
                         eps=self.eps, num_batches_tracked=self.num_batches_tracked, save=self.save, **run,
                         **self.sizes)

    def extra_repr(self) -> str:
        s = self.spec
        parts = [s.name]
        parts += [f"{k}={v}" for k, v in self.sizes.items()]
        parts += [f"eps={self.eps if self.eps is not None else s.eps}", f"affine={self.affine}"]
        if s.running is not None:
            parts += [f"momentum={self.momentum}", f"track_running_stats={self.track_running_stats}"]
        return ", ".join(parts)


class LazySpecNorm(LazyModuleMixin, SpecNorm):
    """A SpecNorm whose parameter and running-statistic shapes come from its first input.

    It becomes a SpecNorm after that call (as torch.nn's LazyBatchNorm2d becomes a
    BatchNorm2d); create optimizers afterwards, or load a state_dict first.

    >>> m = LazySpecNorm("pos_norm.toml"); m(torch.randn(8, 16, 5, 5)); m.weight.shape
    torch.Size([16])
    """

    cls_to_become = SpecNorm

    def initialize_parameters(self, input: Tensor, **extras: Tensor) -> None:
        if not self.has_uninitialized:
            return
        binding = self.op.binding(tuple(input.shape), **self.sizes)
        with torch.no_grad():
            for t in [*self._parameters.values(), *self._buffers.values()]:
                if isinstance(t, (UninitializedParameter, UninitializedBuffer)):
                    is_param = isinstance(t, UninitializedParameter)
                    t.materialize(binding.param_shape if is_param else binding.running_shape)
            self.reset_parameters()


def _parameter(shape: tuple[int, ...] | None, factory: dict[str, Any]) -> nn.Parameter:
    if shape is None:
        return UninitializedParameter(**factory)
    return nn.Parameter(torch.empty(shape, **factory))


def _buffer(shape: tuple[int, ...] | None, factory: dict[str, Any]) -> Tensor:
    if shape is None:
        return UninitializedBuffer(**factory)
    return torch.empty(shape, **factory)



def from_spec(spec: str | Spec | Op, num_features: int | None = None, *, num_channels: int | None = None,
              param_shape: tuple[int, ...] | None = None, running_shape: tuple[int, ...] | None = None,
              sizes: Mapping[str, Any] | None = None, eps: float | None = None,
              momentum: float | None = _SPEC_MOMENTUM, affine: bool = True, track_running_stats: bool = True,
              device: Any = None, dtype: torch.dtype | None = None, save: str = "x", **size_args: Any) -> SpecNorm:
    """A module for any spec: a bundled name, a path to a .toml file, or a Spec.

    Call-time sizes are keyword arguments (`num_groups=4`, `normalized_shape=(3, 5)`) or
    `sizes={...}`. The parameters' shape is `param_shape`, or `(num_features,)` (alias
    `num_channels`, GroupNorm's name) when they span one input dimension, or follows from the
    sizes (`*normalized` = normalized_shape); the running statistics' shape is
    `running_shape`, or follows from the sizes or the parameters when both span the same
    axes. Whatever is still unknown is taken from the first input: you get a LazySpecNorm.
    A fused spec's module takes its extra inputs as keywords and returns (y, h) when it keeps
    its prologue: `from_spec("gated_rms_norm", normalized_shape=(64,))(x, z=z)`. `save="y"`:
    the backward rebuilds x_hat from y, so x is not kept (a plain spec with a weight).

    >>> gn = from_spec("group_norm", num_groups=4, num_channels=16)
    >>> ln = from_spec("layer_norm", normalized_shape=(64,))
    >>> pos = from_spec("examples/pos_norm.toml")          # lazy: shapes from the first call
    """
    op = load(spec)
    s = op.spec
    if num_features is not None and num_channels is not None:
        raise CallError(f"{s.name}: give num_features or num_channels (the same thing), not both")
    count = num_features if num_features is not None else num_channels
    if count is not None:
        if param_shape is not None:
            raise CallError(f"{s.name}: give num_features/num_channels or param_shape, not both")
        param_shape = (int(count),)
    sizes = {**(sizes or {}), **size_args}
    if s.affine is not None and param_shape is None:
        param_shape = _static_shape(s, [it.names for it in s.affine.axes.items], sizes)
    if s.running is not None and running_shape is None:
        running_shape = _static_shape(s, [(a,) for a in s.running.axes], sizes)
        if running_shape is None and s.affine is not None and s.running.axes == s.affine.axis_names:
            running_shape = param_shape
    need_params = affine and s.affine is not None and param_shape is None
    need_running = track_running_stats and s.running is not None and running_shape is None
    cls = LazySpecNorm if (need_params or need_running) else SpecNorm
    return cls(op, param_shape, running_shape=running_shape, sizes=sizes, eps=eps, momentum=momentum,
               affine=affine, track_running_stats=track_running_stats, device=device, dtype=dtype, save=save)


def _static_shape(spec: Spec, items: list[tuple[str, ...]], sizes: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The shape of an array with one dimension per item (a split item is one dimension of the
    product of its parts), when the spec and the call-time sizes fix it without an input."""
    given = dict(spec.sizes)
    variadic = set(spec.variadic_names)
    shape: list[int] = []
    for names in items:
        if len(names) == 1 and names[0] in variadic:
            arg = given.get(names[0])
            if not isinstance(arg, str) or sizes.get(arg) is None:
                return None
            shape += _shape(sizes[arg])
            continue
        parts = [given.get(n) for n in names]
        values = [p if isinstance(p, int) else sizes.get(p) if isinstance(p, str) else None for p in parts]
        if any(v is None for v in values):
            return None  # a size that only the input's shape gives
        shape.append(int(np.prod([int(v) for v in values])))
    return tuple(shape)


class _SwitchableNorm(SpecNorm):
    """Switchable Normalization (Luo et al., 2018) on normgen's switchable_norm spec.

    Parameters: `weight`, `bias` (per channel), and `mean_weight`, `var_weight`: the mixing
    logits of the instance, layer and batch statistics, in that order, initialised to ones
    (equal mixing) as in the authors' code. Buffers: `running_mean`, `running_var` (the batch
    statistics, used in eval mode) and `num_batches_tracked` (for momentum=None).
    """

    _dims = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__("switchable_norm", (num_features,), running_shape=(num_features,), eps=eps,
                         momentum=momentum, affine=affine, track_running_stats=track_running_stats, device=device,
                         dtype=dtype)
        self.num_features = num_features

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != self._dims:
            raise CallError(f"{type(self).__name__}: expected {self._dims}D input (got {input.dim()}D input)")
        return super().forward(input)


class SwitchableNorm1d(_SwitchableNorm):
    """Switchable Norm over (N, C, L). >>> SwitchableNorm1d(16)(torch.randn(8, 16, 50))"""

    _dims = 3


class SwitchableNorm2d(_SwitchableNorm):
    """Switchable Norm over (N, C, H, W). >>> SwitchableNorm2d(16)(torch.randn(8, 16, 7, 7))"""

    _dims = 4


class SwitchableNorm3d(_SwitchableNorm):
    """Switchable Norm over (N, C, D, H, W). >>> SwitchableNorm3d(8)(torch.randn(2, 8, 4, 4, 4))"""

    _dims = 5
