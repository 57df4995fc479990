"""normgen's forward op written in standard PyTorch operations: for graphs that must run without
normgen (ONNX, an ExportedProgram shipped elsewhere).

`decompositions()` is a table for `ExportedProgram.run_decompositions`: it replaces every
`normgen::forward` node with the ATen operations that compute the same thing from the spec
(mean and variance over the reduced axes, normalize, affine), for the shapes the graph was
exported with. `onnx_export(model, args, path)` does the whole trip: torch.export, these
decompositions, torch.onnx.export. The kernels' numerics (float64 accumulation, the mean
carried as hi + lo) are not reproduced: this is PyTorch's float32 arithmetic, as a graph
without normgen would compute it.

    >>> ep = torch.export.export(model.eval(), (x,)).run_decompositions(nt.decompositions())
    >>> nt.onnx_export(model.eval(), (x,), "model.onnx")       # runs in onnxruntime without normgen
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CallError
from ..plan.bind import bind
from ..spec import Center, Scale
from .registry import op_of, sizes_of


def decompositions() -> dict:
    """{op overload: decomposition} for ExportedProgram.run_decompositions."""
    return {torch.ops.normgen.forward.default: forward}


def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, extras: list[Tensor],
            running_mean: Tensor | None, running_var: Tensor | None, mean_weight: Tensor | None,
            var_weight: Tensor | None, spec: str, sizes: str, eps: float | None, training: bool,
            group: str) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """`normgen::forward` in ATen operations (the op's schema, its outputs: y, stats, moments)."""
    s = op_of(spec).spec
    if s.is_mixture or extras or group:
        what = "a mixture" if s.is_mixture else "extra inputs (fusion)" if extras else "a process group"
        raise CallError(f"{s.name}: a graph with {what} cannot be written in standard operations yet: keep "
                        "normgen's op in it (torch.export works), or export without it")
    if any(not isinstance(n, int) for n in x.shape):
        raise CallError(f"{s.name}: decompositions need the shapes the graph was exported with (static shapes)")
    b = bind(s, tuple(x.shape), sizes_of(sizes))
    dims = [d.size for d in b.dims]
    reduced = [i for i, d in enumerate(b.dims) if not d.kept]
    kept = [i for i, d in enumerate(b.dims) if d.kept]
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xl = x.reshape(dims).to(compute)
    if running_mean is not None and not training:  # evaluation: the running statistics, broadcast
        mu = _running(b, running_mean, dims).to(compute)
        var = _running(b, running_var, dims).to(compute)
    else:
        mu = xl.mean(reduced, keepdim=True) if s.center is Center.MEAN else torch.zeros_like(xl.sum(reduced, True))
        sq = (xl - mu).square()
        var = sq.sum(reduced, keepdim=True) if s.scale is Scale.L2 else sq.mean(reduced, keepdim=True)
    e = eps if eps is not None else (torch.finfo(x.dtype).eps if s.eps == "dtype" else s.eps)
    rstd = torch.ones_like(var) if s.scale is Scale.NONE else torch.rsqrt(var + e)
    y = (xl - mu) * rstd
    a = s.affine
    if a is not None and weight is not None:
        y = y * _param(b, a, weight, dims)
    if a is not None and bias is not None:
        y = y + _param(b, a, bias, dims)
    kshape = [1 if i in reduced else n for i, n in enumerate(dims)]  # one value per statistics group
    order = _kept_order(b, kept)

    def per_group(t: Tensor) -> Tensor:  # [groups], in the statistics' kept order
        return t.expand(kshape).reshape([dims[i] for i in kept]).permute(order).reshape(-1)

    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    mean_k, rstd_k, var_k = per_group(mu), per_group(rstd), per_group(var)
    stats = torch.stack([mean_k.to(sdt), torch.zeros_like(mean_k, dtype=sdt), rstd_k.to(sdt)], dim=1)
    count = float(math.prod(dims[i] for i in reduced))
    m2 = var_k.to(torch.float64) * (1.0 if s.scale is Scale.L2 else count)
    moments = torch.stack([torch.full_like(mean_k, count, dtype=torch.float64), mean_k.to(torch.float64), m2], dim=1)
    return y.reshape(x.shape).to(x.dtype), stats, moments, []


def _kept_order(b, kept: list[int]) -> list[int]:
    """The permutation from kept dims in input order to the statistics' kept order."""
    strides = [b.dims[i].stat_stride for i in kept]
    return sorted(range(len(kept)), key=lambda k: -strides[k])


def _param(b, a, p: Tensor, dims: list[int]) -> Tensor:
    """An affine parameter broadcast over the logical dims of x."""
    names = a.axis_names
    pdims = [i for name in names for i, d in enumerate(b.dims) if d.axis == name]
    p = p.reshape([dims[i] for i in pdims])
    order = sorted(range(len(pdims)), key=lambda k: pdims[k])
    shape = [dims[i] if i in pdims else 1 for i in range(len(dims))]
    return p.permute(order).reshape(shape)


def _running(b, r: Tensor, dims: list[int]) -> Tensor:
    """Running statistics (running order) broadcast over the logical dims of x."""
    rdims = [i for name in b.spec.running.axes for i, d in enumerate(b.dims) if d.axis == name]
    r = r.reshape([dims[i] for i in rdims])
    order = sorted(range(len(rdims)), key=lambda k: rdims[k])
    shape = [dims[i] if i in rdims else 1 for i in range(len(dims))]
    return r.permute(order).reshape(shape)


def onnx_export(model: torch.nn.Module, args: tuple, path: str | Path, **kwargs: Any):
    """Export `model` to ONNX with normgen's ops written in standard operations: the file runs
    in onnxruntime (or any ONNX runtime) without normgen. `kwargs` go to torch.onnx.export.

    >>> onnx_export(model.eval(), (x,), "model.onnx")
    """
    ep = torch.export.export(model, tuple(args)).run_decompositions(decompositions())
    program = torch.onnx.export(ep, tuple(args), dynamo=True, **kwargs)
    program.save(str(path))
    return program
