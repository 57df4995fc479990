"""Swapping torch.nn normalization layers for normgen's, sharing their tensors."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
                      InstanceNorm3d, LayerNorm, RMSNorm, SyncBatchNorm)


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
