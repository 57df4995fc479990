"""The real implementations of the custom ops (library.py): tensors in, the Op's forward and
backward on zero-copy NumPy (CPU) or CuPy (CUDA) views of them, tensors out.

Outputs are allocated here with the layout the fake implementations promise (fake.py), and
the kernels write into them. Running statistics are never written by `forward_impl`:
`update_impl` assigns them from the forward's moments with torch operations on their own
device (running.py), so a CUDA training step does not wait for the GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CallError
from ..op import Op
from ..op.saved import restore
from ..plan.bind import Binding
from ..spec import Spec
from .bridge import _array, _on_stream, _tensor, empty_like
from .fake import extra_inputs, extra_outputs, stat_dtype, stats_count
from .registry import group_of_key, op_of, sizes_of
from .running import update_running


def forward_impl(x: Tensor, weight: Tensor | None, bias: Tensor | None, extras: list[Tensor],
                 running_mean: Tensor | None, running_var: Tensor | None, mean_weight: Tensor | None,
                 var_weight: Tensor | None, spec: str, sizes: str, eps: float | None, training: bool,
                 group: str) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    op = op_of(spec)
    if training and running_mean is not None:
        raise CallError(f"{op.name}: normgen::forward reads running statistics in evaluation only (training=False); "
                        "normgen::update_running updates them from the forward's moments")
    kwargs = _arrays(op.spec, weight, bias, extras, running_mean, running_var, mean_weight, var_weight, group)
    y = empty_like(x)
    with _on_stream(x):
        fwd = op.forward(_array(x, "input"), out=_out(y), training=training, eps=eps, **kwargs, **sizes_of(sizes))
    groups = _checked_groups(spec, tuple(x.shape), sizes, fwd.binding.n_groups)
    stats = _tensor(fwd.kstats).to(x.device, stat_dtype(x.dtype)).contiguous()
    moments = fwd.moments
    if moments is None:  # evaluation with the running statistics: no batch moments
        moments = torch.zeros((0, 3), dtype=torch.float64, device=x.device)
    else:
        moments = _host_or_device(moments, x.device).reshape(groups, 3)
    return y, stats, moments, [_tensor(getattr(fwd, name)) for name in extra_outputs(op.spec)]


def forward_y_impl(op: Op, x: Tensor, weight: Tensor | None, bias: Tensor | None, sizes: dict[str, Any],
                   eps: float | None, training: bool) -> Tensor:
    """y alone, for a plain CPU tensor outside autograd (inference, no_grad): what
    `forward_impl` returns as y, without the statistics and moments nobody will read.

    It calls the Op for y only (`Op.__call__`), whose repeated calls run the recipe the first
    call left (op/fast.py), so a small call costs little more than the kernel. y is allocated
    as `forward_impl` allocates it (the layout the fake implementation promises).
    """
    params = {}
    if weight is not None:
        params[_role(op.spec, "weight")] = weight.detach().numpy() if weight.requires_grad else weight.numpy()
    if bias is not None:
        params[_role(op.spec, "bias")] = bias.detach().numpy() if bias.requires_grad else bias.numpy()
    y = empty_like(x)
    op(x.detach().numpy() if x.requires_grad else x.numpy(), out=y.numpy() if y.numel() else None,
       training=training, eps=eps, **params, **sizes)
    return y


def _role(spec: Spec, role: str) -> str:
    """The spec's name of its weight or bias (a clear error for a spec without one)."""
    a = spec.affine
    name = getattr(a, role, None) if a else None
    if name is None:
        raise CallError(f"{spec.name}: this spec has no {role} parameter (it takes "
                        f"{', '.join(spec.param_names) or 'no parameters'})")
    return name


