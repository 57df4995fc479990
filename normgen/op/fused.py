"""The arrays a fused spec's kernels take besides x, y, dy and dx, by their names in the plan.

forward   "e_<name>" each extra input; "h" the prologue's value (written when kept);
          "qscale" a quantized output's scale per kept index
backward  "e_<name>"; "h" (the forward's kept prologue, read instead of recomputing it);
          "dh" the prologue's incoming gradient; "d_<name>" each extra input's gradient that
          is not dx itself (plan/fusion.py `gradient_aliases`); "y" for save="y"; "bias"

Which of them a kernel actually reads is the plan's decision (plan/fusion.py); the op
offers what the call has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CallError
from ..plan.fusion import gradient_aliases
from ..plan.model import extra_array, extra_grad
from ..spec import Spec
from .args import Call, check_like


def forward_arrays(call: Call) -> dict[str, Any]:
    """The fused arrays of a forward call (empty for a plain spec)."""
    out = {extra_array(e): a for e, a in call.extras.items()}
    if call.prologue is not None:
        out["h"] = call.prologue
    if call.qscale is not None:
        out["qscale"] = call.qscale
    return out


def backward_arrays(spec: Spec, fwd: Any, dprologue: Any, alias: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fused arrays of a backward call, the extras' gradients by extra name).

    An extra whose gradient is dx gets no array when `alias`: the caller fills it in with dx.
    """
    call: Call = fwd.call
    be = call.backend
    out: dict[str, Any] = {}
    if spec.fuse is None and call.save == "y":
        return {"y": fwd.y, "bias": call.bias}, {}
    if spec.fuse is None:
        return out, {}
    if spec.fuse.quantize is not None:
        raise CallError(f"{spec.name}: the output is quantized ([fuse] quantize = '{spec.fuse.quantize}'), which "
                        "has no gradient; quantized specs are for inference (forward only)")
    out.update({extra_array(e): a for e, a in call.extras.items()})
    if fwd.prologue is not None:
        out["h"] = fwd.prologue
    if dprologue is not None:
        if spec.fuse.prologue is None or not spec.fuse.keep_prologue:
            raise CallError(f"{spec.name}: dprologue= is the gradient of the kept prologue, but this spec does not "
                            "keep its prologue ([fuse] keep_prologue = false)")
        out["dh"] = check_like(spec.name, dprologue, call.x, be, "dprologue")
    grads = {}
    aliases = gradient_aliases(spec) if alias else ()
    for e in spec.extras:
        if e not in aliases:
            grads[e] = out[extra_grad(e)] = be.empty_like(call.x)
    out["bias"] = call.bias
    return out, grads


def check_weight_nonzero(name: str, call: Call) -> None:
    """save='y' divides by the weight: a zero weight loses x_hat."""
    w = call.backend.to_host(call.weight)
    if np.any(w == 0):
        raise CallError(f"{name}: save='y' rebuilds x_hat = (y - bias) / weight, but the weight has zeros (at "
                        f"{tuple(int(i) for i in np.argwhere(w == 0)[0])}); call with save='x'")


def strides_of(be: Any, arrays: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Element strides of the x-like arrays among a call's fused arrays (not bias or qscale)."""
    return {k: be.strides(v) for k, v in arrays.items() if k not in ("bias", "qscale")}


def plan_arrays(spec: Spec, direction: str, unit: tuple[int, ...], out: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The fused arrays `Op.plan` assumes (for `normgen plan` and `generate`): extras laid out like
    x, new arrays like the output; a kept prologue's h given to the backward, with its gradient."""
    f = spec.fuse
    if f is None:
        return {}
    arrays = {extra_array(e): unit for e in f.extras}
    if f.keep_prologue:
        arrays["h"] = out
    if direction == "backward":
        if f.keep_prologue:
            arrays["dh"] = out
        aliases = gradient_aliases(spec)
        arrays.update({extra_grad(e): out for e in f.extras if e not in aliases})
    return arrays
