"""CPU benchmarks: normgen against PyTorch, a NumPy composition and a copy of the same bytes.

Every case is timed in one run, providers interleaved (normgen, torch, numpy, copy, then
again), after warm-up; the median of the repeats is reported. Speed is given as effective
bandwidth (bytes of the tensors read and written once, over time), as a ratio to PyTorch,
and as a fraction of the same-run copy. Used by `normgen bench` (see bench/README.md).

`--dtype float16` / `bfloat16` time the half-type kernels against PyTorch's CPU kernels in
the same dtype, with parameters in that dtype too (a model after `.to(dtype)`); bfloat16
arrays are `BF16` bits, and NumPy (which has no bfloat16) is left out for both.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..layouts import make_array
from ..runtime.arrays import BF16, bits, to_bits


@dataclass(frozen=True)
class Case:
    """One benchmark: a bundled spec at a shape and layout, forward or backward."""

    name: str  # label, e.g. "group_norm NHWC"
    spec: str
    shape: tuple[int, ...]
    layout: str = "contiguous"
    sizes: tuple[tuple[str, Any], ...] = ()
    mode: str = "train"  # train | eval
    series: str = ""  # cases of one series are plotted against size


def reference_cases() -> list[Case]:
    """The reference shapes of issue 'CPU speed' (and a layer_norm row-length sweep)."""
    cases = [
        Case("layer_norm [8192,1024]", "layer_norm", (8192, 1024), sizes=(("normalized_shape", (1024,)),)),
        Case("rms_norm [8192,1024]", "rms_norm", (8192, 1024), sizes=(("normalized_shape", (1024,)),)),
        Case("group_norm [8,256,64,64] G=32", "group_norm", (8, 256, 64, 64), sizes=(("num_groups", 32),)),
        Case("group_norm NHWC", "group_norm", (8, 256, 64, 64), "channels_last", (("num_groups", 32),)),
        Case("instance_norm [8,256,64,64]", "instance_norm", (8, 256, 64, 64)),
        Case("batch_norm train [32,128,56,56]", "batch_norm", (32, 128, 56, 56)),
        Case("batch_norm train NHWC", "batch_norm", (32, 128, 56, 56), "channels_last"),
        Case("batch_norm eval [32,128,56,56]", "batch_norm", (32, 128, 56, 56), mode="eval"),
        Case("switchable_norm [8,64,32,32]", "switchable_norm", (8, 64, 32, 32)),
        Case("weight_norm [512,256,3,3]", "weight_norm", (512, 256, 3, 3)),
        Case("weight_standardization [512,256,3,3]", "weight_standardization", (512, 256, 3, 3)),
        Case("standardize [262144,32]", "standardize", (262144, 32)),
    ]
    total = 8 * 1024 * 1024
    for d in (256, 1024, 4096, 16384, 65536):
        cases.append(Case(f"layer_norm row {d}", "layer_norm", (total // d, d), sizes=(("normalized_shape", (d,)),),
                          series="layer_norm rows"))
    return cases


# ---- providers ------------------------------------------------------------------------


@dataclass
class Setup:
    """Arrays and callables of one case, for every provider."""

    bytes: int
    run: dict[str, Callable[[], Any]] = field(default_factory=dict)


def _params(case: Case, rng: np.random.Generator, dtype: str) -> dict[str, np.ndarray]:
    from ..plan.bind import bind
    from ..op.op import load

    spec = load(case.spec).spec
    b = bind(spec, case.shape, dict(case.sizes))
    out = {p: typed(rng.standard_normal(b.param_shape) * 0.1 + 1, "contiguous", dtype) for p in spec.param_names}
    if spec.running:
        out["running_mean"] = typed(np.zeros(b.running_shape), "contiguous", dtype)
        out["running_var"] = typed(np.ones(b.running_shape), "contiguous", dtype)
    if spec.is_mixture:  # (a mixture's logits are mixed on the host, in float64)
        out["mean_weight"] = np.ones(len(spec.kept), "float32" if dtype == "bfloat16" else dtype)
        out["var_weight"] = np.ones(len(spec.kept), "float32" if dtype == "bfloat16" else dtype)
    return out


def typed(values: np.ndarray, layout: str, dtype: str):
    """values in `dtype` and `layout` (bfloat16: a BF16 of the bits, rounded to nearest even)."""
    if dtype == "bfloat16":
        return BF16(make_array(to_bits(values), layout, np.uint16))
    return make_array(values, layout, dtype)


def _empty_like(a):
    return BF16(np.empty_like(a.bits)) if isinstance(a, BF16) else np.empty_like(a)


def setup(case: Case, direction: str, dtype: str, providers: tuple[str, ...], with_out: bool) -> Setup:
    """Build inputs and one callable per provider (each call does the whole op once)."""
    from ..op.op import load

    rng = np.random.default_rng(0)
    x = typed(rng.standard_normal(case.shape), case.layout, dtype)
    p = _params(case, rng, dtype)
    op = load(case.spec)
    sizes = dict(case.sizes)
    training = case.mode == "train"
    pnames = op.spec.param_names
    params = {k: p[k] for k in pnames}
    extra = {k: p[k] for k in ("running_mean", "running_var", "mean_weight", "var_weight") if k in p}
    out = _empty_like(x)
    nbytes = bits(x).nbytes

    def ng_forward():
        return op.forward(x, **params, **extra, **sizes, training=training, out=out if with_out else None)

    s = Setup(bytes=2 * nbytes if direction == "forward" else 3 * nbytes)
    if direction == "forward":
        s.run["normgen"] = ng_forward
    else:
        fwd = ng_forward()
        dy = typed(rng.standard_normal(case.shape), case.layout, dtype)
        dx = _empty_like(x)
        s.run["normgen"] = lambda: op.backward(dy, fwd, out=dx if with_out else None)
    if "copy" in providers:
        s.run["copy"] = _copy_runner(bits(x), s.bytes)
    if "torch" in providers:
        fn = _torch_runner(case, direction, x, p, sizes, training, dy if direction == "backward" else None)
        if fn is not None:
            s.run["torch"] = fn
    if "numpy" in providers and dtype in ("float32", "float64"):
        fn = _numpy_runner(case, direction, x, p, sizes, dy if direction == "backward" else None)
        if fn is not None:
            s.run["numpy"] = fn
    return s


_COPY_KERNEL = None


def _copy_runner(src: np.ndarray, nbytes: int) -> Callable[[], None]:
    """Copy nbytes / 2 bytes (read them, write them) on normgen's threads, in Numba."""
    global _COPY_KERNEL
    from numba import njit

    from ..runtime import threads

    if _COPY_KERNEL is None:
        @njit(nogil=True, cache=True)
        def copy_range(a, b, lo, hi):
            # views indexed from 0: Numba then knows the index is not negative and drops the
            # wraparound check that keeps `for i in range(lo, hi): b[i] = a[i]` from
            # vectorizing (that loop ran at a fifth of memcpy's speed)
            av, bv = a[lo:hi], b[lo:hi]
            for i in range(av.shape[0]):
                bv[i] = av[i]

        _COPY_KERNEL = copy_range
    n = nbytes // 2 // src.itemsize
    a = np.resize(src.reshape(-1), n)
    b = np.empty_like(a)
    return lambda: threads.split(_COPY_KERNEL, n, threads.threads(), a, b)


