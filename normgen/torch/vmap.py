"""torch.func.vmap over normgen's ops: the op runs once per element of the mapped dimension.

A batching rule that folds the mapped dimension into the spec's axes would need to know,
for every spec, which axis it joins (the batch of BatchNorm is reduced, LayerNorm's is
kept): looping is correct for every spec, and vmap over a normalization is rare outside
per-sample gradients (vmap(grad(...))), where it serves. Running statistics cannot be
updated under vmap (each mapped element would write the same buffers), as in PyTorch:
use functional calls without running statistics, or evaluation mode.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CallError


def _select(arg: Any, dim: Any, i: int) -> Any:
    if dim is None:
        return arg
    if isinstance(arg, (list, tuple)):
        return [a if d is None else a.select(d, i) for a, d in zip(arg, dim)]
    return arg.select(dim, i)


def _stack(outs: list) -> tuple[Any, Any]:
    """Outputs of each mapped element stacked on dimension 0 (lists element by element)."""
    first = outs[0]
    if isinstance(first, (list, tuple)) and not isinstance(first, torch.Tensor):
        parts = [_stack([o[k] for o in outs]) for k in range(len(first))]
        return [p[0] for p in parts], [p[1] for p in parts]
    return torch.stack(outs), 0


def vmap_loop(name: str):
    """The batching rule of `normgen::<name>`: the op once per mapped element."""
    def rule(info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
        op = getattr(torch.ops.normgen, name).default
        outs = [op(*(_select(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
        stacked, dims = zip(*(_stack([o[k] for o in outs]) for k in range(len(outs[0]))))
        return tuple(stacked), tuple(dims)
    return rule


def vmap_refused(info: Any, in_dims: tuple, *args: Any) -> tuple:
    raise CallError("normgen: running statistics cannot be updated under torch.func.vmap (every mapped element "
                    "would write the same buffers); call without running statistics, or in evaluation mode")
