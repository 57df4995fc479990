"""Loops every generated CPU module shares: chunk moments, Chan's merge, column rows.

They are compiled once per process (and cached on disk by Numba) instead of once per
generated module. Generated modules import them; their source is part of the codegen
hash, so changing them changes every cache key.

Reductions may reassociate (so they vectorize); they compute in float64. Elementwise
code in the generated kernels does not reassociate (see templates/cpu/common.py.j2).
"""

from numba import float64, njit

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
