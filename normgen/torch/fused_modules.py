"""Layers that fuse their neighbours (the bundled fused specs): AddRMSNorm, AddLayerNorm and
GroupNormSiLU subclass torch.nn.RMSNorm, LayerNorm and GroupNorm, so their constructor
arguments, parameters and `state_dict` keys are torch's own; only the call differs.

    >>> norm = AddRMSNorm(4096)
    >>> y, h = norm(x, residual)          # h = x + residual (the next residual stream), y = rms_norm(h)
    >>> act = GroupNormSiLU(32, 256)(x)   # silu(group_norm(x)), one pass over x
"""

from __future__ import annotations

from torch import Tensor, nn

from .function import normalize
from .functional import _shape


class AddRMSNorm(nn.RMSNorm):
    """h = input + residual; y = rms_norm(h) (weight, eps: torch.nn.RMSNorm's). Returns (y, h);
    the backward reads h, and gives the residual the same gradient as the input.

    >>> y, h = AddRMSNorm(64)(torch.randn(8, 10, 64), torch.randn(8, 10, 64))
    """

    def forward(self, input: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        return normalize("add_rms_norm", input, {"weight": self.weight}, extras={"residual": residual}, eps=self.eps,
                         normalized_shape=_shape(self.normalized_shape))


class AddLayerNorm(nn.LayerNorm):
    """h = input + residual; y = layer_norm(h) (torch.nn.LayerNorm's arguments). Returns (y, h).

    >>> y, h = AddLayerNorm(64)(torch.randn(8, 10, 64), torch.randn(8, 10, 64))
    """

    def forward(self, input: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        return normalize("add_layer_norm", input, {"weight": self.weight, "bias": self.bias},
                         extras={"residual": residual}, eps=self.eps, normalized_shape=_shape(self.normalized_shape))


class GroupNormSiLU(nn.GroupNorm):
    """silu(group_norm(input)) (torch.nn.GroupNorm's arguments): the activation of diffusion
    UNets' residual blocks, applied before the single write of the output.

    >>> y = GroupNormSiLU(4, 16)(torch.randn(8, 16, 32, 32))
    """

    def forward(self, input: Tensor) -> Tensor:
        return normalize("group_norm_silu", input, {"weight": self.weight, "bias": self.bias}, eps=self.eps,
                         num_groups=self.num_groups)
