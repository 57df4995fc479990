"""Moments of parts of a group, merged on the host: the CPU's phased plans, and ranks.

A part's moments are (count, mean, M2): its size, its mean and the sum of squared
deviations from that mean. Chan et al.'s formula merges two parts without cancellation.
"""

from __future__ import annotations

import numpy as np


def merge_parts(moments: np.ndarray) -> np.ndarray:
    """[groups, parts, 3] (count, mean, M2) -> [groups, 3], the parts merged in order (Chan).

    Parts with count 0 (a rank without elements) change nothing.
    """
    n, mean, m2 = moments[:, 0, 0].copy(), moments[:, 0, 1].copy(), moments[:, 0, 2].copy()
    for p in range(1, moments.shape[1]):
        nb, mb, m2b = moments[:, p, 0], moments[:, p, 1], moments[:, p, 2]
        tot = n + nb
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(tot > 0, nb / np.where(tot > 0, tot, 1), 0.0)
        d = mb - mean
        mean = mean + d * w
        m2 = m2 + m2b + d * d * n * w
        n = tot
    return np.stack([n, mean, m2], axis=1)
