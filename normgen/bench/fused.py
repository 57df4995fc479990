"""Benchmarks of fused specs against the PyTorch lines they replace (`normgen bench --fused`).

Each case times, in one run with the providers interleaved (bench/cpu.py `measure`):
normgen's fused kernels through the Op (NumPy arrays: "normgen") and through normgen.torch's
module on tensors ("normgen.torch": the custom ops, autograd; its backward evaluates h
again and writes the residual's gradient apart, as the ops' outputs may not alias);
PyTorch eager running the unfused lines; `torch.compile` of the same lines (Inductor fuses
what it can around its own norm kernels); and a copy of the bytes the fused kernels move
(every array read once and written once). "train" is one forward and one backward (the
gradient of the output only).

    add_rms_norm    h = x + r; y = F.rms_norm(h, (D,), w)         fwd: x, r in; y, h out
    group_norm_silu y = F.silu(F.group_norm(x, G, w, b))          fwd: x in; y out

The issue's targets (issue 13) are printed beside the ratios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layouts import make_array
from ..op.op import load
from .cpu import Setup, _copy_runner, measure

#: speed-up targets of issue 13 on the CPU: (vs eager, vs torch.compile) per direction; and
#: add_rms_norm's forward against a copy of the same bytes
TARGETS = {"forward": (2.0, 1.3), "train": (1.5, 1.2)}
COPY_TARGET = 0.6


@dataclass(frozen=True)
class FusedCase:
    name: str
    spec: str
    shape: tuple[int, ...]
    layout: str
    sizes: tuple[tuple[str, Any], ...]
    arrays: dict[str, int]  # x-like arrays each direction reads and writes once


def cases() -> list[FusedCase]:
    return [
        FusedCase("add_rms_norm [8192,4096]", "add_rms_norm", (8192, 4096), "contiguous",
                  (("normalized_shape", (4096,)),), {"forward": 4, "train": 4 + 3}),
        FusedCase("group_norm_silu NCHW [8,256,64,64]", "group_norm_silu", (8, 256, 64, 64), "contiguous",
                  (("num_groups", 32),), {"forward": 2, "train": 2 + 3}),
        FusedCase("group_norm_silu NHWC [8,256,64,64]", "group_norm_silu", (8, 256, 64, 64), "channels_last",
                  (("num_groups", 32),), {"forward": 2, "train": 2 + 3}),
    ]


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _torch_lines(case: FusedCase) -> Callable:
    import torch
    F = torch.nn.functional
    sizes = dict(case.sizes)
    if case.spec == "add_rms_norm":
        def add_rms_norm(x, r, w):
            h = x + r
            return F.rms_norm(h, sizes["normalized_shape"], w), h
        return add_rms_norm

    def group_norm_silu(x, w, b):
        return F.silu(F.group_norm(x, sizes["num_groups"], w, b)), None
    return group_norm_silu


def setup(case: FusedCase, direction: str, dtype: str, compiled: dict[str, Any]) -> Setup:
    """Inputs and one callable per provider; `compiled` keeps torch.compile'd functions across cases."""
    import torch

    import normgen.torch as nt

    rng = np.random.default_rng(0)
    op = load(case.spec)
    sizes = dict(case.sizes)
    x = make_array(rng.standard_normal(case.shape), case.layout, dtype)
    extras = {e: make_array(rng.standard_normal(case.shape), case.layout, dtype) for e in op.spec.extras}
    b = op.binding(case.shape, **sizes)
    params = {p: (rng.standard_normal(b.param_shape) * 0.1 + 1).astype(dtype) for p in op.spec.param_names}
    dy = make_array(rng.standard_normal(case.shape), case.layout, dtype)
    s = Setup(bytes=case.arrays[direction] * x.nbytes)
    train = direction == "train"

    def ng():
        fwd = op.forward(x, **params, **extras, **sizes)
        return op.backward(dy, fwd) if train else fwd
    s.run["normgen"] = ng

    inputs = [torch.from_numpy(x)] + [torch.from_numpy(a) for a in extras.values()] + \
             [torch.from_numpy(p) for p in params.values()]
    if train:
        inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    tdy = torch.from_numpy(dy)
    # normgen.torch's layer on the same tensors, its parameters set to the same values
    module = (nt.AddRMSNorm(case.shape[-1]) if case.spec == "add_rms_norm" else
              nt.GroupNormSiLU(sizes["num_groups"], case.shape[1]))
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(params[name]))
    args = inputs[:1 + len(extras)]
    wrt = args + list(module.parameters())
    if train:
        s.run["normgen.torch"] = lambda: torch.autograd.grad(_first(module(*args)), wrt, tdy)
    else:
        s.run["normgen.torch"] = lambda: module(*args)
    lines = _torch_lines(case)
    key = (case.spec, train)
    if key not in compiled:
        compiled[key] = torch.compile(lines)
    for name, fn in (("eager", lines), ("compile", compiled[key])):
        if train:
            s.run[name] = (lambda f: lambda: torch.autograd.grad(f(*inputs)[0], inputs, tdy))(fn)
        else:
            s.run[name] = (lambda f: lambda: f(*inputs))(fn)
    s.run["copy"] = _copy_runner(x, s.bytes)
    return s


