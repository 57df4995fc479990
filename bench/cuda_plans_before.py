"""The CUDA plans of the benchmark shapes *before* issue 14, on an H100 (132 SMs), as JSON.

Run once at commit 46046e3 (the planner had no device model and no traffic model), so the
traffic below is this script's reading of the kernels of that commit, with the same rules
that the planner's model (plan/traffic.py) applies since:

  * every loop over an x-like array in global memory reads it from DRAM (the rows fused
    kernels read x once for the moments and once more to normalize);
  * weight and bias are read once per kernel; statistics and partials are counted exactly;
  * `min_bytes` = the x-like inputs read once (x; x and dy backward) + every output written
    once (y or dx; mean and rstd per group; dweight and dbias).

    PYTHONPATH=. python bench/cuda_plans_before.py   # writes bench/results/cuda-plans-before.json

It does not run on later commits (make_plan's `sms=` became `device=`); its output is kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from normgen.bench.cpu import reference_cases
from normgen.bench.cuda import gpu_cases
from normgen.layouts import layout_strides, like_strides
from normgen.op.op import load
from normgen.plan.bind import bind
from normgen.plan.launch import MERGE_BLOCK
from normgen.plan.model import Direction, ParamGrads, Strategy
from normgen.plan.planner import make_plan
from normgen.runtime.cuda import _pgrad_len

SMS = 132
ITEM = 4  # float32


def cases():
    seen, out = set(), []
    for c in gpu_cases() + reference_cases():
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return out


def plan_of(case, direction):
    op = load(case.spec)
    b = bind(op.spec, case.shape, dict(case.sizes))
    strides = layout_strides(case.shape, case.layout)
    unit = tuple(0 if n == 1 else s for n, s in zip(case.shape, strides))
    out = like_strides(case.shape, strides)
    arrays = {"x": unit, "y": out} if direction == "forward" else {"x": unit, "dy": out, "dx": out}
    has_w = bool(op.spec.affine and op.spec.affine.weight)
    has_b = bool(op.spec.affine and op.spec.affine.bias)
    return b, make_plan(b, arrays, direction=Direction(direction), dtype="float32", has_weight=has_w,
                        has_bias=has_b, target="cuda", sms=SMS)


def summary(case, direction):
    b, plan = plan_of(case, direction)
    la, k = plan.launch, plan.kernel
    X = math.prod(case.shape) * ITEM
    ng = max(1, math.prod(b.stats_shape))
    n_param = math.prod(b.param_shape) if b.param_shape else 0
    P = (int(k.has_weight) + int(k.has_bias)) * n_param * ITEM
    stats = ng * (3 * 8 + 3 * ITEM)  # moments (float64) and kstats
    parts = ng * la.n_parts * (3 if direction == "forward" else 4) * 8
    threads = la.block[0] * la.block[1]
    main = {"grid": [la.grid, 1, 1], "block": [la.block[0], la.block[1], 1]}
    rows_shared = 4 * 32 * 8
    cols_shared = 2 * 2 * 1024 * 8
    shared = cols_shared if k.strategy is Strategy.COLUMNS else rows_shared
    merge = {"grid": [-(-ng // MERGE_BLOCK), 1, 1], "block": [MERGE_BLOCK, 1, 1], "shared_bytes": 0}
    ks = []
    if case.mode == "eval":
        ks.append({"name": "forward_apply", **main, "shared_bytes": 0, "bytes_read": X + P + ng * 3 * ITEM,
                   "bytes_written": X})
        return {"device": "h100", "kernels": ks, "min_bytes": 2 * X}, threads * la.grid
    if direction == "forward":
        if la.fused:
            ks.append({"name": "forward_fused", **main, "shared_bytes": shared, "bytes_read": 2 * X + P,
                       "bytes_written": X + stats})
        else:
            ks.append({"name": "forward_partial", **main, "shared_bytes": shared, "bytes_read": X,
                       "bytes_written": parts})
            ks.append({"name": "forward_merge", **merge, "bytes_read": parts, "bytes_written": stats})
            ks.append({"name": "forward_apply", **main, "shared_bytes": 0, "bytes_read": X + P + ng * 3 * ITEM,
                       "bytes_written": X})
        min_bytes = 2 * X + ng * 2 * ITEM
    else:
        grads = 2 * n_param * ITEM if plan.param_grads is not ParamGrads.NONE else 0
        if la.fused:
            ks.append({"name": "backward_fused", **main, "shared_bytes": shared, "bytes_read": 4 * X + P,
                       "bytes_written": X + ng * 4 * 8})
        else:
            pg = 0
            if k.strategy is Strategy.COLUMNS and plan.param_grads is not ParamGrads.NONE:
                pg = _pgrad_len(plan) * 2 * 8
            ks.append({"name": "backward_partial", **main, "shared_bytes": shared, "bytes_read": 2 * X + P,
                       "bytes_written": parts + pg})
            ks.append({"name": "backward_merge", **merge, "bytes_read": parts, "bytes_written": ng * (4 * 8 + 3 * ITEM)})
            ks.append({"name": "backward_apply", **main, "shared_bytes": 0, "bytes_read": 2 * X + P,
                       "bytes_written": X})
        if plan.params is not None:
            pl = plan.params.launch
            pshared = cols_shared if plan.params.kernel.strategy is Strategy.COLUMNS else rows_shared
            n_out = (math.prod(pl.sizes[i] for i in plan.params.kernel.groups) or 1) * pl.n_parts
            if plan.params.kernel.strategy is Strategy.COLUMNS:
                n_out *= pl.sizes[plan.params.kernel.inner]
            ks.append({"name": "param_partial", "grid": [pl.grid, 1, 1], "block": [pl.block[0], pl.block[1], 1],
                       "shared_bytes": pshared, "bytes_read": 2 * X, "bytes_written": n_out * 2 * 8})
        min_bytes = 3 * X + grads
    return {"device": "h100", "kernels": ks, "min_bytes": min_bytes}, None


def main() -> None:
    out = []
    for case in cases():
        for direction in ("forward", "backward"):
            if direction == "backward" and case.mode == "eval":
                continue
            js, _ = summary(case, direction)
            out.append({"case": case.name, "direction": direction, "plan": js})
    path = Path(__file__).parent / "results" / "cuda-plans-before.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(out)} plans)")


if __name__ == "__main__":
    main()
