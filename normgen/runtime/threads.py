"""The CPU kernels' threads: how many, and the pool that runs ranges of blocks on them.

The generated kernels release the GIL, so blocks of units run in parallel on Python
threads. Which thread runs which block changes no result: each block writes its own
outputs and partial sums.

A forked child (DataLoader workers, multiprocessing with fork, pre-forking servers) has
the parent's pool object but none of its threads: waiting on it would hang forever. So
the pool is dropped in every forked child (`os.register_at_fork`) and made anew on first
use there.
"""

from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from ..errors import NormgenError

_pool: ThreadPoolExecutor | None = None
_threads: int | None = None  # set by NORMGEN_NUM_THREADS or set_num_threads(): used as given
_budget: int | None = None  # otherwise: the CPUs this process may use, and OMP_NUM_THREADS


def _positive(name: str, text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise NormgenError(f"{name}={text!r} is not a number of threads", allowed="a positive integer, e.g. 4")
    return n


def threads() -> int:
    """Threads the CPU kernels use.

    NORMGEN_NUM_THREADS or `set_num_threads(n)` when given. Otherwise the process's thread
    budget: the CPUs it may use, at most OMP_NUM_THREADS (which torchrun and job schedulers
    set per worker), and, in a process that has imported PyTorch, at most
    `torch.get_num_threads()` — so normgen never runs more threads than PyTorch was told to.
    """
    global _threads, _budget
    if _threads is not None:
        return _threads
    if _budget is None:
        env = os.environ.get("NORMGEN_NUM_THREADS")
        if env:
            _threads = _positive("NORMGEN_NUM_THREADS", env)
            return _threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        omp = os.environ.get("OMP_NUM_THREADS")
        _budget = max(1, min(cpus, _positive("OMP_NUM_THREADS", omp.split(",")[0]) if omp else cpus))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return max(1, min(_budget, torch.get_num_threads()))
    return _budget


def set_num_threads(n: int) -> None:
    """Use n threads from now on (plans made afterwards split their work for n)."""
    global _threads, _pool
    _threads = _positive("set_num_threads", str(n))
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


def _forget_pool_after_fork() -> None:
    global _pool
    _pool = None  # its threads were not forked; a new pool starts on first use


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


#: pieces per thread that `split` cuts its range into, for threads to claim one by one
PIECES_PER_THREAD = 4


def split(fn, n: int, t: int, *args, claim: bool = True) -> None:
    """fn(*args, lo, hi) over [0, n) on t threads (the caller's among them).

    With `claim`, the range is cut into up to PIECES_PER_THREAD * t contiguous pieces, and
    each thread claims the next piece when it is done with its last. Fixed shares would make
    the call as slow as its slowest thread: right after a PyTorch op, PyTorch's OpenMP
    workers spin for milliseconds on the cores this process may use (and other processes
    share them), so one of our threads can get half a core. Claiming, the threads that run
    at full speed take the pieces the slowed one would have had. Each piece is one more
    call of fn (microseconds): callers pass claim=False for work of well under a millisecond,
    which then takes one share per thread.
    """
    global _pool
    t = min(t, n)
    if t <= 1:
        fn(*args, 0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="normgen")
    pieces = min(n, PIECES_PER_THREAD * t) if claim else t
    claim = itertools.count().__next__  # atomic under the GIL: each piece is claimed once
    futures = [_pool.submit(_claim_pieces, fn, args, n, pieces, claim) for _ in range(t - 1)]
    _claim_pieces(fn, args, n, pieces, claim)
    for f in futures:
        f.result()


def _claim_pieces(fn, args: tuple, n: int, pieces: int, claim) -> None:
    """Run the pieces this thread claims until none is left (piece i: [i n / pieces, (i + 1) n / pieces))."""
    while (i := claim()) < pieces:
        fn(*args, i * n // pieces, (i + 1) * n // pieces)
