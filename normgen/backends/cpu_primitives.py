"""Loops every generated CPU module shares: chunk moments, Chan's merge, column rows.

They are compiled once per process (and cached on disk by Numba) instead of once per
generated module. Generated modules import them; their source is part of the codegen
hash, so changing them changes every cache key.

Reductions may reassociate (so they vectorize); they compute in float64. Elementwise
code in the generated kernels does not reassociate (see templates/cpu/common.py.j2).
"""

from numba import float64, njit

REDUCE_FM = {"reassoc", "contract", "arcp", "nsz"}


@njit(fastmath=REDUCE_FM, cache=True, nogil=True)
def sum_f64(v):
    """Sum of v in float64."""
    s = 0.0
    for i in range(v.shape[0]):
        s += v[i]
    return s


@njit(fastmath=REDUCE_FM, cache=True, nogil=True)
def dev_sums(v, m):
    """Sum of (v - m) and of (v - m)^2, in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(v.shape[0]):
        d = v[i] - m
        s1 += d
        s2 += d * d
    return s1, s2


@njit(cache=True, nogil=True)
def chan(na, ma, m2a, nb, mb, m2b):
    """Chan et al.: merge (count, mean, M2) of two disjoint parts."""
    n = na + nb
    if nb == 0.0:
        return na, ma, m2a
    d = mb - ma
    w = nb / n
    return n, ma + d * w, m2a + m2b + d * d * na * w


@njit(cache=True, nogil=True)
def add_chunk(n, mean, m2, v):
    """Exact two-pass moments of the chunk v (held in cache), merged into (n, mean, M2).

    Pass 1 finds an approximate mean m1; pass 2 sums the deviations from m1, which
    corrects the mean and gives M2 without cancellation (Chan, Golub & LeVeque).
    """
    nb = float64(v.shape[0])
    m1 = sum_f64(v) / nb
    s1, s2 = dev_sums(v, m1)
    return chan(n, mean, m2, nb, m1 + s1 / nb, max(s2 - s1 * s1 / nb, 0.0))


@njit(cache=True, nogil=True)
def col_add(t, v):
    """t[j] += v[j]: one row of a column reduction."""
    for j in range(v.shape[0]):
        t[j] += v[j]


@njit(cache=True, nogil=True)
def col_dev(s1, s2, v, m):
    """s1[j] += v[j] - m[j]; s2[j] += (v[j] - m[j])^2, in float64."""
    for j in range(v.shape[0]):
        d = v[j] - m[j]
        s1[j] += d
        s2[j] += d * d
