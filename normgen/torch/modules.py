"""PyTorch layers whose forward and backward run normgen's generated kernels.

    >>> import torch, normgen.torch as nt
    >>> bn = nt.BatchNorm2d(16)                          # torch.nn.BatchNorm2d's arguments and state_dict
    >>> y = bn(torch.randn(8, 16, 32, 32))               # autograd through the generated backward
    >>> model = nt.convert(model)                        # torch.nn norm layers -> normgen's
    >>> gn = nt.from_spec("group_norm", num_groups=4, num_channels=16)
    >>> pos = nt.from_spec("pos_norm.toml")              # any spec; parameters shaped on the first call

What is here, top to bottom:

- `normalize(op, x, params, ...)`: any Op as a differentiable torch function (`_NormFunction`);
  `batch_norm`, `layer_norm`, ... with torch.nn.functional's signatures on top of it.
- Drop-in modules: `BatchNorm1d/2d/3d`, `InstanceNorm1d/2d/3d`, `LayerNorm`, `GroupNorm`,
  `RMSNorm` subclass their torch.nn twins and override only the call into the kernels, so
  constructor arguments, defaults, parameters, buffers, `state_dict` keys, `reset_parameters`,
  `repr` and `isinstance` checks are torch's own.
- `SpecNorm` / `from_spec`: a module for any spec; `SwitchableNorm1d/2d/3d` are SpecNorms.
- `weight_norm`, `weight_standardization`: `torch.nn.utils.parametrize` parametrizations.
- `convert(model)`: swap torch.nn normalization layers for these, sharing their tensors.

Only this module imports torch (`import normgen` never does). CPU tensors reach the kernels
as zero-copy NumPy views, so channels_last, sliced and transposed inputs are not copied and
outputs keep the input's memory order; running statistics are updated in place in the
modules' buffers.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from ..errors import CallError
from ..op import Op, load
from ..op.distributed import TorchGroup
from ..runtime.arrays import BF16
from ..spec import Spec

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LazySpecNorm",
    "RMSNorm",
    "SpecNorm",
    "SwitchableNorm1d",
    "SwitchableNorm2d",
    "SwitchableNorm3d",
    "SyncBatchNorm",
    "batch_norm",
    "convert",
    "convert_sync",
    "from_spec",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "normalize",
    "rms_norm",
    "switchable_norm",
    "weight_norm",
    "weight_standardization",
]

_FLOATS = (torch.float32, torch.float64)
_CUDA_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: "use the spec's default momentum" (None already means a cumulative average)
_SPEC_MOMENTUM: Any = object()


# ---- tensors <-> arrays -----------------------------------------------------------------------


def _array(t: Tensor, what: str) -> Any:
    """A zero-copy view of a tensor for the kernels: NumPy for CPU tensors, CuPy for CUDA ones
    (through DLPack; bfloat16 as a BF16 view of its bits). Strides and offset are kept."""
    t = t.detach()
    if t.device.type == "cpu":
        if t.dtype not in _FLOATS:
            raise CallError(f"normgen.torch: {what} has dtype {t.dtype}; the cpu backend takes torch.float32 or "
                            "torch.float64 (float16 and bfloat16 run on CUDA tensors)")
        return t.numpy()
    if t.device.type != "cuda":
        raise CallError(f"normgen.torch: {what} is on device '{t.device}'; normgen runs CPU and CUDA tensors")
    if t.dtype not in _CUDA_FLOATS:
        raise CallError(f"normgen.torch: {what} has dtype {t.dtype}; the cuda backend takes float16, bfloat16, "
                        "float32 or float64")
    import cupy

    if t.dtype == torch.bfloat16:  # CuPy has no bfloat16: pass the bits
        return BF16(cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16))
    return cupy.from_dlpack(t)


def _tensor(a: Any) -> Tensor:
    """The kernels' result as a tensor, without a copy (the inverse of `_array`)."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    bits = getattr(a, "bits", None)
    if bits is not None:  # BF16 on the GPU
        return torch.from_dlpack(bits.view("int16")).view(torch.bfloat16)
    return torch.from_dlpack(a)


