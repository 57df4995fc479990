"""Swapping normalization layers (torch.nn's, and model code's: model_norms.py) for normgen's, sharing
their tensors."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from torch import nn

from .convert_check import CHECK_FAILED, Report, looks_like_norm, mismatch, unknown_reason
from .model_norms import ModelNorm, norm_class_of
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    SyncBatchNorm,
)

#: torch.nn class -> normgen twin (exact types: a user's subclass may have its own forward)
_TWINS: dict[type, type] = {
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d, nn.InstanceNorm3d: InstanceNorm3d,
    nn.LayerNorm: LayerNorm, nn.GroupNorm: GroupNorm, nn.RMSNorm: RMSNorm,
}


def convert(module: nn.Module, *, report: bool = False, check: bool = True) -> nn.Module | tuple[nn.Module, Report]:
    """Replace the normalization layers in `module` with normgen's, like
    nn.SyncBatchNorm.convert_sync_batchnorm: torch.nn's BatchNorm*, InstanceNorm*, LayerNorm,
    GroupNorm and RMSNorm, and the norm classes of model code that model_norms.NORM_CLASSES
    knows (LlamaRMSNorm, GemmaRMSNorm, T5LayerNorm, ConvNextLayerNorm, ...).

    The new layers share the old ones' parameters and buffers (same tensors: device, dtype,
    values and optimizer state carry over) and training mode. Containers are updated in
    place; the (possibly new) root is returned. A model-code class is swapped only after its
    replacement matched it on a small random input of its own shape (float32 and the
    module's dtype: float32 within float32 rounding, half types within one unit in the last
    place); otherwise it stays, with a warning naming the class (`check=False` skips this).
    `report=True` returns `(module, Report)`: what was swapped, and what was left and why.

    >>> model = convert(torchvision.models.resnet18())
    >>> model, rep = convert(llama, report=True); print(rep)
    """
    rep = Report()
    out = _convert(module, "", rep, check)
    for path, cls, why in rep.left:
        if why.startswith(CHECK_FAILED):
            warnings.warn(f"normgen.torch.convert: left {cls} at '{path}' on PyTorch: {why}", stacklevel=2)
    return (out, rep) if report else out


def _convert(module: nn.Module, path: str, rep: Report, check: bool) -> nn.Module:
    cls = type(module)
    name = f"{cls.__module__}.{cls.__qualname__}"
    out = module
    twin = _TWINS.get(cls)
    entry = norm_class_of(module) if twin is None else None
    if twin is not None:
        out = _twin(module, twin)
        rep.swapped.append((path or "(root)", name))
    elif entry is not None:
        why = entry.applies(module)
        new = ModelNorm(module, entry) if why is None else None
        if new is not None and check:
            why = mismatch(module, new, entry)
        if why is None:
            out = new
            rep.swapped.append((path or "(root)", name))
        else:
            rep.left.append((path or "(root)", name, why))
    elif looks_like_norm(module):
        rep.left.append((path or "(root)", name, unknown_reason(module)))
    for child_name, child in module.named_children():
        out.add_module(child_name, _convert(child, f"{path}.{child_name}" if path else child_name, rep, check))
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
