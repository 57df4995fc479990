"""The CUDA plans of the benchmark shapes, before and after issue 14: threads launched and
modeled DRAM traffic per kernel, side by side.

    PYTHONPATH=. python bench/cuda_plans.py [--device h100] [--json bench/results/cuda-plans-after.json]

"before" is bench/results/cuda-plans-before.json (written by bench/cuda_plans_before.py at
the commit before the device model); "after" is what the planner says now
(`normgen plan --target cuda --json` for each case).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from normgen.bench.cpu import reference_cases
from normgen.bench.cuda import gpu_cases
from normgen.layouts import layout_strides
from normgen.op.op import load
from normgen.plan.traffic import plan_json
from normgen.runtime.cuda import cupy_device

RESULTS = Path(__file__).parent / "results"


def cases():
    """The CUDA benchmark's cases, then the CPU reference cases it leaves out (the row sweep)."""
    seen, out = set(), []
    for c in gpu_cases() + reference_cases():
        if c.name not in seen:
            seen.add(c.name)
            out.append(c)
    return out


def plan_of(case, direction: str, device="h100", dtype: str = "float32") -> dict:
    """The plan JSON of one benchmark case."""
    plan = load(case.spec).plan(case.shape, strides=layout_strides(case.shape, case.layout), dtype=dtype,
                                direction=direction, target="cuda", device=device, **dict(case.sizes))
    return plan_json(plan, evaluation=case.mode == "eval")


def after(device="h100") -> list[dict]:
    return [{"case": c.name, "direction": d, "plan": plan_of(c, d, device)}
            for c in cases() for d in ("forward", "backward") if not (d == "backward" and c.mode == "eval")]


def _summary(plan: dict) -> tuple[str, float]:
    threads = " ".join(f"{k['name'].split('_', 1)[1]}:{_threads(k) // 1000}k" for k in plan["kernels"])
    moved = sum(k["bytes_read"] + k["bytes_written"] for k in plan["kernels"])
    return threads, moved / plan["min_bytes"]


def _threads(k: dict) -> int:
    return k["grid"][0] * k["grid"][1] * k["grid"][2] * k["block"][0] * k["block"][1] * k["block"][2]


def table(before: list[dict], now: list[dict]) -> str:
    old = {(e["case"], e["direction"]): e["plan"] for e in before}
    lines = [f"{'case':<38} {'dir':<4} {'traffic/min':>11}  {'threads per kernel (before -> after)'}"]
    for e in now:
        b = old.get((e["case"], e["direction"]))
        t_new, r_new = _summary(e["plan"])
        t_old, r_old = _summary(b) if b else ("-", float("nan"))
        lines.append(f"{e['case']:<38} {e['direction'][:3]:<4} {r_old:4.2f} -> {r_new:4.2f}  {t_old}  ->  {t_new}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="a profile (default: the GPU present, else h100)")
    p.add_argument("--json", help="also write the plans to this file")
    args = p.parse_args()
    device = args.device
    if device is None:
        gpu = cupy_device()
        device = gpu.profile if gpu is not None else "h100"
    now = after(device)
    if args.json:
        Path(args.json).write_text(json.dumps(now, indent=1) + "\n")
    print(table(json.loads((RESULTS / "cuda-plans-before.json").read_text()), now))


if __name__ == "__main__":
    main()