def backward_impl(dy: Tensor, dextra_out: list[Tensor | None], x: Tensor, weight: Tensor | None,
                  bias: Tensor | None, extras: list[Tensor], running_mean: Tensor | None,
                  running_var: Tensor | None, mean_weight: Tensor | None, var_weight: Tensor | None, stats: Tensor,
                  moments: Tensor, spec: str, sizes: str, eps: float | None, training: bool,
                  group: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    op = op_of(spec)
    kwargs = _arrays(op.spec, weight, bias, extras, running_mean, running_var, mean_weight, var_weight, group)
    dx = empty_like(x)
    with _on_stream(dy):
        fwd = restore(op, _array(x, "input"), _array(stats, "stats"), _array(moments, "moments") if moments.numel()
                      else None, training=training, eps=eps, **kwargs, **sizes_of(sizes))
        # the fusion hook: the gradient of a kept prologue output joins dh (DESIGN.md, Fusion)
        more = {"dprologue": _array(dextra_out[0], "dprologue")} if dextra_out and dextra_out[0] is not None else {}
        # the ops' outputs may not alias each other: an extra whose gradient is dx gets its own array
        grads = op.backward(_array(dy, "grad_output"), fwd, out=_out(dx), alias_grads=False, **more)
    a = op.spec.affine
    given = ((a.weight if a else None, weight), (a.bias if a else None, bias), ("mean_weight", mean_weight),
             ("var_weight", var_weight))
    dparams = [_grad(grads.params[name], p) for name, p in given if p is not None]
    dextras = [_grad(grads[name], e) for name, e in zip(extra_inputs(op.spec), extras)]
    return dx, dparams, dextras


def update_impl(moments: Tensor, running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor | None,
                shape: list[int], spec: str, sizes: str, momentum: float | None) -> None:
    op = op_of(spec)
    binding = _binding(spec, tuple(shape), sizes)
    if moments.device.type == "cpu" and np.any(moments.numpy()[:, 0] <= 1):
        # on CUDA, normalize() checks the local count from the shape (reading counts would wait for the GPU)
        raise CallError(f"{op.name}: expected more than 1 value per statistic when training (input "
                        f"{tuple(shape)} has 1); running variance needs n - 1 > 0")
    if momentum is None and num_batches_tracked is None:
        raise CallError(f"{op.name}: momentum=None (cumulative average) needs num_batches_tracked")
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        # (half-type buffers too: torch.nn's modules keep them in the module's dtype after .to(dtype))
        if tuple(r.shape) != binding.running_shape or not r.dtype.is_floating_point:
            raise CallError(f"{op.name}: {name} has shape {tuple(r.shape)} and dtype {r.dtype}, expected "
                            f"{binding.running_shape} and a floating-point dtype")
        if r.device != moments.device:
            raise CallError(f"{op.name}: {name} is on {r.device}, the input on {moments.device}")
    update_running(binding, moments, running_mean, running_var, momentum, num_batches_tracked)


@functools.lru_cache(maxsize=256)
def _binding(spec: str, shape: tuple[int, ...], sizes: str) -> Binding:
    return op_of(spec).binding(shape, **sizes_of(sizes))


def _arrays(spec: Spec, weight, bias, extras, running_mean, running_var, mean_weight, var_weight,
            group: str) -> dict[str, Any]:
    """The Op's keyword arguments for the tensors of a call (views, not copies)."""
    out: dict[str, Any] = {}
    for role, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            name = _role(spec, role)
            out[name] = _array(p, name)
    names = extra_inputs(spec)
    if len(extras) != len(names):
        raise CallError(f"{spec.name}: takes {len(names)} extra input(s) ({', '.join(names) or 'none'}), got "
                        f"{len(extras)}")
    out.update((n, _array(e, n)) for n, e in zip(names, extras))
    if running_mean is not None or running_var is not None:
        out["running_mean"] = None if running_mean is None else _array(running_mean, "running_mean")
        out["running_var"] = None if running_var is None else _array(running_var, "running_var")
    for name, w in (("mean_weight", mean_weight), ("var_weight", var_weight)):
        if w is not None:  # a mixture's logits are mixed on the host (op/mixture.py)
            out[name] = w.detach().cpu().numpy()
    if group:
        out["process_group"] = group_of_key(group)
    return out


@functools.lru_cache(maxsize=1024)
def _checked_groups(spec: str, shape: tuple[int, ...], sizes: str, n_groups: int) -> int:
    """The number of statistics groups, as the fake implementation counts it, checked against
    the binding's (once per call structure), so that the shapes promised to torch.compile are
    the shapes returned."""
    count = stats_count(op_of(spec).spec, shape, sizes_of(sizes))
    if count != n_groups:
        raise AssertionError(f"{spec}: fake.stats_count gives {count} groups for input {shape}, the binding "
                             f"{n_groups}; the fake implementation disagrees with plan/bind.py")
    return count


def _out(t: Tensor) -> Any:
    """The kernels' view of an output tensor; None (let the Op allocate) when it is empty:
    torch gives an empty tensor zero strides, which the Op's checks of `out` refuse."""
    return _array(t, "out") if t.numel() else None


def _host_or_device(a: Any, device: torch.device) -> Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a, np.float64)).to(device)
    return _tensor(a)


def _grad(g: Any, like: Tensor) -> Tensor:
    """A gradient as a tensor shaped, typed and placed like its input (contiguous)."""
    t = torch.from_numpy(g) if isinstance(g, np.ndarray) else _tensor(g)  # a mixture's logits: host
    return t.to(like.device, like.dtype).reshape(like.shape).contiguous()
