"""Host-side arithmetic on statistics (arrays the size of the kept axes, never of x).

The kernels return raw moments (count, mean, M2) per group; this module turns moments into
what normalization uses (`Normalizer`; `kstats`: mean split into hi + lo for float32, and
rstd, as the kernels read them), updates running statistics with PyTorch's formulas,
merges Switchable-Norm components, and computes the per-group coefficients of the
backward pass. Everything here is float64 and elementwise or small reductions over
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CallError
from ..spec import Center, Scale, Spec


@dataclass
class Normalizer:
    """What normalization needs per group: mean (float64), variance-like term, rstd."""

    mean: np.ndarray  # the subtracted mean (0 without centering), float64, stats shape
    var: np.ndarray  # M2/n (std, rms: mean square), or the sum of squares (l2)
    rstd: np.ndarray  # float64


def normalizer(spec: Spec, n: np.ndarray, mean: np.ndarray, m2: np.ndarray, eps: float) -> Normalizer:
    """From moments to (mean, var, rstd), exactly as the kernels' _finalize does."""
    if spec.center is Center.MEAN:
        mu, ss = mean, m2
    else:
        mu, ss = np.zeros_like(mean), m2 + n * mean * mean
    with np.errstate(divide="ignore", invalid="ignore"):
        if spec.scale is Scale.L2:
            var = ss
        else:
            var = ss / n
        rstd = np.ones_like(var) if spec.scale is Scale.NONE else 1.0 / np.sqrt(var + eps)
    return Normalizer(mu, var, rstd)


def split_mean(mean: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """mean = hi + lo with hi, lo in `dtype`: float32 keeps the digits x - mean needs."""
    hi = mean.astype(dtype)
    lo = (mean - hi.astype(np.float64)).astype(dtype)
    return hi, lo


def kstats(norm: Normalizer, dtype: np.dtype) -> np.ndarray:
    """[groups, 3]: (mean hi, mean lo, rstd) in the statistics dtype, as the kernels read them."""
    hi, lo = split_mean(np.asarray(norm.mean, np.float64).reshape(-1), dtype)
    return np.stack([hi, lo, np.asarray(norm.rstd, np.float64).reshape(-1).astype(dtype)], axis=1)


def moments_normalizer(spec: Spec, moments: np.ndarray, eps: float, shape: tuple[int, ...]) -> Normalizer:
    """`normalizer` of moments [groups, 3] (count, mean, M2), shaped like the statistics."""
    m = np.asarray(moments).reshape(shape + (3,))
    return normalizer(spec, m[..., 0], m[..., 1], m[..., 2], eps)


def component_moments(mean: np.ndarray, var: np.ndarray, keep: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) variance of coarser groups, merged from equal-size finer groups.

    `keep` lists the statistics dims the coarser group keeps; the others are merged with
    the law of total variance: var = mean(var_i) + mean((mean_i - mean)^2) (stable).
    Results keep the reduced dims as size 1, for broadcasting.
    """
    axes = tuple(d for d in range(mean.ndim) if d not in keep)
    if not axes:
        return mean, var
    m = mean.mean(axis=axes, keepdims=True)
    v = var.mean(axis=axes, keepdims=True) + ((mean - m) ** 2).mean(axis=axes, keepdims=True)
    return m, v


def softmax(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


def running_update(old: np.ndarray, batch: np.ndarray, factor: float) -> np.ndarray:
    """PyTorch: running <- (1 - momentum) * running + momentum * batch."""
    return (1.0 - factor) * old.astype(np.float64) + factor * batch


def average_to(stat: np.ndarray, keep: tuple[int, ...], order: tuple[int, ...]) -> np.ndarray:
    """Average a statistic over the dims not in `keep`, then order the rest as `order`.

    InstanceNorm keeps statistics per (N, C) but running statistics per C: the batch
    value PyTorch uses is the mean over N.
    """
    axes = tuple(d for d in range(stat.ndim) if d not in keep)
    out = stat.mean(axis=axes) if axes else stat
    remaining = [d for d in range(stat.ndim) if d in keep]
    return out.transpose([remaining.index(d) for d in order])


def backward_coefficients(spec: Spec, n: float, rstd: np.ndarray, a: np.ndarray, b: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx = c0 * g + c1 * (x - mean) + c2 for one kept set (g = dy * weight).

    a = sum(g), b = sum(g * x_hat) over each group of n elements (DESIGN.md, Backward).
    """
    c0 = rstd
    c2 = -rstd * a / n if spec.center is Center.MEAN else np.zeros_like(rstd)
    if spec.scale is Scale.NONE:
        c1 = np.zeros_like(rstd)
    else:
        per = 1.0 if spec.scale is Scale.L2 else 1.0 / n
        c1 = -rstd * rstd * b * per
    return c0, c1, c2


def checks_norms(spec: Spec, eps: float) -> bool:
    """With eps = 0 a group can have nothing to divide by: see check_norms."""
    return eps == 0 and spec.scale is not Scale.NONE


def check_norms(spec: Spec, kstats, call) -> None:
    """With eps = 0, a group without spread (std), of zeros (rms) or a weight row of zeros
    (l2, weight norm) has no x̂: an error, not a silent NaN. (NaN inputs stay NaN in their
    group: their rstd is NaN, not infinite.)"""
    if not checks_norms(spec, call.eps):
        return
    bad = np.isinf(call.backend.to_host(kstats)[:, 2])
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad.reshape(call.binding.stats_shape))[0])
        what = {Scale.STD: "zero variance, so (x - mean) / std", Scale.RMS: "zero mean square, so x / rms",
                Scale.L2: "zero norm, so v / ||v||"}[spec.scale]
        raise CallError(f"{spec.name}: the group at kept index {where} has {what} is undefined (eps = 0)")
