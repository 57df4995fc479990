"""Drop-in torch.nn modules: BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d, LayerNorm,
GroupNorm and RMSNorm subclass their torch.nn twins and override only the call into the
kernels, so constructor arguments, defaults, parameters, buffers, `state_dict` keys,
`reset_parameters`, `repr` and `isinstance` checks are torch's own."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

from ..errors import NormgenError
from .functional import batch_norm, group_norm, instance_norm, layer_norm, rms_norm


class Unscriptable:
    """normgen's modules cannot be TorchScript (their forward calls normgen in Python): say so
    in one sentence when torch.jit.script reaches one, instead of TorchScript's parse errors."""

    def __prepare_scriptable__(self):  # torch.jit.script calls it on every module first
        raise NormgenError(f"{type(self).__name__} (normgen) cannot be compiled by torch.jit.script: use "
                           "torch.compile, or torch.export (normgen.torch.onnx_export for ONNX)")


def _momentum_step(m: nn.Module) -> float | None:
    """Counts the batch like torch.nn does, and returns the momentum of this call: None means
    torch.nn's cumulative average, 1 / num_batches_tracked, which the update computes on the
    buffers' device (reading the count here would wait for the GPU, and break a compiled graph)."""
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        return m.momentum
    return 0.0 if m.momentum is None else m.momentum


# ---- drop-in torch.nn modules -----------------------------------------------------------------


class _BatchNorm(Unscriptable):
    """torch.nn's _BatchNorm.forward, calling normgen's kernels instead of F.batch_norm."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        momentum = _momentum_step(self)
        # batch statistics in training, and in evaluation when there are no running statistics
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        # running statistics are passed to be updated only when tracked
        keep = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                          self.weight, self.bias, use_batch, momentum, self.eps,
                          num_batches_tracked=self.num_batches_tracked)


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
        momentum = _momentum_step(self)
        keep = self.track_running_stats
        return batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                          self.weight, self.bias, True, momentum, self.eps, process_group=group,
                          num_batches_tracked=self.num_batches_tracked)

    def _group(self):
        """The process group to share statistics with, when it has more than one rank."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        pg = self.process_group if self.process_group is not None else dist.group.WORLD
        return pg if dist.get_world_size(pg) > 1 else None


class _InstanceNorm(Unscriptable):
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


class LayerNorm(Unscriptable, nn.LayerNorm):
    """torch.nn.LayerNorm on normgen's kernels. >>> LayerNorm(64, bias=False)(torch.randn(8, 10, 64))"""

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(Unscriptable, nn.GroupNorm):
    """torch.nn.GroupNorm on normgen's kernels. >>> GroupNorm(4, 16)(torch.randn(8, 16, 7, 7))"""

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class RMSNorm(Unscriptable, nn.RMSNorm):
    """torch.nn.RMSNorm on normgen's kernels. >>> RMSNorm(64)(torch.randn(8, 10, 64))"""

    def forward(self, input: Tensor) -> Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)
