"""Loops every generated CPU module shares: chunk moments, Chan's merge, column rows, and the
exponential of fused expressions.

They are compiled once per process (and cached on disk by Numba) instead of once per
generated module. Generated modules import them; their source is part of the codegen
hash, so changing them changes every cache key.

Reductions may reassociate (so they vectorize); they compute in float64. Elementwise
code in the generated kernels does not reassociate (see templates/cpu/common.py.j2).
"""

import numpy as np
from llvmlite import ir
from numba import float32, float64, int32, int64, njit, types
from numba.extending import intrinsic

REDUCE_FM = {"reassoc", "contract", "arcp", "nsz"}


@njit(fastmath=REDUCE_FM, error_model="numpy", cache=True, nogil=True)
def sum_f64(v):
    """Sum of v in float64."""
    s = 0.0
    for i in range(v.shape[0]):
        s += v[i]
    return s


@njit(fastmath=REDUCE_FM, error_model="numpy", cache=True, nogil=True)
def dev_sums(v, m):
    """Sum of (v - m) and of (v - m)^2, in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(v.shape[0]):
        d = v[i] - m
        s1 += d
        s2 += d * d
    return s1, s2


@njit(error_model="numpy", cache=True, nogil=True)
def chan(na, ma, m2a, nb, mb, m2b):
    """Chan et al.: merge (count, mean, M2) of two disjoint parts."""
    n = na + nb
    if nb == 0.0:
        return na, ma, m2a
    d = mb - ma
    w = nb / n
    return n, ma + d * w, m2a + m2b + d * d * na * w


@njit(error_model="numpy", cache=True, nogil=True)
def add_chunk(n, mean, m2, v):
    """Exact two-pass moments of the chunk v (held in cache), merged into (n, mean, M2).

    Pass 1 finds an approximate mean m1; pass 2 sums the deviations from m1, which
    corrects the mean and gives M2 without cancellation (Chan, Golub & LeVeque).
    """
    nb = float64(v.shape[0])
    m1 = sum_f64(v) / nb
    s1, s2 = dev_sums(v, m1)
    return chan(n, mean, m2, nb, m1 + s1 / nb, max(s2 - s1 * s1 / nb, 0.0))


@njit(fastmath=REDUCE_FM, error_model="numpy", cache=True, nogil=True)
def add_squares(n, mean, m2, v):
    """(n, 0, sum of squares) of an uncentered group, with the chunk v added: one pass.

    Uncentered statistics (rms, l2) need only the sum of squares; moments keep their
    (count, mean, M2) form with mean 0, which Chan's merge and the finalize (M2 + n mean^2)
    read the same way. A float32 square is exact in float64, so only the float64 sum rounds.
    """
    s = 0.0
    for i in range(v.shape[0]):
        d = float64(v[i])
        s += d * d
    return n + float64(v.shape[0]), 0.0 * mean, m2 + s


# ---- the columns strategy: one accumulator per element of a row tile -----------------
# Rows are added a few at a time, so each accumulator is loaded and stored once per
# group of rows. None of these reassociate: each element's sum has a fixed order.


@njit(error_model="numpy", cache=True, nogil=True)
def col_add(t, v):
    """t[e] += v[e]: one row of a column reduction."""
    for e in range(v.shape[0]):
        t[e] += v[e]


@njit(error_model="numpy", cache=True, nogil=True)
def col_add4(t, v0, v1, v2, v3):
    """t[e] += v0[e] + v1[e] + v2[e] + v3[e]: four rows at once."""
    for e in range(v0.shape[0]):
        t[e] += (float64(v0[e]) + float64(v1[e])) + (float64(v2[e]) + float64(v3[e]))


@njit(error_model="numpy", cache=True, nogil=True)
def col_dev(s1, s2, v, m):
    """s1[e] += v[e] - m[e]; s2[e] += (v[e] - m[e])^2, in float64."""
    for e in range(v.shape[0]):
        d = v[e] - m[e]
        s1[e] += d
        s2[e] += d * d


@njit(error_model="numpy", cache=True, nogil=True)
def col_dev2(s1, s2, v0, v1, m):
    """col_dev for two rows at once."""
    for e in range(v0.shape[0]):
        d0 = v0[e] - m[e]
        d1 = v1[e] - m[e]
        s1[e] += d0 + d1
        s2[e] += d0 * d0 + d1 * d1


@njit(error_model="numpy", cache=True, nogil=True)
def col_grad(p, q, x, dy, mu, rs):
    """p[e] += dy[e] * x_hat[e]; q[e] += dy[e] (x_hat = (x - mu) * rs, float64)."""
    for e in range(x.shape[0]):
        xh = (x[e] - mu[e]) * rs[e]
        p[e] += dy[e] * xh
        q[e] += dy[e]


@njit(error_model="numpy", cache=True, nogil=True)
def col_grad2(p, q, x0, dy0, x1, dy1, mu, rs):
    """col_grad for two rows at once."""
    for e in range(x0.shape[0]):
        m = mu[e]
        r = rs[e]
        p[e] += dy0[e] * ((x0[e] - m) * r) + dy1[e] * ((x1[e] - m) * r)
        q[e] += float64(dy0[e]) + float64(dy1[e])


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def affine_row(y, x, hi, sc, sh):
    """y[e] = (x[e] - hi[e]) * sc[e] + sh[e]: normalize one row with expanded constants."""
    for e in range(x.shape[0]):
        y[e] = (x[e] - hi[e]) * sc[e] + sh[e]


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def grad_row(dx, x, dy, hi, c0w, c1, c2):
    """dx[e] = dy[e] * c0w[e] + (x[e] - hi[e]) * c1[e] + c2[e]: the backward of one row."""
    for e in range(x.shape[0]):
        dx[e] = dy[e] * c0w[e] + (x[e] - hi[e]) * c1[e] + c2[e]


# ---- the exponential of fused expressions (sigmoid, silu, exp, gelu's pdf) -----------------
# Numba's np.exp is a call to the C library, one element at a time: a loop that evaluates
# silu(y) runs at a tenth of memory speed. These evaluate exp(v) = 2^k * p(r) with
# r = v - k ln2 (|r| <= ln2 / 2, Cody-Waite) in arithmetic that vectorizes, and build 2^k from
# its bits. 2^k is applied as 2^(k >> 1) * 2^(k - (k >> 1)), so large |v| overflow to inf and
# underflow through the subnormals to 0 as IEEE exp does; NaN stays NaN. float32: Cephes'
# expf polynomial (max relative error ~1e-7, that of the C library's); float64: the Taylor
# series to degree 12 (relative error < 1e-15).


@intrinsic
def _f32_from_bits(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _f64_from_bits(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def exp_f32(v):
    """exp(v) for a float32 v, in float32."""
    v = min(max(v, float32(-104.0)), float32(89.0))  # beyond: 0 and inf anyway
    kf = np.floor(v * float32(1.4426950408889634) + float32(0.5))
    r = (v - kf * float32(0.693359375)) - kf * float32(-2.12194440e-4)
    p = float32(1.9875691500e-4)
    p = p * r + float32(1.3981999507e-3)
    p = p * r + float32(8.3334519073e-3)
    p = p * r + float32(4.1665795894e-2)
    p = p * r + float32(1.6666665459e-1)
    p = p * r + float32(5.0000001201e-1)
    p = p * r * r + r + float32(1.0)
    k = int32(kf)
    k1 = k >> int32(1)
    return p * _f32_from_bits((k1 + int32(127)) << int32(23)) * _f32_from_bits((k - k1 + int32(127)) << int32(23))


@njit(fastmath={"contract"}, error_model="numpy", cache=True, nogil=True)
def exp_f64(v):
    """exp(v) for a float64 v, in float64."""
    v = min(max(v, -746.0), 710.0)  # beyond: 0 and inf anyway
    kf = np.floor(v * 1.4426950408889634 + 0.5)
    r = (v - kf * 0.6931471803691238) - kf * 1.9082149292705877e-10
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r * r + r + 1.0
    k = int64(kf)
    k1 = k >> 1
    return p * _f64_from_bits((k1 + 1023) << 52) * _f64_from_bits((k - k1 + 1023) << 52)
