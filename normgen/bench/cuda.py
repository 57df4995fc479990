"""CUDA benchmarks: normgen's CUDA kernels against PyTorch CUDA and a device copy, on a GPU.

Each case is timed for every provider in one run, interleaved, with CUDA events around a
batch of calls (so launch latency is amortized the same way for everyone), median of
repeats after warm-up. Effective bandwidth counts x read once and y written once
(forward), x and dy read and dx written (backward); "copy" moves the same number of bytes
with a device-to-device copy, the ceiling a memory-bound kernel can reach.

`normgen bench --target cuda` runs this; `bench/gpu.sh` runs it with the CUDA tests.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np

from .cpu import Case, Measurement, _params, reference_cases


def gpu_cases() -> list[Case]:
    """The CPU reference shapes, and shapes of 64 MiB and more (float32), where a GPU is
    bandwidth-bound and the copy ceiling is meaningful."""
    big = [
        Case("layer_norm [16384,1024]", "layer_norm", (16384, 1024), sizes=(("normalized_shape", (1024,)),),
             series="64MiB+"),
        Case("rms_norm [16384,1024]", "rms_norm", (16384, 1024), sizes=(("normalized_shape", (1024,)),),
             series="64MiB+"),
        Case("group_norm [32,256,64,64] G=32", "group_norm", (32, 256, 64, 64), sizes=(("num_groups", 32),),
             series="64MiB+"),
        Case("group_norm NHWC [32,256,64,64]", "group_norm", (32, 256, 64, 64), "channels_last",
             (("num_groups", 32),), series="64MiB+"),
        Case("instance_norm [32,256,64,64]", "instance_norm", (32, 256, 64, 64), series="64MiB+"),
        Case("batch_norm train [64,128,56,56]", "batch_norm", (64, 128, 56, 56), series="64MiB+"),
        Case("batch_norm train NHWC [64,128,56,56]", "batch_norm", (64, 128, 56, 56), "channels_last",
             series="64MiB+"),
        Case("batch_norm eval [64,128,56,56]", "batch_norm", (64, 128, 56, 56), mode="eval", series="64MiB+"),
    ]
    return [c for c in reference_cases() if not c.series] + big


def setup(case: Case, direction: str, dtype: str, providers: tuple[str, ...]) -> tuple[int, dict[str, Callable]]:
    """(bytes moved, provider -> callable doing the whole op once on the current stream)."""
    import cupy as cp

    from ..verify.check import _on_gpu, _typed
    from ..layouts import make_array
    from ..op.op import load

    op = load(case.spec)
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal(case.shape)
    stat = "float64" if dtype == "float64" else "float32"  # running statistics and mixing weights
    p_h = _params(case, rng, stat)
    # the same values in `dtype` and the case's layout (BF16 bits for bfloat16), copied to the GPU
    x = _on_gpu(_typed(x_h, case.layout, dtype)[0])
    params = {k: _on_gpu(_typed(p_h[k], "contiguous", dtype)[0]) for k in op.spec.param_names}
    extra = {k: cp.asarray(p_h[k]) for k in ("running_mean", "running_var", "mean_weight", "var_weight") if k in p_h}
    sizes = dict(case.sizes)
    training = case.mode == "train"
    nbytes = (2 if direction == "forward" else 3) * x.size * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)
    dy_h = make_array(rng.standard_normal(case.shape), case.layout, np.float32) if direction == "backward" else None
    run: dict[str, Callable] = {}

    def ng_forward():
        return op.forward(x, **params, **extra, **sizes, training=training)

    if direction == "forward":
        run["normgen"] = ng_forward
    else:
        fwd = ng_forward()
        dy = _on_gpu(_typed(dy_h, case.layout, dtype)[0])
        run["normgen"] = lambda: op.backward(dy, fwd)
    if "copy" in providers:
        n = nbytes // 2 // 4  # float32 words read and written
        src = cp.empty(n, cp.float32)
        dst = cp.empty_like(src)
        run["copy"] = lambda: cp.copyto(dst, src)
    if "torch" in providers:
        fn = _torch_runner(case, direction, make_array(x_h, case.layout, np.float32), p_h, sizes, training, dy_h,
                           dtype)
        if fn is not None:
            run["torch"] = fn
    return nbytes, run


def _torch_runner(case: Case, direction: str, x_h, p_h, sizes, training, dy_h, dtype):
    """The CPU benchmark's PyTorch call, on CUDA copies of the same arrays, in `dtype`."""
    try:
        import torch
    except ImportError:
        return None
    from .cpu import _torch_runner as cpu_runner

    return cpu_runner(case, direction, x_h, {k: v.astype(np.float32) for k, v in p_h.items()}, sizes, training,
                      dy_h, device="cuda", dtype=getattr(torch, dtype))


def _time(run: dict[str, Callable], repeat: int, warmup: int, batch: int) -> dict[str, float]:
    """Median milliseconds per call, per provider, interleaved; CUDA events around `batch` calls."""
    import cupy as cp

    names = list(run)
    for _ in range(warmup):
        for n in names:
            run[n]()
    cp.cuda.Device().synchronize()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeat):
        for n in names:
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(batch):
                run[n]()
            stop.record()
            stop.synchronize()
            times[n].append(cp.cuda.get_elapsed_time(start, stop) / batch)
    return {n: statistics.median(v) for n, v in times.items()}


def run_cases(cases: list[Case], *, directions=("forward", "backward"), dtype="float32", repeat=20, warmup=5,
              batch=10, providers=("normgen", "torch", "copy"),
              progress: Callable[[Measurement], None] | None = None) -> list[Measurement]:
    """Measure every case on the GPU."""
    require_gpu()
    results = []
    for case in cases:
        for direction in directions:
            if direction == "backward" and case.mode == "eval":
                continue
            nbytes, run = setup(case, direction, dtype, providers)
            ms = _time(run, repeat, warmup, batch)
            m = Measurement(case.name, case.spec, case.shape, case.layout, direction, False, case.series, nbytes,
                            ms, {k: nbytes / (v * 1e-3) / 1e9 for k, v in ms.items()})
            results.append(m)
            if progress:
                progress(m)
    return results


def plan_for(profile_name: str) -> None:
    """Plan the GPU's calls for a named profile instead of the GPU's own numbers (`normgen bench
    --target cuda --device h100`: an experiment, e.g. H100 rules on an H200)."""
    from ..plan.device import profile
    from ..runtime.cuda import cupy_device

    require_gpu()
    cupy_device().profile = profile(profile_name)


def require_gpu() -> None:
    """Raise when CuPy sees no GPU: say so rather than time the emulator."""
    from ..runtime.cuda import cupy_device

    if cupy_device() is None:
        from ..errors import NormgenError

        raise NormgenError("bench --target cuda needs a CUDA GPU visible to CuPy, and there is none "
                           "(the emulator checks correctness, not speed)")
