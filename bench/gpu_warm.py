"""Compile, in parallel, the CUDA modules that bench/gpu.sh's tests and benchmarks will load.

CuPy compiles a module (NVRTC, a second or two) the first time a kernel of it runs, and keeps
it in its disk cache. The GPU tests check every bundled spec in every layout and dtype (some
500 modules) one after another; compiling them first on every core turns minutes into tens of
seconds. The modules are those `normgen check --target cuda` and `normgen bench --target cuda`
plan on this GPU (the same plans, so the same sources and cache entries).

    PYTHONPATH=. python bench/gpu_warm.py [--workers 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def sources() -> dict[str, str]:
    """{key: source} of every module the CUDA checks and benchmarks plan on this GPU."""
    from normgen.bench.cuda import gpu_cases
    from normgen.codegen.render import render
    from normgen.errors import NormgenError
    from normgen.layouts import LAYOUTS, make_array
    from normgen.op.op import load
    from normgen.runtime.arrays import elem_strides
    from normgen.runtime.cuda import cupy_device
    from normgen.spec.library import bundled_names
    from normgen.verify.check import CUDA_DTYPES, cases

    device = cupy_device().profile
    wanted = []  # (op, shape, strides, sizes, dtypes)
    for name in bundled_names():
        op = load(name)
        for case in cases(op.spec):
            for layout in LAYOUTS:
                strides = elem_strides(make_array(np.zeros(case.shape), layout, np.float32))
                wanted.append((op, case.shape, strides, dict(case.sizes), CUDA_DTYPES))
    for case in gpu_cases():
        strides = elem_strides(make_array(np.zeros(case.shape), case.layout, np.float32))
        wanted.append((load(case.spec), case.shape, strides, dict(case.sizes), ("float32", "bfloat16")))
    out: dict[str, str] = {}
    for op, shape, strides, sizes, dtypes in wanted:
        for dtype in dtypes:
            for direction in ("forward", "backward"):
                try:
                    plan = op.plan(shape, strides=strides, dtype=dtype, direction=direction, target="cuda",
                                   device=device, **sizes)
                except NormgenError:  # a combination the spec rejects: the checks skip it too
                    continue
                for p in (plan, plan.params):
                    if p is not None:
                        src = render(p.kernel)
                        out[src.key] = src.text
    return out


def _compile(source: str) -> float:
    import cupy

    t0 = time.perf_counter()
    cupy.RawModule(code=source, options=("-std=c++17",)).compile()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    args = p.parse_args()
    t0 = time.perf_counter()
    todo = sources()
    print(f"gpu_warm: {len(todo)} modules, {args.workers} workers", flush=True)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        spent = sum(pool.map(_compile, todo.values(), chunksize=4))
    print(f"gpu_warm: compiled in {time.perf_counter() - t0:.0f} s ({spent:.0f} s of compiling)", flush=True)


if __name__ == "__main__":
    main()
