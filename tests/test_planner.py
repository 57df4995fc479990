"""The planner's decisions for the reference shapes, pinned as a readable table.

A change to the planner shows up here as a table diff: review it, and update the table
when the new decisions are the intended ones (they are checked for correctness by the
oracle tests, not here). CPU plans for 2 threads; CUDA plans for the h100 device profile.
"""

from __future__ import annotations

import pytest

from normgen.layouts import layout_strides, like_strides
from normgen.op import load
from normgen.op.fused import plan_arrays
from normgen.plan import Direction, bind, make_plan
from normgen.plan.device import profile
from normgen.verify.reference import REFERENCES


def decisions(target: str, threads: int = 2, device: str = "h100") -> list[str]:
    """One line per reference plan: strategy, fused or phased, how it runs, parameter gradients."""
    rows = []
    for ref in REFERENCES:
        op = load(ref.spec)
        if target == "cuda" and op.spec.fuse is not None:
            continue  # the CUDA templates do not fuse yet
        strides = layout_strides(ref.shape, ref.layout)
        out = like_strides(ref.shape, strides)
        b = bind(op.spec, ref.shape, dict(ref.sizes))
        for d in (Direction.FORWARD, Direction.BACKWARD):
            arrays = {"x": strides, "y": out} if d is Direction.FORWARD else {"x": strides, "dy": out, "dx": out}
            arrays.update(plan_arrays(op.spec, d.value, strides, out))
            has = bool(op.spec.affine)
            p = make_plan(b, arrays, direction=d, dtype="float32", has_weight=has and bool(op.spec.affine.weight),
                          has_bias=has and bool(op.spec.affine.bias), target=target, threads=threads,
                          device=profile(device) if target == "cuda" else None)
            la = p.launch
            how = "fused" if la.fused else f"phased x{la.n_parts}"
            if target == "cpu":
                run = f"{la.n_blocks} blocks/{la.threads} threads"
                if p.kernel.strategy.value == "columns":
                    run += f", kb {la.kb} r{int(la.kb_read)}w{int(la.kb_write)}"
            else:
                run = f"grid {la.grid} x {la.block}"
            extra = f", params: {p.param_grads.value}" if p.param_grads.value != "none" else ""
            if p.kernel.fusion is not None:
                f = p.kernel.fusion
                extra += f", h {f.h_from.value}" + (f", writes {', '.join(f.grads)}" if f.grads else "")
            rows.append(f"{ref.spec} {list(ref.shape)} {ref.layout} {d.value}: {p.kernel.strategy.value}, {how}, "
                        f"{run}{extra}")
    return rows


CPU = """
batch_norm [32, 128, 56, 56] contiguous forward: rows, fused, 8 blocks/2 threads
batch_norm [32, 128, 56, 56] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
batch_norm [32, 128, 56, 56] channels_last forward: columns, phased x4, 4 blocks/2 threads, kb 8 r0w1
batch_norm [32, 128, 56, 56] channels_last backward: columns, phased x4, 4 blocks/2 threads, kb 8 r1w1, params: per block
layer_norm [8192, 1024] contiguous forward: rows, fused, 8 blocks/2 threads
layer_norm [8192, 1024] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
group_norm [8, 256, 64, 64] contiguous forward: rows, fused, 8 blocks/2 threads
group_norm [8, 256, 64, 64] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
group_norm [8, 256, 64, 64] channels_last forward: columns, fused, 8 blocks/2 threads, kb 4 r0w1
group_norm [8, 256, 64, 64] channels_last backward: columns, fused, 8 blocks/2 threads, kb 4 r1w1, params: per block
instance_norm [8, 256, 64, 64] contiguous forward: rows, fused, 8 blocks/2 threads
instance_norm [8, 256, 64, 64] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
rms_norm [8192, 1024] contiguous forward: rows, fused, 8 blocks/2 threads
rms_norm [8192, 1024] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
switchable_norm [8, 64, 32, 32] contiguous forward: rows, fused, 8 blocks/2 threads
switchable_norm [8, 64, 32, 32] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
weight_norm [512, 256, 3, 3] contiguous forward: rows, fused, 8 blocks/2 threads
weight_norm [512, 256, 3, 3] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block
weight_standardization [512, 256, 3, 3] contiguous forward: rows, fused, 8 blocks/2 threads
weight_standardization [512, 256, 3, 3] contiguous backward: rows, fused, 8 blocks/2 threads
standardize [100000, 64] contiguous forward: columns, phased x4, 4 blocks/2 threads, kb 16 r1w1
standardize [100000, 64] contiguous backward: columns, phased x4, 4 blocks/2 threads, kb 16 r1w1
add_rms_norm [8192, 4096] contiguous forward: rows, fused, 8 blocks/2 threads, h stored
add_rms_norm [8192, 4096] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block, h stored
gated_rms_norm [8192, 1024] contiguous forward: rows, fused, 8 blocks/2 threads, h held
gated_rms_norm [8192, 1024] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block, h recompute, writes z
group_norm_silu [8, 256, 64, 64] contiguous forward: rows, fused, 8 blocks/2 threads, h x
group_norm_silu [8, 256, 64, 64] contiguous backward: rows, fused, 8 blocks/2 threads, params: per block, h x
group_norm_silu [8, 256, 64, 64] channels_last forward: columns, fused, 8 blocks/2 threads, kb 4 r0w1, h x
group_norm_silu [8, 256, 64, 64] channels_last backward: columns, fused, 8 blocks/2 threads, kb 4 r1w1, params: per block, h x
"""