def _on_stream(t: Tensor):
    """CuPy launches on the current PyTorch stream for CUDA tensors (nothing to do on CPU)."""
    if t.device.type != "cuda":
        return contextlib.nullcontext()
    import cupy

    return cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream)


class _Call:
    """One forward call's non-tensor arguments: the Op, the parameter names, the keywords."""

    def __init__(self, op: Op, names: tuple[str, ...], kwargs: dict[str, Any]):
        self.op, self.names, self.kwargs = op, names, kwargs


class _NormFunction(torch.autograd.Function):
    """y = op(x, **params); the backward is `op.backward` (the generated backward kernels)."""

    @staticmethod
    def forward(ctx, call: _Call, x: Tensor, *params: Tensor) -> Tensor:
        arrays = {name: _array(p, name) for name, p in zip(call.names, params)}
        with _on_stream(x):
            fwd = call.op.forward(_array(x, "input"), **arrays, **call.kwargs)
        ctx.call, ctx.fwd = call, fwd
        # Saved so that autograd notices an in-place change of x or a parameter before backward:
        # fwd holds NumPy views of the same memory, which autograd cannot watch.
        ctx.save_for_backward(x, *params)
        return _tensor(fwd.y)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        _ = ctx.saved_tensors  # raises if a saved input was modified in place since forward
        with _on_stream(dy):
            grads = ctx.call.op.backward(_array(dy, "grad_output"), ctx.fwd)
        need = ctx.needs_input_grad
        dx = _tensor(grads.dx) if need[1] else None
        dparams = [_tensor(grads.params[n]) if need[2 + i] else None for i, n in enumerate(ctx.call.names)]
        return (None, dx, *dparams)


def normalize(op: Op | str, input: Tensor, params: Mapping[str, Tensor | None] | None = None, *,
              running_mean: Tensor | None = None, running_var: Tensor | None = None, training: bool = True,
              momentum: float | None = _SPEC_MOMENTUM, eps: float | None = None, process_group: Any = None,
              comm: Any = None, **sizes: Any) -> Tensor:
    """Apply any normgen Op to a tensor, differentiably (the torch face of `Op.forward`).

    `params` maps the spec's parameter names (and `mean_weight`/`var_weight` for a mixture)
    to tensors; None entries are left out. Running statistics are updated in place when
    `training`; `training=False` with running statistics normalizes with them.
    `process_group` (torch.distributed) or `comm` (mpi4py): `input` is this rank's shard of
    the reduced axes, and the statistics (forward and backward) cover every rank's shard.

    >>> y = normalize("group_norm", x, {"weight": w, "bias": b}, num_groups=4)
    """
    op = load(op)
    params = {n: p for n, p in (params or {}).items() if p is not None}
    kwargs: dict[str, Any] = dict(sizes, training=training, eps=eps)
    if running_mean is not None or running_var is not None:
        kwargs["running_mean"] = None if running_mean is None else _array(running_mean, "running_mean")
        kwargs["running_var"] = None if running_var is None else _array(running_var, "running_var")
    if momentum is not _SPEC_MOMENTUM:
        kwargs["momentum"] = momentum
    if process_group is not None or comm is not None:
        kwargs.update(process_group=process_group, comm=comm)
    return _NormFunction.apply(_Call(op, tuple(params), kwargs), input, *params.values())


# ---- torch.nn.functional's signatures ---------------------------------------------------------


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5, *, process_group: Any = None) -> Tensor:
    """F.batch_norm on normgen's kernels: statistics per channel over (N, *spatial).

    With `process_group` (a torch.distributed group, or a normgen.op.distributed.Group), the
    batch is split across its ranks and training statistics cover all of it.

    >>> y = batch_norm(x, rm, rv, w, b, training=True)   # updates rm and rv in place
    """
    if training and process_group is None:  # across ranks, the op checks the global count
        size = input.shape[0] * int(np.prod(input.shape[2:]))
        if size == 1:
            raise CallError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    return normalize("batch_norm", input, {"weight": weight, "bias": bias}, running_mean=running_mean,
                     running_var=running_var, training=training, momentum=momentum, eps=eps,
                     process_group=process_group)


