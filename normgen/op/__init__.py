"""Ops: a spec made callable, with a forward and a backward on NumPy or CuPy arrays.

    op.py           Op: argument checks, plans, kernels, statistics, in that order
    stats.py        host-side arithmetic on statistics (merges, finalize, running updates)
    distributed.py  statistics across processes (torch.distributed, mpi4py)
"""

from .op import Forward, Grads, Op, load

__all__ = ["Op", "Forward", "Grads", "load"]
