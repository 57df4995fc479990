"""The fake (meta) implementations of the custom ops: output shapes, dtypes and strides from
the inputs' metadata alone, which may be symbolic (torch.SymInt under
torch.compile(dynamic=True)); no data, no NumPy. And the hooks for a fused spec's extra
inputs and outputs (DESIGN.md, Fusion), which both implementations read.

`plan/bind.py` names every logical dimension of a concrete shape (and reads sizes with
`int()`, which would pin a symbolic size to one value: a recompile per batch size). The
fake implementations only need how many statistics groups a call has: the product of the
kept axes' sizes, computed here with plain arithmetic on the sizes as they come. The real
implementations check it against the binding (`stats_count(...) == binding.n_groups`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..spec import Spec
from .registry import op_of, sizes_of


def stats_count(spec: Spec, shape: tuple[Any, ...], sizes: dict[str, Any]) -> Any:
    """The number of statistics groups (mixtures: of the finest component) for an input of
    `shape`; a SymInt when the shape is symbolic. Shapes that do not fit the spec are left
    to the real implementation's checks, which name the argument."""
    given = dict(spec.sizes)
    items = spec.input.items
    ranks = []
    for item in items:
        if item.variadic:
            arg = given.get(item.names[0])
            if isinstance(arg, str) and arg in sizes:  # a shape given at call time (an int is one dimension)
                ranks.append(len(sizes[arg]) if isinstance(sizes[arg], (tuple, list)) else 1)
            else:
                ranks.append(None)
        else:
            ranks.append(1)
    free = len(shape) - sum(r for r in ranks if r is not None)
    kept = set(spec.kept_axes)
    count, d = 1, 0
    for item, rank in zip(items, ranks):
        rank = max(free, 0) if rank is None else rank
        dims = tuple(shape[d:d + rank])
        if item.is_split and dims:
            count *= math.prod(n for p, n in _split_sizes(item.names, dims[0], given, sizes).items() if p in kept)
        elif item.names[0] in kept:
            count *= math.prod(dims)
        d += rank
    return count


def _split_sizes(parts: tuple[str, ...], total: Any, given: dict[str, Any], sizes: dict[str, Any]) -> dict[str, Any]:
    """The sizes of a split dimension's parts: constants, call arguments, and the one left
    over (total divided by the others)."""
    known = {p: (given[p] if isinstance(given[p], int) else int(sizes.get(given[p], 1))) for p in parts if p in given}
    out = {}
    for p in parts:
        out[p] = known[p] if p in known else total // max(1, math.prod(known.values()))
    return out


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics for an input dtype: float64 for float64, else float32
    (half types accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- fusion hooks ------------------------------------------------------------------------------


def extra_inputs(spec: Spec) -> tuple[str, ...]:
    """The names of a spec's inputs shaped like x besides x (a fused spec's `residual`, `z`),
    in the order of the ops' `extras` list: passed to `Op.forward` by name, their gradients
    read from `Grads` by name."""
    return spec.extras


def extra_outputs(spec: Spec) -> tuple[str, ...]:
    """The names of the Forward attributes a spec returns besides y (a fused spec's kept
    `prologue`, h = x + residual), in the order of the forward op's extra outputs; each is
    shaped and laid out like x."""
    return ("prologue",) if spec.fuse is not None and spec.fuse.keep_prologue else ()


# ---- fake implementations ----------------------------------------------------------------------


def forward_fake(x: Tensor, weight: Tensor | None, bias: Tensor | None, extras: list[Tensor],
                 running_mean: Tensor | None, running_var: Tensor | None, mean_weight: Tensor | None,
                 var_weight: Tensor | None, spec: str, sizes: str, eps: float | None, training: bool,
                 group: str) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    s = op_of(spec).spec
    groups = stats_count(s, tuple(x.shape), sizes_of(sizes))
    evaluating = running_mean is not None and not training
    stats = x.new_empty((groups, 3), dtype=stat_dtype(x.dtype))
    # batch moments, unless normalized with the running statistics (a mixture mixes both)
    moments = x.new_empty((groups if s.is_mixture or not evaluating else 0, 3), dtype=torch.float64)
    return torch.empty_like(x), stats, moments, [torch.empty_like(x) for _ in extra_outputs(s)]


def backward_fake(dy: Tensor, dextra_out: list[Tensor | None], x: Tensor, weight: Tensor | None,
                  bias: Tensor | None, extras: list[Tensor], running_mean: Tensor | None,
                  running_var: Tensor | None, mean_weight: Tensor | None, var_weight: Tensor | None, stats: Tensor,
                  moments: Tensor, spec: str, sizes: str, eps: float | None, training: bool,
                  group: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    params = [p for p in (weight, bias, mean_weight, var_weight) if p is not None]
    return (torch.empty_like(x), [p.new_empty(p.shape) for p in params],
            [torch.empty_like(e) for e in extras])


def update_fake(moments: Tensor, running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor | None,
                shape: list[Any], spec: str, sizes: str, momentum: float | None) -> None:
    return None