def instance_norm(input: Tensor, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                  weight: Tensor | None = None, bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """F.instance_norm on normgen's kernels: statistics per (N, C) over the spatial axes.

    >>> y = instance_norm(x, weight=w, bias=b)
    """
    if use_input_stats and int(np.prod(input.shape[2:])) == 1:
        raise CallError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    return normalize("instance_norm", input, {"weight": weight, "bias": bias}, running_mean=running_mean,
                     running_var=running_var, training=use_input_stats, momentum=momentum, eps=eps)


def layer_norm(input: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """F.layer_norm on normgen's kernels: statistics over the trailing `normalized_shape` dims.

    >>> y = layer_norm(x, (64,), w, b)
    """
    return normalize("layer_norm", input, {"weight": weight, "bias": bias}, eps=eps,
                     normalized_shape=_shape(normalized_shape))


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """F.group_norm on normgen's kernels: statistics per (N, group of channels).

    >>> y = group_norm(x, 4, w, b)
    """
    return normalize("group_norm", input, {"weight": weight, "bias": bias}, eps=eps, num_groups=num_groups)


def rms_norm(input: Tensor, normalized_shape: int | tuple[int, ...], weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """F.rms_norm on normgen's kernels; eps=None is the dtype's machine epsilon.

    >>> y = rms_norm(x, (64,), w)
    """
    return normalize("rms_norm", input, {"weight": weight}, eps=eps, normalized_shape=_shape(normalized_shape))


def switchable_norm(input: Tensor, mean_weight: Tensor, var_weight: Tensor, running_mean: Tensor | None = None,
                    running_var: Tensor | None = None, weight: Tensor | None = None, bias: Tensor | None = None,
                    training: bool = False, momentum: float | None = 0.1, eps: float = 1e-5) -> Tensor:
    """Switchable Norm: softmax(mean_weight)/softmax(var_weight) mix instance, layer and batch
    statistics (in that order); the batch part uses the running statistics when not training.

    >>> y = switchable_norm(x, torch.ones(3), torch.ones(3), rm, rv, w, b, training=True)
    """
    return normalize("switchable_norm", input, {"weight": weight, "bias": bias, "mean_weight": mean_weight,
                                                "var_weight": var_weight},
                     running_mean=running_mean, running_var=running_var, training=training, momentum=momentum, eps=eps)


def _shape(normalized_shape: int | tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    return (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(int(n) for n in normalized_shape)


def _momentum_step(m: nn.Module) -> float:
    """torch.nn's exponential_average_factor for this call; counts the batch like torch.nn does."""
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        if m.momentum is None:  # a cumulative average
            factor = 1.0 / float(m.num_batches_tracked)
    return factor


# ---- drop-in torch.nn modules -----------------------------------------------------------------


class _BatchNorm:
    """torch.nn's _BatchNorm.forward, calling normgen's kernels instead of F.batch_norm."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = _momentum_step(self)
        # batch statistics in training, and in evaluation when there are no running statistics
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        # running statistics are passed to be updated only when tracked
        keep = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                          self.weight, self.bias, use_batch, factor, self.eps)


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on normgen's kernels. >>> BatchNorm1d(64)(torch.randn(8, 64, 100))"""


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on normgen's kernels. >>> BatchNorm2d(64)(torch.randn(8, 64, 7, 7))"""


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """torch.nn.BatchNorm3d on normgen's kernels. >>> BatchNorm3d(8)(torch.randn(2, 8, 4, 4, 4))"""


class SyncBatchNorm(_BatchNorm, nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on normgen's kernels, on CPU (gloo) as well as GPU (NCCL).

    In training, with more than one rank in `process_group` (None: the default group), each
    rank normalizes its share of the batch with statistics over the whole batch: only
    per-channel moments (count, mean, M2) and the backward's two per-channel sums travel,
    merged in rank order, so every rank computes the same running statistics even with
    unequal or empty batches. Otherwise it is a BatchNorm. Same arguments and state_dict
    as torch.nn.SyncBatchNorm.

    >>> bn = SyncBatchNorm(64)            # inside an initialized torch.distributed job
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        group = self._group() if self.training else None
        if group is None:
            return super().forward(input)
        factor = _momentum_step(self)
        keep = self.track_running_stats
        return batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                          self.weight, self.bias, True, factor, self.eps, process_group=group)

    def _group(self):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        pg = self.process_group if self.process_group is not None else dist.group.WORLD
        return TorchGroup(pg) if dist.get_world_size(pg) > 1 else None


def convert_sync(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every BatchNorm*d (torch.nn's or normgen's) in `module` with normgen's
    SyncBatchNorm over `process_group`, sharing parameters and buffers, keeping the mode
    (as torch.nn.SyncBatchNorm.convert_sync_batchnorm does).

    >>> model = convert_sync(model)       # then wrap in DistributedDataParallel
    """
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        out = _twin(module, SyncBatchNorm)
        out.process_group = process_group
    for name, child in module.named_children():
        out.add_module(name, convert_sync(child, process_group))
    return out


class _InstanceNorm:
    """torch.nn's _InstanceNorm keeps its forward (input checks, unbatched inputs); only the
    call into F.instance_norm, `_apply_instance_norm`, runs normgen's kernels instead."""

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training or not self.track_running_stats,
                             self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d on normgen's kernels. >>> InstanceNorm1d(8)(torch.randn(4, 8, 50))"""


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d on normgen's kernels. >>> InstanceNorm2d(8, affine=True)(torch.randn(4, 8, 7, 7))"""


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    """torch.nn.InstanceNorm3d on normgen's kernels. >>> InstanceNorm3d(8)(torch.randn(2, 8, 4, 4, 4))"""


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm on normgen's kernels. >>> LayerNorm(64, bias=False)(torch.randn(8, 10, 64))"""

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm on normgen's kernels. >>> GroupNorm(4, 16)(torch.randn(8, 16, 7, 7))"""

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm on normgen's kernels. >>> RMSNorm(64)(torch.randn(8, 10, 64))"""

    def forward(self, input: Tensor) -> Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)


# ---- any spec as a module ---------------------------------------------------------------------


class SpecNorm(nn.Module):
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
                 track_running_stats: bool = True, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.op = load(spec)
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
            for name in s.param_names if self.affine else ():
                getattr(self, name).fill_(1.0 if name == s.affine.weight else 0.0)
            if s.is_mixture:
                self.mean_weight.fill_(1.0)
                self.var_weight.fill_(1.0)

    def forward(self, input: Tensor) -> Tensor:
        factor = _momentum_step(self) if self.track_running_stats else None
        s = self.spec
        params = {n: getattr(self, n) for n in s.param_names} if self.affine else {}
        if s.is_mixture:
            params.update(mean_weight=self.mean_weight, var_weight=self.var_weight)
        use_batch = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        run = {"running_mean": self.running_mean, "running_var": self.running_var} if keep else {}
        momentum = _SPEC_MOMENTUM if factor is None else factor
        return normalize(self.op, input, params, training=use_batch, momentum=momentum, eps=self.eps,
                         **run, **self.sizes)

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

    def initialize_parameters(self, input: Tensor) -> None:
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
              device: Any = None, dtype: torch.dtype | None = None, **size_args: Any) -> SpecNorm:
    """A module for any spec: a bundled name, a path to a .toml file, or a Spec.

    Call-time sizes are keyword arguments (`num_groups=4`, `normalized_shape=(3, 5)`) or
    `sizes={...}`. The parameters' shape is `param_shape`, or `(num_features,)` (alias
    `num_channels`, GroupNorm's name) when they span one input dimension, or follows from the
    sizes (`*normalized` = normalized_shape); the running statistics' shape is
    `running_shape`, or follows from the sizes or the parameters when both span the same
    axes. Whatever is still unknown is taken from the first input: you get a LazySpecNorm.

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
               affine=affine, track_running_stats=track_running_stats, device=device, dtype=dtype)


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


# ---- weight parametrizations ------------------------------------------------------------------


def _weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    """torch._weight_norm(v, g, dim) on normgen's kernels: w = g * v / ||v||, one norm per
    index of `dim` (dim=-1: one norm over all of v)."""
    if dim == -1:
        return normalize("weight_norm", v.reshape(1, -1), {"g": g.reshape(1)}).reshape(v.shape)
    dim %= v.dim()
    # the kernels walk the strided view that movedim returns: no copy
    return normalize("weight_norm", v.movedim(dim, 0), {"g": g.reshape(-1)}).movedim(0, dim)


class _WeightNorm(nn.Module):
    """torch.nn.utils.parametrizations' _WeightNorm, on normgen's weight_norm spec."""

    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return _weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        # g = ||weight|| shaped like torch.norm_except_dim's result, so state_dicts match torch's
        if self.dim == -1:  # one norm: a 0-d g
            return _norms(weight, -1).reshape(()), weight
        shape = [1] * weight.dim()
        shape[self.dim] = weight.shape[self.dim]
        return _norms(weight, self.dim).reshape(shape), weight


def _norms(v: Tensor, dim: int) -> Tensor:
    """||v|| per index of `dim` (dim=-1: one norm), from the kernels' rstd = 1 / ||v||."""
    with torch.no_grad():
        rows = v.reshape(1, -1) if dim == -1 else v.movedim(dim % v.dim(), 0)
        # with g = 1 the call uses the same kernel as the forward with g (no extra compile)
        g = torch.ones(rows.shape[0], dtype=v.dtype, device=v.device)
        with _on_stream(v):
            fwd = load("weight_norm").forward(_array(rows, "weight"), _array(g, "g"))
        return 1.0 / _tensor(fwd.rstd).to(v.dtype)


class _WeightStandardization(nn.Module):
    """Standardize each output unit (dim 0) of a weight: zero mean, unit variance."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: Tensor) -> Tensor:
        return normalize("weight_standardization", weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0) -> nn.Module:
    """torch.nn.utils.parametrizations.weight_norm on normgen's kernels: `name` becomes
    g * v / ||v||, with g in `parametrizations.<name>.original0` and v in `original1` (the
    same state_dict as torch's, so checkpoints load both ways).

    >>> conv = weight_norm(nn.Conv2d(3, 16, 3))
    """
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(module, name, _WeightNorm(dim), unsafe=True)
    return module


def weight_standardization(module: nn.Module, name: str = "weight", eps: float = 1e-5) -> nn.Module:
    """Weight Standardization (Qiao et al., 2019) as a parametrization: `name` is standardized
    per output unit on every access; the raw weight is `parametrizations.<name>.original`.
    Uses sqrt(biased var + eps), where the paper's code divides by (unbiased std + eps).

    >>> conv = weight_standardization(nn.Conv2d(3, 16, 3))
    """
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(module, name, _WeightStandardization(eps))
    return module


# ---- convert ----------------------------------------------------------------------------------

#: torch.nn class -> normgen twin (exact types: a user's subclass may have its own forward)
_TWINS: dict[type, type] = {
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d, nn.InstanceNorm3d: InstanceNorm3d,
    nn.LayerNorm: LayerNorm, nn.GroupNorm: GroupNorm, nn.RMSNorm: RMSNorm,
}


def convert(module: nn.Module) -> nn.Module:
    """Replace torch.nn normalization layers (BatchNorm*, InstanceNorm*, LayerNorm, GroupNorm,
    RMSNorm) in `module` with normgen's, like nn.SyncBatchNorm.convert_sync_batchnorm.

    The new layers share the old ones' parameters and buffers (same tensors: device, dtype,
    values and optimizer state carry over) and training mode. Containers are updated in
    place; the (possibly new) root is returned.

    >>> model = convert(torchvision.models.resnet18())
    """
    twin = _TWINS.get(type(module))
    out = _twin(module, twin) if twin is not None else module
    for name, child in module.named_children():
        out.add_module(name, convert(child))
    return out


def _twin(module: nn.Module, cls: type) -> nn.Module:
    args = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name == "bias":  # a constructor flag, but an attribute holding the Parameter
            args[name] = module.bias is not None
        elif name not in ("self", "device", "dtype") and hasattr(module, name):
            args[name] = getattr(module, name)
    new = cls(**args, device="meta")  # allocates nothing: the module's own tensors are attached below
    for name, p in module._parameters.items():
        new.register_parameter(name, p)
    for name, b in module._buffers.items():
        new.register_buffer(name, b, persistent=name not in module._non_persistent_buffers_set)
    new.train(module.training)
    return new
