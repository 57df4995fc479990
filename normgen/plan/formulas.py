"""The math a plan's kernels compute, one line per quantity: what `normgen plan` prints.

The forward normalizes with the group's statistics; the backward of a training call
differentiates through them too. Per group of n elements, with g = dy · weight:

    center mean, scale std   x̂ = (x − mean) · rstd, rstd = 1/√(var + eps)
                             dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))
    center none, scale rms   x̂ = x · rstd, rstd = 1/√(mean(x²) + eps)
                             dx = rstd · (g − x̂ · mean(g · x̂))
    scale l2                 x̂ = x_c · rstd, rstd = 1/√(Σ x_c² + eps)   (x_c: x − mean, or x)
                             dx = rstd · (g [− mean(g)] − x̂ · Σ(g · x̂))
    scale none               x̂ = x − mean;  dx = g − mean(g)

(The last term of each dx is the chain rule through rstd, the mean(g) term through the mean;
the kernels accumulate a = Σ g and b = Σ g·x̂ in a first pass, then write dx in a second.)
"""

from __future__ import annotations

from ..spec import Spec
from ..spec.model import Center, Scale
from .model import Kernel


def normalized(kernel: Kernel, x: str = "x") -> str:
    """x̂ and the statistics it uses (`x`: what is normalized, h for a fused prologue)."""
    mean = kernel.center is Center.MEAN
    xc = f"({x} − mean)" if mean else x
    return {Scale.STD: f"x̂ = {xc} · rstd, rstd = 1/√(var + eps)",
            Scale.RMS: f"x̂ = {xc} · rstd, rstd = 1/√(mean({x}²) + eps)",
            Scale.L2: f"x̂ = {xc} · rstd, rstd = 1/√(Σ {xc}² + eps)",
            Scale.NONE: f"x̂ = {xc}"}[kernel.scale]


def weight(kernel: Kernel, spec: Spec) -> str:
    """The effective weight (Gemma's weight + 1), or '' without one."""
    if not kernel.has_weight:
        return ""
    return f"(weight + {spec.weight_offset:g})" if spec.weight_offset else "weight"


def output(kernel: Kernel, spec: Spec) -> str:
    """y (or the epilogue's out) from x̂."""
    w = weight(kernel, spec)
    y = "x̂" + (f" · {w}" if w else "") + (" + bias" if kernel.has_bias else "")
    epi = spec.fuse.epilogue if spec.fuse is not None else None
    return f"y = {y}" + (f"; out = {epi}" if epi is not None else "")


def gradient(kernel: Kernel, spec: Spec) -> str:
    """dx of a training call (statistics of this batch), from g = dy · weight."""
    mean = kernel.center is Center.MEAN
    centered = " − mean(g)" if mean else ""
    if kernel.scale is Scale.NONE:
        return f"dx = g{centered}"
    total = "Σ(g · x̂)" if kernel.scale is Scale.L2 else "mean(g · x̂)"
    return f"dx = rstd · (g{centered} − x̂ · {total})"


def lines(kernel: Kernel, spec: Spec) -> list[str]:
    """The math of the plan's direction, for `normgen plan`."""
    pro = spec.fuse.prologue if spec.fuse is not None else None
    out = [f"h = {pro}" if pro is not None else None, normalized(kernel, "h" if pro is not None else "x")]
    if spec.is_mixture:
        out.append("mean, var: softmax-weighted mixtures of the moments each kept set gives (Switchable Norm)")
    if kernel.direction.value == "forward":
        out.append(output(kernel, spec))
        return [line for line in out if line]
    w = weight(kernel, spec)
    if spec.fuse is not None and spec.fuse.epilogue is not None:
        out.append(f"dy ← dy · ∂out/∂y   (through the epilogue out = {spec.fuse.epilogue})")
    out.append("g = dy" + (f" · {w}" if w else "") + "   (per element)")
    if spec.is_mixture:
        out.append("dx: through each component's mean and rstd, weighted as in the forward")
    else:
        evaluation = "; evaluation, with the running statistics: dx = rstd · g" if spec.running else ""
        out.append(gradient(kernel, spec) + f"   (training{evaluation})")
    if pro is not None:
        out.append("that dx is dh (plus dprologue when h is kept); through the prologue: dx = dh · ∂h/∂x, and "
                   "each extra input's gradient dh · ∂h/∂input")
    params = ", ".join(p for p, on in (("dweight = Σ dy · x̂", kernel.has_weight), ("dbias = Σ dy", kernel.has_bias))
                       if on)
    if params:
        out.append(f"{params}   (over the axes the parameters do not index)")
    return [line for line in out if line]


def apply_line(kernel: Kernel, spec: Spec) -> str:
    """The elementwise statement of the second pass, for the loop nest."""
    if kernel.direction.value == "forward":
        return output(kernel, spec)
    if spec.is_mixture:
        return "dx from every component's sums a, b (merged on the host)"
    return gradient(kernel, spec)


def sums_line(kernel: Kernel) -> str:
    """What the first pass accumulates."""
    if kernel.direction.value == "forward":
        return "moments += chunk"
    return "a += Σ g, b += Σ g·x̂   # mean and rstd from the forward" if kernel.scale is not Scale.NONE \
        else "a += Σ g   # mean from the forward"
