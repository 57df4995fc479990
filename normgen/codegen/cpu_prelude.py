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
from numba import float32, float64, int32, int64, njit, types, uint16
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
def _bits_of_f32(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


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


# ---- half types: float16 and bfloat16 as uint16 bits ---------------------------------------
# Numba has no float16 or bfloat16 arithmetic, so the kernels take these arrays as uint16
# views of their bits. A chunk is converted into float32 scratch (`ld_*`), the float32 code
# runs on the scratch exactly as it runs on float32 data, and outputs computed in float32
# scratch are rounded back to nearest even (`st_*`). The bit conversions are select-only
# integer and float arithmetic, so the loops vectorize; none depends on the rounding of
# denormals (flush-to-zero or not), and NaN stays NaN, inf stays inf. float16 uses the CPU's
# conversion instructions where it has them (HARDWARE_HALF), with the same results.


@njit(error_model="numpy", cache=True, nogil=True)
def bf16_to_f32(h):
    """The float32 value of bfloat16 bits h (exact: the bits are float32's upper half)."""
    return _f32_from_bits(int32(h) << int32(16))


@njit(error_model="numpy", cache=True, nogil=True)
def f32_to_bf16(v):
    """bfloat16 bits of float32 v, rounded to nearest even; NaN gives a quiet NaN of v's sign."""
    u = _bits_of_f32(v)
    rounded = (u + int32(0x7FFF) + ((u >> int32(16)) & int32(1))) >> int32(16)
    quiet = (u >> int32(16)) | int32(0x0040)
    return uint16((quiet if np.isnan(v) else rounded) & int32(0xFFFF))


@njit(error_model="numpy", cache=True, nogil=True)
def f16_to_f32_bits(h):
    """The float32 value of float16 bits h (exact, subnormals included), in integer arithmetic.

    Normal numbers move their exponent and mantissa into place and rebias the exponent
    (127 - 15); subnormals (exponent 0) are mantissa * 2^-24, exact in float32; the
    exponent 31 (inf, NaN) becomes float32's 255 with the mantissa kept.
    """
    a = int32(h) & int32(0x7FFF)
    e = a & int32(0x7C00)
    sign = (int32(h) & int32(0x8000)) << int32(16)
    normal = (a << int32(13)) + int32((127 - 15) << 23)
    special = (a << int32(13)) | int32(0x7F800000)
    sub = _bits_of_f32(float32(a) * float32(5.960464477539063e-08))  # a * 2^-24
    m = sub if e == int32(0) else (special if e == int32(0x7C00) else normal)
    return _f32_from_bits(m | sign)


@njit(error_model="numpy", cache=True, nogil=True)
def f32_to_f16_bits(v):
    """float16 bits of float32 v, rounded to nearest even: overflow to inf, subnormals, NaN kept NaN.

    Magnitudes below 2^-14 (float16's subnormals) are rounded by the float32 adder: adding
    0.5 (2^-1) puts the float16 subnormal's units in the low mantissa bits of the sum, rounded
    to nearest even as float32 addition rounds. Normal magnitudes round with integer
    arithmetic on the bits: + 0xFFF + the lowest kept bit, then shift out 13 bits.
    """
    u = _bits_of_f32(v)
    sign = (u >> int32(16)) & int32(0x8000)
    a = u & int32(0x7FFFFFFF)
    big = int32(0x7E00) if a > int32(0x7F800000) else int32(0x7C00)  # NaN, or inf/overflow
    magic = float32(0.5)
    sub = _bits_of_f32(_f32_from_bits(a) + magic) - _bits_of_f32(magic)
    normal = (a + int32(-((127 - 15) << 23) + 0xFFF) + ((a >> int32(13)) & int32(1))) >> int32(13)
    o = big if a >= int32((127 + 16) << 23) else (sub if a < int32(113 << 23) else normal)
    return uint16(o | sign)


@intrinsic
def _f16_to_f32_hw(typingctx, h):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _f32_to_f16_hw(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def _hardware_half() -> bool:
    """Whether LLVM turns half <-> float conversions into instructions for the CPU Numba compiles
    for: x86 with F16C (since 2012), and every 64-bit ARM. Elsewhere (or when Numba compiles
    for a generic CPU) LLVM would call a runtime library function that Numba does not link."""
    import platform

    import llvmlite.binding as ll
    from numba.core import config

    if (config.CPU_NAME or "host") != "host":
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    return bool(ll.get_host_cpu_features().get("f16c", False))


#: float16 conversions: the CPU's instructions (IEEE: exact, round to nearest even, as the
#: bit versions above, which tests hold to each other), about 4x faster than the bit arithmetic
HARDWARE_HALF = _hardware_half()
f16_to_f32 = _f16_to_f32_hw if HARDWARE_HALF else f16_to_f32_bits
f32_to_f16 = _f32_to_f16_hw if HARDWARE_HALF else f32_to_f16_bits


@njit(error_model="numpy", cache=True, nogil=True)
def ld_bf16(src, dst):
    """dst[:n] = the float32 values of the bfloat16 bits src (n = len(src)); returns dst[:n]."""
    n = src.shape[0]
    for i in range(n):
        dst[i] = bf16_to_f32(src[i])
    return dst[:n]


@njit(error_model="numpy", cache=True, nogil=True)
def ld_f16(src, dst):
    """dst[:n] = the float32 values of the float16 bits src (n = len(src)); returns dst[:n]."""
    n = src.shape[0]
    for i in range(n):
        dst[i] = f16_to_f32(src[i])
    return dst[:n]


@njit(error_model="numpy", cache=True, nogil=True)
def st_bf16(src, dst):
    """dst = bfloat16 bits of the float32 values src, rounded to nearest even."""
    for i in range(src.shape[0]):
        dst[i] = f32_to_bf16(src[i])


@njit(error_model="numpy", cache=True, nogil=True)
def st_f16(src, dst):
    """dst = float16 bits of the float32 values src, rounded to nearest even."""
    for i in range(src.shape[0]):
        dst[i] = f32_to_f16(src[i])


# float16 and bfloat16 kernels are one code: which of the two a call's bits hold is a number in
# the geometry vector (`bf16`), tested once per chunk, so the two dtypes share one compiled module.


@njit(error_model="numpy", cache=True, nogil=True)
def ld_half(src, dst, bf16):
    """ld_bf16 if bf16 else ld_f16."""
    if bf16:
        return ld_bf16(src, dst)
    return ld_f16(src, dst)


@njit(error_model="numpy", cache=True, nogil=True)
def st_half(src, dst, bf16):
    """st_bf16 if bf16 else st_f16."""
    if bf16:
        st_bf16(src, dst)
    else:
        st_f16(src, dst)


@njit(error_model="numpy", cache=True, nogil=True)
def half_to_f32(h, bf16):
    """bf16_to_f32 if bf16 else f16_to_f32: one element."""
    return bf16_to_f32(h) if bf16 else f16_to_f32(h)


@njit(error_model="numpy", cache=True, nogil=True)
def round_half(v, bf16):
    """float32 v rounded to the half type (nearest even) and back: what PyTorch's elementwise
    op in that dtype stores (a fused prologue's h = x + residual)."""
    if bf16:
        return bf16_to_f32(f32_to_bf16(v))
    return f16_to_f32(f32_to_f16(v))
