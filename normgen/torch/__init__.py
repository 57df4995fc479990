"""PyTorch layers whose forward and backward run normgen's generated kernels.

    >>> import torch, normgen.torch as nt
    >>> bn = nt.BatchNorm2d(16)                          # torch.nn.BatchNorm2d's arguments and state_dict
    >>> y = bn(torch.randn(8, 16, 32, 32))               # autograd through the generated backward
    >>> model = nt.convert(model)                        # torch.nn norm layers -> normgen's
    >>> gn = nt.from_spec("group_norm", num_groups=4, num_channels=16)
    >>> pos = nt.from_spec("pos_norm.toml")              # any spec; parameters shaped on the first call

    bridge.py            tensors as zero-copy NumPy/CuPy views for the kernels, and back
    library.py           the custom ops normgen::forward, ::backward, ::update_running (torch.library)
    registry.py          what their string arguments name: spec ids, sizes, process groups
    kernels.py           their real implementations (the Op on views of the tensors)
    fake.py              their fake implementations (shapes from symbolic sizes) and the fusion hooks
    autograd.py          normgen::forward's autograd formula, and its eager wrapper
    running.py           running statistics updated with torch operations, on the tensors' device
    function.py          `normalize(op, x, params, ...)`: any Op as a differentiable torch function
    functional.py        batch_norm, layer_norm, ... with torch.nn.functional's signatures
    modules.py           drop-in torch.nn modules (BatchNorm*, SyncBatchNorm, InstanceNorm*, LayerNorm,
                         GroupNorm, RMSNorm) that subclass their twins
    spec_modules.py      SpecNorm / LazySpecNorm / from_spec for any spec; SwitchableNorm*
    fused_modules.py     AddRMSNorm, AddLayerNorm, GroupNormSiLU (specs that fuse their neighbours)
    parametrizations.py  weight_norm, weight_standardization
    convert.py           convert(model), convert_sync(model); what it checks and reports: convert_check.py
    model_norms.py       the norm classes of model code (LlamaRMSNorm, GemmaRMSNorm, ...): registry, ModelNorm
    residual.py          fuse_residual_norms(model): decoder layers' residual add fused into their RMSNorm

Only this package imports torch (`import normgen` never does). Every layer runs through the
custom ops, so torch.compile(fullgraph=True, dynamic=True) traces them without graph breaks
and meta tensors get shapes. CPU tensors reach the kernels as zero-copy NumPy views, so
channels_last, sliced and transposed inputs are not copied and outputs keep the input's
memory order; running statistics are updated in place in the modules' buffers.
"""

from .convert import convert, convert_sync
from .decompose import decompositions, onnx_export
from .residual import fuse_residual_norms
from .function import normalize
from .functional import batch_norm, group_norm, instance_norm, layer_norm, rms_norm, switchable_norm
from .fused_modules import AddLayerNorm, AddRMSNorm, GroupNormSiLU
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
                      InstanceNorm3d, LayerNorm, RMSNorm, SyncBatchNorm)
from .model_norms import ModelNorm
from .parametrizations import weight_norm, weight_standardization
from .spec_modules import LazySpecNorm, SpecNorm, SwitchableNorm1d, SwitchableNorm2d, SwitchableNorm3d, from_spec

__all__ = [
    "AddLayerNorm", "AddRMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "GroupNormSiLU",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "LayerNorm", "LazySpecNorm", "RMSNorm", "SpecNorm", "SwitchableNorm1d", "SwitchableNorm2d", "SwitchableNorm3d",
    "SyncBatchNorm", "batch_norm", "convert", "convert_sync", "from_spec", "group_norm", "instance_norm",
    "layer_norm", "normalize", "rms_norm", "switchable_norm", "weight_norm", "weight_standardization",
    "decompositions", "onnx_export", "ModelNorm", "fuse_residual_norms",
]