CUDA = """
batch_norm [32, 128, 56, 56] contiguous forward: rows, phased x9, grid 1152 x (256, 1)
batch_norm [32, 128, 56, 56] contiguous backward: rows, phased x9, grid 1152 x (256, 1), params: per group
batch_norm [32, 128, 56, 56] channels_last forward: columns, phased x528, grid 528 x (32, 16)
batch_norm [32, 128, 56, 56] channels_last backward: columns, phased x528, grid 528 x (32, 16), params: per element
layer_norm [8192, 1024] contiguous forward: rows, fused, grid 2048 x (256, 1)
layer_norm [8192, 1024] contiguous backward: rows, fused, grid 4096 x (256, 1), params: second reduction
group_norm [8, 256, 64, 64] contiguous forward: rows, fused, grid 512 x (1024, 1)
group_norm [8, 256, 64, 64] contiguous backward: rows, phased x5, grid 1280 x (256, 1), params: second reduction
group_norm [8, 256, 64, 64] channels_last forward: columns, phased x33, grid 528 x (32, 16)
group_norm [8, 256, 64, 64] channels_last backward: columns, phased x33, grid 528 x (32, 16), params: per element
instance_norm [8, 256, 64, 64] contiguous forward: rows, fused, grid 2048 x (256, 1)
instance_norm [8, 256, 64, 64] contiguous backward: rows, fused, grid 2048 x (512, 1), params: per group
rms_norm [8192, 1024] contiguous forward: rows, fused, grid 2048 x (256, 1)
rms_norm [8192, 1024] contiguous backward: rows, fused, grid 4096 x (256, 1), params: second reduction
switchable_norm [8, 64, 32, 32] contiguous forward: rows, phased x9, grid 1152 x (256, 1)
switchable_norm [8, 64, 32, 32] contiguous backward: rows, phased x9, grid 1152 x (256, 1), params: per group
weight_norm [512, 256, 3, 3] contiguous forward: rows, fused, grid 512 x (1024, 1)
weight_norm [512, 256, 3, 3] contiguous backward: rows, fused, grid 512 x (1024, 1), params: per group
weight_standardization [512, 256, 3, 3] contiguous forward: rows, fused, grid 512 x (1024, 1)
weight_standardization [512, 256, 3, 3] contiguous backward: rows, fused, grid 512 x (1024, 1)
standardize [100000, 64] contiguous forward: columns, phased x528, grid 528 x (16, 32)
standardize [100000, 64] contiguous backward: columns, phased x528, grid 528 x (16, 32)
"""


@pytest.mark.parametrize("target, table", [("cpu", CPU), ("cuda", CUDA)])
def test_planner_decisions_for_the_reference_shapes(target, table):
    assert decisions(target) == table.strip().split("\n")


def test_the_decisions_the_design_names():
    cpu, cuda = decisions("cpu"), decisions("cuda")
    assert "batch_norm [32, 128, 56, 56] channels_last forward: columns, phased x4" in cpu[2]
    assert cpu[4].startswith("layer_norm [8192, 1024] contiguous forward: rows, fused")
    # GPU: too few groups for 132 SMs are split into parts, merged by a second kernel
    assert "phased" in cuda[0] and "fused" in cuda[4]
    assert "params: second reduction" in cuda[5]  # LayerNorm's weight varies inside a group