@dataclass
class FusedResult:
    case: str
    direction: str
    bytes: int
    ms: dict[str, float]

    def speedup(self, other: str) -> float:
        return self.ms[other] / self.ms["normgen"] if other in self.ms else math.nan


def run(directions: tuple[str, ...] = ("forward", "train"), dtype: str = "float32", repeat: int = 10,
        warmup: int = 3, progress: Callable[[FusedResult], None] | None = None) -> list[FusedResult]:
    import torch

    from ..runtime import threads
    torch.set_num_threads(threads.threads())
    compiled: dict[str, Any] = {}
    out = []
    for case in cases():
        for direction in directions:
            s = setup(case, direction, dtype, compiled)
            sec = measure(s, repeat, warmup)
            r = FusedResult(case.name, direction, s.bytes, {k: v * 1e3 for k, v in sec.items()})
            out.append(r)
            if progress:
                progress(r)
    return out


def table(results: list[FusedResult]) -> str:
    """ms per provider, normgen's speed-up over eager and torch.compile against the targets, and its
    fraction of the copy's bandwidth."""
    head = (f"{'case':<36} {'dir':<7} {'normgen':>8} {'n.torch':>8} {'eager':>8} {'compile':>8} {'x eager':>8} "
            f"{'x compile':>9} {'of copy':>7}  target (eager, compile)")
    lines = [head, f"{'':<36} {'':<7} {'ms':>8} {'ms':>8} {'ms':>8} {'ms':>8}"]
    for r in results:
        te, tc = TARGETS[r.direction]
        se, sc = r.speedup("eager"), r.speedup("compile")
        frac = r.ms["copy"] / r.ms["normgen"]
        ok = "met" if se >= te and sc >= tc else "MISSED"
        lines.append(f"{r.case:<36} {r.direction:<7} {r.ms['normgen']:8.2f} {r.ms['normgen.torch']:8.2f} "
                     f"{r.ms['eager']:8.2f} "
                     f"{r.ms['compile']:8.2f} {se:7.2f}x {sc:8.2f}x {frac:7.0%}  >= {te}x, {tc}x: {ok}")
    return "\n".join(lines)


def save_y_bytes(shape: tuple[int, int] = (4096, 4096), layers: int = 4) -> dict[str, int]:
    """Bytes of the normalization layers' inputs that a training step keeps alive between its
    forward and its backward, with save="x" and save="y": a chain of `layers` blocks
    (t = t * 2.0; t = LayerNorm(t)), whose multiplications save nothing, so each layer's input
    lives only as long as the layer keeps it. Counted with weak references, not sampled."""
    import gc
    import weakref

    import torch

    import normgen.torch as nt

    out = {}
    for save in ("x", "y"):
        norms = [nt.from_spec("layer_norm", normalized_shape=(shape[1],), save=save) for _ in range(layers)]
        a = torch.randn(shape, requires_grad=True)
        t, alive = a, []
        for norm in norms:
            t = t * 2.0
            alive.append(weakref.ref(t))
            t = norm(t)
        gc.collect()
        out[save] = sum(r().nbytes for r in alive if r() is not None and r() is not t)
        t.sum().backward()
    return out
