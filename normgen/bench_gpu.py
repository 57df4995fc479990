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
from typing import Any

import numpy as np

from .bench import Case, Measurement, _params, reference_cases


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


def _device_array(cp, a: np.ndarray):
    """A CuPy copy of `a` with the same strides (channels_last stays channels_last)."""
    from .check import _on_gpu

    return _on_gpu(a) if a.ndim else cp.asarray(a)


def setup(case: Case, direction: str, dtype: str, providers: tuple[str, ...]) -> tuple[int, dict[str, Callable]]:
    """(bytes moved, provider -> callable doing the whole op once on the current stream)."""
    import cupy as cp

    from .layouts import make_array
    from .op import load

    rng = np.random.default_rng(0)
    host_dtype = "float32" if dtype == "bfloat16" else dtype
    x_h = make_array(rng.standard_normal(case.shape), case.layout, host_dtype)
    p_h = _params(case, rng, host_dtype)
    x = _device_array(cp, x_h)
    p = {k: cp.asarray(v) for k, v in p_h.items()}
    op = load(case.spec)
    if dtype == "bfloat16":  # normgen's bfloat16 arrays are BF16 wrappers of uint16 bits
        from .backends.cuda import BF16
        from .bf16 import to_bits

        x = BF16(_device_array(cp, make_array(to_bits(x_h), case.layout, np.uint16)))
        p = {k: BF16(cp.asarray(to_bits(v))) if k in op.spec.param_names else cp.asarray(v) for k, v in p_h.items()}
    sizes = dict(case.sizes)
    training = case.mode == "train"
    params = {k: p[k] for k in op.spec.param_names}
    extra = {k: p[k] for k in ("running_mean", "running_var", "mean_weight", "var_weight") if k in p}
    nbytes = (2 if direction == "forward" else 3) * x_h.size * np.dtype(dtype if dtype != "bfloat16" else "uint16").itemsize
    run: dict[str, Callable] = {}

    def ng_forward():
        return op.forward(x, **params, **extra, **sizes, training=training)

    if direction == "forward":
        run["normgen"] = ng_forward
    else:
        fwd = ng_forward()
        dy = _device_array(cp, make_array(rng.standard_normal(case.shape), case.layout, host_dtype))
        if dtype == "bfloat16":
            from .backends.cuda import BF16
            from .bf16 import to_bits

            dy = BF16(_device_array(cp, make_array(to_bits(dy.get()), case.layout, np.uint16)))
        run["normgen"] = lambda: op.backward(dy, fwd)
    if "copy" in providers:
        n = nbytes // 2 // 4  # float32 words read and written
        src = cp.empty(n, cp.float32)
        dst = cp.empty_like(src)
        run["copy"] = lambda: cp.copyto(dst, src)
    if "torch" in providers:
        fn = _torch_runner(case, direction, x_h, p_h, sizes, training, dtype)
        if fn is not None:
            run["torch"] = fn
    return nbytes, run


def _torch_runner(case: Case, direction: str, x_h, p_h, sizes, training, dtype):
    try:
        import torch
    except ImportError:
        return None
    from .bench import _torch_runner as cpu_runner
    from .layouts import make_array

    tdt = getattr(torch, dtype)
    # the CPU benchmark's calls, on CUDA copies of the same arrays
    backward = direction == "backward"
    rng = np.random.default_rng(1)
    dy = make_array(rng.standard_normal(case.shape), case.layout, np.float32) if backward else None
    runner = cpu_runner(case, direction, x_h.astype(np.float32), {k: v.astype(np.float32) for k, v in p_h.items()},
                        sizes, training, dy, device="cuda", dtype=tdt)
    return runner


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


def require_gpu() -> None:
    """Raise when CuPy sees no GPU: say so rather than time the emulator."""
    from .backends.cuda import cupy_device

    if cupy_device() is None:
        from .errors import NormgenError

        raise NormgenError("bench --target cuda needs a CUDA GPU visible to CuPy, and there is none "
                           "(the emulator checks correctness, not speed)")


def machine() -> dict[str, Any]:
    from .backends.cuda import device_name
    from .bench import machine as host_machine

    return {**host_machine(), "gpu": device_name()}