def _torch_runner(case: Case, direction: str, x, p, sizes, training, dy, device=None, dtype=None, compiled=False):
    """PyTorch's call for the case (on `device` in `dtype` when given; strides are kept;
    through torch.compile when `compiled`)."""
    try:
        import torch
    except ImportError:
        return None
    F = torch.nn.functional
    backward = direction == "backward"

    def tensor(a):
        t = torch.from_numpy(a.bits.view(np.int16)).view(torch.bfloat16) if isinstance(a, BF16) else \
            torch.from_numpy(a)
        return t.to(device=device, dtype=dtype) if device is not None else t

    tx = tensor(x).clone().requires_grad_(True) if backward else tensor(x)
    tp = {k: tensor(v).clone().requires_grad_(backward and k in ("weight", "bias", "g"))
          for k, v in p.items()}
    w, b = tp.get("weight"), tp.get("bias")
    spec = case.spec
    if isinstance(x, BF16):
        x = x.bits  # (only its ndim and shape below)
    if spec == "layer_norm":
        def f(t): return F.layer_norm(t, sizes["normalized_shape"], w, b)
    elif spec == "rms_norm":
        def f(t): return F.rms_norm(t, sizes["normalized_shape"], w)
    elif spec == "group_norm":
        def f(t): return F.group_norm(t, sizes["num_groups"], w, b)
    elif spec == "instance_norm":
        def f(t): return F.instance_norm(t, None, None, w, b)
    elif spec == "batch_norm":
        rm, rv = tp["running_mean"].clone(), tp["running_var"].clone()
        def f(t): return F.batch_norm(t, rm, rv, w, b, training=training)
    elif spec == "weight_norm":
        g = tp["g"].reshape(-1, *([1] * (x.ndim - 1)))
        def f(t): return torch._weight_norm(t, g, 0)
    elif spec == "weight_standardization":
        def f(t):
            m = t.mean(dim=tuple(range(1, t.ndim)), keepdim=True)
            v = t.var(dim=tuple(range(1, t.ndim)), keepdim=True, unbiased=False)
            return (t - m) / torch.sqrt(v + 1e-5)
    elif spec == "standardize":
        rm0 = torch.zeros(x.shape[1], dtype=tx.dtype, device=tx.device)
        rv0 = torch.ones(x.shape[1], dtype=tx.dtype, device=tx.device)
        def f(t): return F.batch_norm(t, rm0, rv0, None, None, training=True)
    else:
        return None
    if compiled:
        f = torch.compile(f, dynamic=False)
    if not backward:
        return lambda: f(tx)
    inputs = [tx] + [v for v in tp.values() if v.requires_grad]
    y = f(tx)
    tdy = tensor(dy)
    return lambda: torch.autograd.grad(y, inputs, tdy, retain_graph=True)


