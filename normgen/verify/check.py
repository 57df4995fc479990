"""Check generated kernels against the NumPy oracle, for any spec.

`run_case` runs one check: a case (a shape drawn from the spec, matrix.py), its input
laid out contiguously, channels_last, transposed or sliced, in float32 or float64, in
training or (where the spec has running statistics) evaluation mode; it compares the
forward (y, statistics, running statistics) and the backward (dx and every parameter
gradient) with the oracle. `check_spec` runs a list of checks, by default the spec's full
matrix (matrix.full; `normgen check` runs a representative part of it, session.py).
Every comparison is a max error over the arrays, relative to the oracle's largest
magnitude (at least 1), against a per-dtype tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..layouts import LAYOUTS, make_array, span
from ..op import Op
from ..plan.bind import bind
from ..runtime.arrays import BF16, elem_strides, from_bits, to_bits
from ..runtime.cuda import cupy_device
from . import oracle
from .matrix import Case, Check, cases, full

DTYPES = ("float32", "float64")
CUDA_DTYPES = ("float16", "bfloat16", "float32", "float64")
TOLERANCE = {"float32": 2e-4, "float64": 1e-9, "float16": 5e-3, "bfloat16": 3e-2}


@dataclass
class Result:
    spec: str
    case: str
    layout: str
    dtype: str
    mode: str
    plan: str
    errors: dict[str, float] = field(default_factory=dict)
    tol: float = 0.0
    error: str | None = None  # an exception instead of numbers

    @property
    def ok(self) -> bool:
        return self.error is None and all(e <= self.tol for e in self.errors.values())

    @property
    def worst(self) -> tuple[str, float]:
        if not self.errors:
            return ("-", math.nan)
        k = max(self.errors, key=lambda k: self.errors[k])
        return k, self.errors[k]


def _err(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    scale = max(1.0, float(np.nanmax(np.abs(b))))
    diff = np.abs(a - b)
    if np.any(np.isnan(a) != np.isnan(b)):
        return math.inf
    return float(np.nanmax(diff)) / scale if not np.all(np.isnan(diff)) else 0.0


def _typed(values: np.ndarray, layout: str, dtype: str):
    """values in `dtype` and `layout`: (the array for the op, its exact values as float64)."""
    if dtype == "bfloat16":
        bits = make_array(to_bits(values), layout, np.uint16)
        return BF16(bits), from_bits(bits).astype(np.float64)
    a = make_array(values, layout, dtype)
    return a, a.astype(np.float64)


def _values(a) -> np.ndarray:
    bits = getattr(a, "bits", None)
    if bits is not None:
        return from_bits(_host(bits))
    return _host(a)


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _on_gpu(a):
    """A CuPy copy of a NumPy array (or BF16 of one) with the same strides, gaps included."""
    import cupy

    if isinstance(a, BF16):
        return BF16(_on_gpu(a.bits))
    if a.ndim == 0 or a.size == 0:
        return cupy.asarray(a)
    extent = span(a.shape, tuple(s // a.itemsize for s in a.strides))  # strides are >= 0 here
    window = np.lib.stride_tricks.as_strided(a, shape=(extent,), strides=(a.itemsize,))
    return cupy.lib.stride_tricks.as_strided(cupy.asarray(window), shape=a.shape, strides=a.strides)


def run_case(op: Op, case: Case, layout: str, dtype: str, training: bool, seed: int = 0,
             target: str = "cpu") -> Result:
    """One forward + backward against the oracle.

    target="cuda" runs the CUDA kernels: on the GPU when CuPy has one, else on the emulator.
    """
    gpu = target == "cuda" and cupy_device() is not None
    dev = _on_gpu if gpu else (lambda a: a)
    spec = op.spec
    rng = np.random.default_rng(seed)
    sizes = dict(case.sizes)
    mode = "train" if training else "eval"
    res = Result(spec.name, f"{case.label} {case.shape}", layout, dtype, mode, "", tol=TOLERANCE[dtype])
    try:
        binding = bind(spec, case.shape, sizes)
        stat = "float64" if dtype == "float64" else "float32"
        x, x64 = _typed(rng.standard_normal(case.shape) * 2.0 + 3.0, layout, dtype)
        typed = {p: _typed(rng.standard_normal(binding.param_shape) * 0.5 + 1.0, "contiguous", dtype)
                 for p in (spec.affine.params if spec.affine else ())}
        params = {p: dev(t[0]) for p, t in typed.items()}
        params64 = {p: t[1] for p, t in typed.items()}
        kw: dict[str, Any] = {}
        if spec.running is not None:
            kw["running_mean"] = rng.standard_normal(binding.running_shape).astype(stat)
            kw["running_var"] = (rng.random(binding.running_shape) + 0.5).astype(stat)
        if spec.is_mixture:
            k = len(spec.kept)
            kw["mean_weight"] = rng.standard_normal(k)
            kw["var_weight"] = rng.standard_normal(k)
        okw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        eps = {"eps": float(np.finfo(np.float16).eps) if dtype == "float16" else 2.0 ** -7} \
            if spec.eps == "dtype" and dtype in ("float16", "bfloat16") else {}
        res.plan = _plan_label(op, x64, sizes, target, dtype)
        kw = {k: (dev(v) if isinstance(v, np.ndarray) and k.startswith("running") else v) for k, v in kw.items()}
        # extra inputs of a fused spec: in the same layout as x, of moderate size (gates, residuals)
        typed_extras = {e: _typed(rng.standard_normal(case.shape), layout, dtype) for e in spec.extras}
        extras = {e: dev(t[0]) for e, t in typed_extras.items()}
        if spec.extras:
            okw["extras"] = {e: t[1] for e, t in typed_extras.items()}
        fwd = op.forward(dev(x), training=training, target=target, **params, **kw, **extras, **sizes)
        ref = oracle.forward(spec, x64, params64, sizes=sizes, training=training, **okw, **eps)
        if ref.prologue is not None:
            res.errors["prologue"] = _err(_values(fwd.prologue), ref.prologue)
        if spec.fuse is not None and spec.fuse.quantize is not None:
            _check_quantized(res, fwd, ref)
            return res
        res.errors["y"] = _err(_values(fwd.y), ref.y)
        if fwd.mean is not None:
            res.errors["mean"] = _err(_values(fwd.mean), ref.mean)
        res.errors["rstd"] = _err(_values(fwd.rstd), ref.rstd)
        if training and ref.running_mean is not None:
            res.errors["running_mean"] = _err(_host(kw["running_mean"]), ref.running_mean)
            res.errors["running_var"] = _err(_host(kw["running_var"]), ref.running_var)
        dy, dy64 = _typed(rng.standard_normal(case.shape), layout, dtype)
        dh = dh64 = None
        if ref.prologue is not None:  # the kept prologue feeds the next layer: it has a gradient too
            dh, dh64 = _typed(rng.standard_normal(case.shape), layout, dtype)
        grads = op.backward(dev(dy), fwd, dprologue=dev(dh) if dh is not None else None)
        oref = oracle.backward(spec, dy64, x64, params64, sizes=sizes, training=training, dprologue=dh64, **okw,
                               **eps)
        res.errors["dx"] = _err(_values(grads.dx), oref["x"])
        for name in list(params) + (["mean_weight", "var_weight"] if spec.is_mixture else []) + list(spec.extras):
            res.errors["d" + name] = _err(_values(grads[name]), oref[name])
    except Exception as e:  # noqa: BLE001 -- a crash is a failed check, reported with the case
        res.error = f"{type(e).__name__}: {e}"
    return res


def _check_quantized(res: Result, fwd: Any, ref: Any) -> None:
    """The scales within tolerance; q within one step of the oracle's (a float32 output can fall
    on the other side of a rounding tie): errors["q"] counts the steps beyond that one."""
    scale, want = _values(fwd.scale).astype(np.float64), ref.scale
    # the scales are float32 by contract (for any input dtype): one float32 rounding is exact
    rel = float(np.max(np.abs(scale - want), initial=0.0)) / max(float(np.max(np.abs(want), initial=0.0)), 1e-300)
    res.errors["scale"] = max(0.0, rel - 2.0 ** -23) if scale.shape == want.shape else math.inf
    steps = np.abs(_values(fwd.y).astype(np.float64) - ref.q)
    res.errors["q"] = float(max(0.0, steps.max(initial=0.0) - 1.0))


def _plan_label(op: Op, x64: np.ndarray, sizes: dict[str, Any], target: str, dtype: str) -> str:
    """The strategy and parts of the check's forward, as planned for the device it runs on (on a
    GPU its own profile; plan_for alone would plan for the emulator's)."""
    gpu = cupy_device() if target == "cuda" else None
    plan = op.plan(x64.shape, strides=elem_strides(x64), dtype=dtype, target=target,
                   device=gpu.profile if gpu is not None else None, **sizes)
    return f"{plan.kernel.strategy.value}/{'fused' if plan.launch.fused else f'{plan.launch.n_parts} parts'}"


def check_spec(op: Op, *, layouts: tuple[str, ...] = LAYOUTS, dtypes: tuple[str, ...] = DTYPES,
               progress: Callable[[Result], None] | None = None, target: str = "cpu",
               checks: list[Check] | None = None) -> list[Result]:
    """The given checks of one spec, else its full matrix: every case x layout x dtype x mode."""
    results = []
    for check in checks if checks is not None else full(op.spec, layouts, dtypes):
        r = run_case(op, check.case, check.layout, check.dtype, check.training, check.seed, target)
        results.append(r)
        if progress:
            progress(r)
    return results


__all__ = ["CUDA_DTYPES", "DTYPES", "TOLERANCE", "Case", "Check", "Result", "cases", "check_spec", "run_case"]
