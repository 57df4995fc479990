"""Pass 7 of the planner, for fused specs: where each pass finds h, and what the backward writes.

h = prologue(x, extras) is what the kernels normalize. The moments pass always evaluates
the prologue while reading. The normalizing pass of the fused kernel needs h again (the
separate normalizing kernel, forward_apply, may run without a moments pass, with running
statistics: it always evaluates the prologue again, and writes h when it is kept):

forward   STORED     the prologue is kept: the moments pass writes h, the normalizing pass
                     reads it back (from cache when the group is small)
          HELD       rows, one unit per group of at most HOLD elements: the moments pass holds
                     the group's h in the unit's scratch (cache), so the normalizing pass
                     re-reads neither x nor the extras and evaluates nothing twice
          RECOMPUTE  otherwise: evaluate the prologue again from x and the extras
backward  FROM_Y     save="y": x_hat = (y - bias) / weight (no prologue, no epilogue)
          STORED     the forward's h is given: read it instead of x and the extras
          RECOMPUTE  otherwise

The backward reads x and the prologue's extras only when it recomputes h or when the
prologue's derivatives need them (`x + residual` needs neither: its derivatives are 1).
An extra input whose derivative equals x's (and that the epilogue does not read) needs
no array of its own: its gradient is dx (`gradient_aliases`; the op then gives none, and
the kernels write the gradients of the arrays they are given).
"""

from __future__ import annotations

import math

from ..spec import Spec
from ..spec.derive import derivative
from .model import Direction, Fusion, HSource, Plan, Strategy, extra_grad

#: elements of h a rows unit holds in its scratch between the passes (64 KiB of float32: in L2)
HOLD = 16384


def hold_elements(plan: Plan) -> int:
    """Elements of h each block of a rows forward keeps in its scratch: the whole group (HELD),
    or one chunk (for the moments of h when h is not held: the phased moments pass too)."""
    k, la = plan.kernel, plan.launch
    f = k.fusion
    if f is None or f.prologue is None or k.direction is not Direction.FORWARD or k.strategy is not Strategy.ROWS:
        return 0
    if f.h_from is HSource.HELD:
        rows = math.prod(la.sizes[i] for i in k.rows)
        return rows * -(-la.sizes[k.inner] // la.seg) * la.seg
    return la.seg


def gradient_aliases(spec: Spec) -> tuple[str, ...]:
    """Extra inputs whose gradient is dx itself (∂P/∂e = ∂P/∂x, and the epilogue does not read e)."""
    f = spec.fuse
    if f is None or f.prologue is None:
        return ()
    dx = derivative(f.prologue, "x")
    return tuple(e for e in f.prologue_inputs
                 if e not in f.epilogue_inputs and derivative(f.prologue, e) == dx)


def whole_groups(spec: Spec, direction: Direction) -> bool:
    """Quantization needs a group's absmax before its first write: one unit per group, rows."""
    return direction is Direction.FORWARD and spec.fuse is not None and spec.fuse.quantize is not None


def plan_fusion(spec: Spec, direction: Direction, arrays: tuple[str, ...], strategy: Strategy, fused: bool,
                group_size: int) -> Fusion | None:
    """The fusion of a plan, or None for a plain spec called plainly."""
    f = spec.fuse
    save_y = direction is Direction.BACKWARD and "y" in arrays
    if f is None and not save_y:
        return None
    pro = f.prologue if f else None
    base = {"prologue": pro, "epilogue": f.epilogue if f else None,
            "pro_inputs": f.prologue_inputs if f else (), "epi_inputs": f.epilogue_inputs if f else ()}
    if direction is Direction.FORWARD:
        if pro is None:
            h_from = HSource.X
        elif "h" in arrays:
            h_from = HSource.STORED
        elif strategy is Strategy.ROWS and fused and group_size <= HOLD:
            h_from = HSource.HELD
        else:
            h_from = HSource.RECOMPUTE
        return Fusion(**base, keep="h" in arrays, h_from=h_from, quantize=f.quantize)
    if save_y:
        h_from = HSource.FROM_Y
    elif pro is None:
        h_from = HSource.X
    else:
        h_from = HSource.STORED if "h" in arrays else HSource.RECOMPUTE
    # the extras whose gradient arrays the call gives (the op leaves out those equal to dx)
    grads = tuple(e for e in (f.extras if f else ()) if extra_grad(e) in arrays)
    needs = set()
    if pro is not None:
        for name in ("x",) + f.prologue_inputs:
            needs |= set(derivative(pro, name).names())
    recompute = h_from is HSource.RECOMPUTE
    return Fusion(**base, keep=False, h_from=h_from, dh="dh" in arrays, grads=grads,
                  reads_x=h_from is HSource.X or recompute or "x" in needs,
                  reads_pro=recompute or bool(needs & set(base["pro_inputs"])))