def _numpy_runner(case: Case, direction: str, x, p, sizes, dy):
    """A NumPy composition of the same math (the way it is written without a kernel library)."""
    from ..plan.bind import bind
    from ..op.op import load

    spec = load(case.spec).spec
    if spec.is_mixture or direction == "backward":
        return None
    b = bind(spec, case.shape, sizes)
    if case.spec == "group_norm":  # reshape (N, C, ...) -> (N, G, rest), as one writes it by hand
        n, c, g = x.shape[0], x.shape[1], sizes["num_groups"]
        bshape = (1, c) + (1,) * (x.ndim - 2)
        w, bb = p["weight"].reshape(bshape), p["bias"].reshape(bshape)

        def run_gn():
            xr = x.reshape(n, g, -1)
            y = (xr - xr.mean(axis=2, keepdims=True)) / np.sqrt(xr.var(axis=2, keepdims=True) + 1e-5)
            return y.reshape(x.shape) * w + bb
        return run_gn
    axes = tuple(sorted({d.phys for d in b.dims if not d.kept}))
    center = spec.center.value == "mean"
    scale = spec.scale.value
    wname = spec.affine.weight if spec.affine else None
    bname = spec.affine.bias if spec.affine else None
    pshape = [x.shape[i] if (spec.affine and any(d.phys == i and d.param_stride for d in b.dims)) else 1
              for i in range(x.ndim)]
    w = p[wname].reshape(pshape) if wname else None
    bb = p[bname].reshape(pshape) if bname else None

    def run():
        xc = x - x.mean(axis=axes, keepdims=True) if center else x
        if scale == "l2":
            y = xc / np.sqrt((xc * xc).sum(axis=axes, keepdims=True))
        else:
            y = xc / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + 1e-5)
        if w is not None:
            y = y * w
        if bb is not None:
            y = y + bb
        return y
    return run


# ---- timing ---------------------------------------------------------------------------


@dataclass
class Measurement:
    case: str
    spec: str
    shape: tuple[int, ...]
    layout: str
    direction: str
    with_out: bool
    series: str
    bytes: int
    ms: dict[str, float]  # provider -> median milliseconds
    gbps: dict[str, float]

    def ratio(self, a: str, b: str) -> float:
        return self.ms[b] / self.ms[a] if a in self.ms and b in self.ms else math.nan


