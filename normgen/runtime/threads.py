"""The CPU kernels' threads: how many, and the pool that runs ranges of blocks on them.

The generated kernels release the GIL, so blocks of units run in parallel on Python
threads. Which thread runs which block changes no result: each block writes its own
outputs and partial sums.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_threads: int | None = None


def threads() -> int:
    """Threads the CPU kernels use: NORMGEN_NUM_THREADS, else the CPUs this process may use."""
    global _threads
    if _threads is None:
        env = os.environ.get("NORMGEN_NUM_THREADS")
        _threads = max(1, int(env)) if env else max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                    else (os.cpu_count() or 1))
    return _threads


def set_num_threads(n: int) -> None:
    """Use n threads from now on (plans made afterwards split their work for n)."""
    global _threads, _pool
    _threads = max(1, int(n))
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


def split(fn, n: int, t: int, *args) -> None:
    """fn(*args, lo, hi) over [0, n) cut into one contiguous range for each of t threads."""
    global _pool
    t = min(t, n)
    if t <= 1:
        fn(*args, 0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="normgen")
    futures = [_pool.submit(fn, *args, i * n // t, (i + 1) * n // t) for i in range(1, t)]
    fn(*args, 0, n // t)
    for f in futures:
        f.result()
