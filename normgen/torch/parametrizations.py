"""Weight parametrizations (torch.nn.utils.parametrize): weight norm and weight standardization."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import library
from .function import normalize
from .modules import Unscriptable


def _weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    """torch._weight_norm(v, g, dim) on normgen's kernels: w = g * v / ||v||, one norm per
    index of `dim` (dim=-1: one norm over all of v)."""
    if dim == -1:
        return normalize("weight_norm", v.reshape(1, -1), {"g": g.reshape(1)}).reshape(v.shape)
    dim %= v.dim()
    # the kernels walk the strided view that movedim returns: no copy
    return normalize("weight_norm", v.movedim(dim, 0), {"g": g.reshape(-1)}).movedim(0, dim)


class _WeightNorm(Unscriptable, nn.Module):
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
        _, stats, _, _ = library.forward(rows, g, None, [], None, None, None, None, "weight_norm", "", None, True, "")
        return 1.0 / stats[:, 2].to(v.dtype)


class _WeightStandardization(Unscriptable, nn.Module):
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