def measure(s: Setup, repeat: int, warmup: int, min_time: float = 0.0) -> dict[str, float]:
    """Median seconds per provider; providers interleaved in every repeat."""
    names = list(s.run)
    for _ in range(warmup):
        for n in names:
            s.run[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeat):
        for n in names:
            t0 = time.perf_counter()
            s.run[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def run_cases(cases: list[Case], *, directions=("forward", "backward"), dtype="float32", threads=None,
              repeat=15, warmup=3, providers=("normgen", "torch", "numpy", "copy"), with_out=(False, True),
              progress: Callable[[Measurement], None] | None = None) -> list[Measurement]:
    from ..runtime import threads as cpu

    if threads:
        cpu.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(cpu.threads())
    except ImportError:
        pass
    results = []
    for case in cases:
        for direction in directions:
            if direction == "backward" and case.mode == "eval":
                continue
            for wo in with_out:
                s = setup(case, direction, dtype, providers, wo)
                if wo:  # the other providers do not change with out=: time normgen (and copy) only
                    s.run = {k: v for k, v in s.run.items() if k in ("normgen", "copy")}
                sec = measure(s, repeat, warmup)
                m = Measurement(case.name, case.spec, case.shape, case.layout, direction, wo, case.series, s.bytes,
                                {k: v * 1e3 for k, v in sec.items()}, {k: s.bytes / v / 1e9 for k, v in sec.items()})
                results.append(m)
                if progress:
                    progress(m)
    return results


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numba
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "numpy": np.__version__, "numba": numba.__version__, "cpus": os.cpu_count()}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    info["date"] = _dt.datetime.now().isoformat(timespec="seconds")
    return info


def save_json(results: list[Measurement], path: Path, extra: dict[str, Any]) -> None:
    data = {"machine": machine(), **extra, "results": [asdict(r) for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def table(results: list[Measurement]) -> str:
    """A readable table: ms, GB/s, ratio to torch and fraction of copy bandwidth."""
    lines = [f"{'case':<38} {'dir':<4} {'out':<3} {'normgen':>8} {'GB/s':>6} {'torch':>8} {'GB/s':>6} "
             f"{'numpy':>8} {'x torch':>7} {'of copy':>7}",
             f"{'':<38} {'':<4} {'':<3} {'ms':>8} {'':>6} {'ms':>8} {'':>6} {'ms':>8}"]
    for r in results:
        def ms(k):
            return f"{r.ms[k]:8.2f}" if k in r.ms else f"{'-':>8}"

        def gb(k):
            return f"{r.gbps[k]:6.1f}" if k in r.gbps else f"{'-':>6}"
        vs = r.ratio("normgen", "torch")
        frac = r.gbps["normgen"] / r.gbps["copy"] if "copy" in r.gbps else math.nan
        lines.append(f"{r.case:<38} {r.direction[:3]:<4} {'yes' if r.with_out else 'no':<3} {ms('normgen')} "
                     f"{gb('normgen')} {ms('torch')} {gb('torch')} {ms('numpy')} "
                     f"{('%6.2fx' % vs) if not math.isnan(vs) else '      -'} {frac:7.0%}")
    return "\n".join(lines)


def plot(results: list[Measurement], path: Path) -> None:
    """GB/s per provider: against row length for series, bars for the reference shapes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fwd = [r for r in results if not r.with_out]
    series = sorted({r.series for r in fwd if r.series})
    shapes = [r for r in fwd if not r.series]
    fig, axes = plt.subplots(1 + len(series), 1, figsize=(11, 4.5 * (1 + len(series))), squeeze=False)
    providers = ["normgen", "torch", "numpy", "copy"]
    colors = {"normgen": "#1f77b4", "torch": "#d62728", "numpy": "#7f7f7f", "copy": "#2ca02c"}
    for ax, name in zip(axes[1:, 0], series):
        for direction in ("forward", "backward"):
            rs = sorted([r for r in fwd if r.series == name and r.direction == direction], key=lambda r: r.shape[-1])
            for prov in providers:
                pts = [(r.shape[-1], r.gbps[prov]) for r in rs if prov in r.gbps]
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=colors[prov], linestyle="-" if direction == "forward" else "--",
                            label=f"{prov} {direction}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("row length (elements), 8M elements in all")
        ax.set_ylabel("GB/s")
        ax.set_title(f"{name}: effective bandwidth")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=4)
    ax = axes[0, 0]
    labels = [f"{r.case} {r.direction[:3]}" for r in shapes]
    width = 0.2
    for i, prov in enumerate(providers):
        vals = [r.gbps.get(prov, 0.0) for r in shapes]
        ax.bar(np.arange(len(shapes)) + (i - 1.5) * width, vals, width, label=prov, color=colors[prov])
    ax.set_xticks(np.arange(len(shapes)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("GB/s (x read once + y written once)")
    ax.set_title("reference shapes, float32")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
