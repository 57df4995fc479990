"""CUDA benchmarks: normgen's CUDA kernels against PyTorch eager, torch.compile and a device
copy of the same bytes, on a GPU.

Every timed run is one call, with CUDA events around it, after L2 has been flushed (a
buffer of twice L2 is written), so no provider reads its input from the previous run's
cache; providers are interleaved, the median of the repeats is reported. Effective
bandwidth counts x read once and y written once (forward), x and dy read and dx written
(backward); "copy" moves the same number of bytes with a device-to-device copy, the
ceiling a memory-bound kernel can reach. torch.compile compiles each case on its first
call: once `compile_budget_s` of compiling is spent, later cases are measured without it.

`normgen bench --target cuda` runs this; `bench/gpu.sh` runs it with the CUDA tests.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cpu import Case, Measurement, _params, reference_cases
from .cpu import _torch_runner as _cpu_torch_runner

#: the providers `normgen bench --target cuda` times, in the order of the table
PROVIDERS = ("normgen", "torch", "compile", "copy")


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

    from ..layouts import make_array
    from ..op.op import load
    from ..verify.check import _on_gpu, _typed

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
    for name, compiled in (("torch", False), ("compile", True)):
        if name in providers:
            fn = _torch_runner(case, direction, make_array(x_h, case.layout, np.float32), p_h, sizes, training, dy_h,
                               dtype, compiled)
            if fn is not None:
                run[name] = fn
    if "copy" in providers:
        n = nbytes // 2 // 4  # float32 words read and written
        src = cp.empty(n, cp.float32)
        dst = cp.empty_like(src)
        run["copy"] = lambda: cp.copyto(dst, src)
    return nbytes, run


def _torch_runner(case: Case, direction: str, x_h, p_h, sizes, training, dy_h, dtype, compiled: bool):
    """The CPU benchmark's PyTorch call, on CUDA copies of the same arrays, in `dtype`
    (through torch.compile when `compiled`)."""
    try:
        import torch
    except ImportError:
        return None
    return _cpu_torch_runner(case, direction, x_h, {k: v.astype(np.float32) for k, v in p_h.items()}, sizes,
                             training, dy_h, device="cuda", dtype=getattr(torch, dtype), compiled=compiled)


class L2Flush:
    """Writes a buffer of twice the GPU's L2 before each timed run."""

    def __init__(self):
        import cupy as cp

        l2 = int(cp.cuda.Device().attributes.get("L2CacheSize", 64 << 20))
        self.buf = cp.empty(2 * l2, cp.uint8)

    def __call__(self) -> None:
        self.buf.fill(1)


def _time(run: dict[str, Callable], repeat: int, warmup: int, flush: L2Flush) -> dict[str, float]:
    """Median milliseconds per call, per provider, interleaved; L2 flushed before every timed call."""
    import cupy as cp

    names = list(run)
    for _ in range(warmup):
        for n in names:
            run[n]()
    cp.cuda.Device().synchronize()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeat):
        for n in names:
            flush()
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            run[n]()
            stop.record()
            stop.synchronize()
            times[n].append(cp.cuda.get_elapsed_time(start, stop))
    return {n: statistics.median(v) for n, v in times.items()}


def run_cases(cases: list[Case], *, directions=("forward", "backward"), dtype="float32", repeat=20, warmup=3,
              providers: tuple[str, ...] = PROVIDERS, compile_budget_s: float = 90.0,
              progress: Callable[[Measurement], None] | None = None) -> list[Measurement]:
    """Measure every case on the GPU."""
    require_gpu()
    flush = L2Flush()
    results = []
    compiling = 0.0
    for case in cases:
        for direction in directions:
            if direction == "backward" and case.mode == "eval":
                continue
            use = tuple(p for p in providers if p != "compile" or compiling < compile_budget_s)
            t0 = time.perf_counter()
            nbytes, run = setup(case, direction, dtype, use)
            if "compile" in run:  # compiled in setup (backward: its forward) and on the first call
                try:
                    run["compile"]()
                except Exception as e:  # noqa: BLE001 (whatever Inductor raises): measured without it, and said so
                    print(f"  torch.compile failed for {case.name} {direction}: {type(e).__name__}: {e}")
                    del run["compile"]
                compiling += time.perf_counter() - t0
            ms = _time(run, repeat, warmup, flush)
            m = Measurement(case.name, case.spec, case.shape, case.layout, direction, False, case.series, nbytes,
                            ms, {k: nbytes / (v * 1e-3) / 1e9 for k, v in ms.items()})
            results.append(m)
            if progress:
                progress(m)
    return results


def table(results: list[Measurement]) -> str:
    """ms and GB/s per provider, normgen's speed-up over eager and compiled PyTorch, and its
    fraction of the copy's bandwidth."""
    head = f"{'case':<38} {'dir':<4}" + "".join(f" {p:>9} {'GB/s':>6}" for p in PROVIDERS)
    lines = [head + f" {'x torch':>7} {'x compile':>9} {'of copy':>7}"]
    for r in results:
        cells = "".join(f" {r.ms[p]:9.3f} {r.gbps[p]:6.0f}" if p in r.ms else f" {'-':>9} {'-':>6}" for p in PROVIDERS)
        vs, vc = (_fmt(r.ratio("normgen", p), "{:.2f}x") for p in ("torch", "compile"))
        frac = _fmt(r.gbps["normgen"] / r.gbps["copy"] if "copy" in r.gbps else float("nan"), "{:.0%}")
        lines.append(f"{r.case:<38} {r.direction[:3]:<4}{cells} {vs:>7} {vc:>9} {frac:>7}")
    return "\n".join(lines)


def _fmt(v: float, form: str) -> str:
    return "-" if math.isnan(v) else form.format(v)


def plot(results: list[Measurement], path: Path, title: str) -> None:
    """GB/s per provider and case, as an SVG bar chart (no plotting library needed)."""
    colors = {"normgen": "#1f77b4", "torch": "#d62728", "compile": "#ff7f0e", "copy": "#2ca02c"}
    top = max([v for r in results for v in r.gbps.values()] + [1.0])
    bar, gap, left = 5, 8, 260
    row = bar * len(PROVIDERS) + gap
    width = left + 40 + 520
    svg = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{60 + row * len(results) + 30}" '
            'font-family="sans-serif" font-size="10">'),
           f'<text x="10" y="20" font-size="13">{title}: effective GB/s (x read once, outputs written once)</text>']
    for i, p in enumerate(PROVIDERS):
        svg.append(f'<rect x="{left + 120 * i}" y="30" width="10" height="10" fill="{colors[p]}"/>'
                   f'<text x="{left + 120 * i + 14}" y="39">{p}</text>')
    for j, r in enumerate(results):
        y0 = 55 + row * j
        svg.append(f'<text x="{left - 6}" y="{y0 + row / 2}" text-anchor="end">{r.case} {r.direction[:3]}</text>')
        for i, p in enumerate(PROVIDERS):
            if p in r.gbps:
                w = 520 * r.gbps[p] / top
                svg.append(f'<rect x="{left}" y="{y0 + bar * i}" width="{w:.1f}" height="{bar - 1}" fill="{colors[p]}">'
                           f'<title>{p}: {r.gbps[p]:.0f} GB/s, {r.ms[p]:.3f} ms</title></rect>')
    svg.append(f'<text x="{left}" y="{55 + row * len(results) + 15}">0</text>'
               f'<text x="{left + 520}" y="{55 + row * len(results) + 15}" text-anchor="end">{top:.0f} GB/s</text>')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(svg + ["</svg>"]) + "\n")


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
