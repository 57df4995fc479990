"""Statistics across processes: the reduced axes of x split over the ranks of a group.

When the elements that share statistics live on several processes (batch norm with the
batch split across data-parallel ranks; layer_norm / rms_norm with the hidden dimension
split across tensor-parallel ranks; group_norm with the image split spatially), each rank
runs the kernels on its own shard, and only statistics travel:

- forward: each rank computes its partial moments (count, mean, M2) per group with the
  same kernels as the phased plan; the ranks exchange them (all-gather, g x 3 float64 per
  rank), and every rank merges them with Chan's formula *in rank order*, so all ranks hold
  bit-identical statistics (and identical running statistics), whatever their batch sizes;
  a rank with no samples contributes count 0. Then each rank applies the normalization
  to its shard.
- backward: the two per-group sums (sum g, sum g x_hat) are exchanged the same way (g x 2
  float64 per rank) and added in rank order; dx is applied locally. Parameter gradients
  stay local (sum them across ranks, as DDP does, when the parameters are replicated).

The kept axes must be the same on every rank (the same channels, the same rows); the
collectives check that the ranks agree on the number of groups. Two engines:
`torch.distributed` process groups (gloo on CPU, NCCL on GPU) and mpi4py communicators.

    >>> y = normgen.ops.batch_norm(x_shard, rm, rv, w, b, training=True, process_group=pg)
    >>> fwd = normgen.load("layer_norm").forward(x_cols, w_cols, b_cols, normalized_shape=(h,), comm=MPI.COMM_WORLD)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CallError
from ..runtime.moments import merge_parts


class Group:
    """The ranks that share statistics, behind two collectives on small float64 arrays.

    `gather(a)` returns every rank's `a` stacked in rank order ([world, *a.shape]); the
    arrays must have the same shape on every rank. `bytes_sent` counts this rank's
    payload (what a benchmark compares with other algorithms).
    """

    world: int
    rank: int

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.calls = 0

    def gather(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def gather_checked(self, a: np.ndarray, what: str, name: str) -> np.ndarray:
        """gather, after checking that every rank sends the same number of groups."""
        sizes = self._gather(np.array([a.shape[0]], np.float64)).reshape(-1)
        if np.any(sizes != sizes[0]):
            raise CallError(f"{name}: the ranks of the process group have different numbers of statistics groups "
                            f"({', '.join(str(int(s)) for s in sizes)} for ranks 0..{self.world - 1}); with "
                            f"process_group/comm, only the reduced axes may be split across ranks, the kept axes "
                            f"must be the same everywhere ({what})")
        return self._gather(np.ascontiguousarray(a, np.float64))

    def _gather(self, a: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.bytes_sent += a.nbytes
        return self.gather(a)


class TorchGroup(Group):
    """A torch.distributed process group (None: the default group). NCCL needs CUDA tensors:
    the statistics travel through the current CUDA device then."""

    def __init__(self, process_group: Any = None) -> None:
        super().__init__()
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise CallError("process_group: torch.distributed is not initialized (call "
                            "torch.distributed.init_process_group first)")
        self.torch, self.dist, self.pg = torch, dist, process_group
        self.world = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        backend = str(dist.get_backend(process_group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def gather(self, a: np.ndarray) -> np.ndarray:
        t = self.torch.from_numpy(a).to(self.device)
        out = self.torch.empty((self.world, *a.shape), dtype=t.dtype, device=self.device)
        self.dist.all_gather_into_tensor(out, t, group=self.pg) if self.device.type == "cuda" else \
            self.dist.all_gather(list(out.unbind(0)), t, group=self.pg)
        return out.cpu().numpy()


class MpiGroup(Group):
    """An mpi4py communicator."""

    def __init__(self, comm: Any) -> None:
        super().__init__()
        self.comm = comm
        self.world = comm.Get_size()
        self.rank = comm.Get_rank()

    def gather(self, a: np.ndarray) -> np.ndarray:
        out = np.empty((self.world, *a.shape), np.float64)
        self.comm.Allgather(a, out)
        return out


def group_of(process_group: Any = None, comm: Any = None, *, distributed: bool = False) -> Group | None:
    """The Group for an op call's `process_group=` (torch) or `comm=` (mpi4py) argument.

    A Group passes through (tests and benchmarks count its bytes); `distributed=True` with
    neither means torch's default group.
    """
    if process_group is not None and comm is not None:
        raise CallError("give process_group (torch.distributed) or comm (mpi4py), not both")
    if isinstance(process_group, Group):
        return process_group
    if isinstance(comm, Group):
        return comm
    if comm is not None:
        if not hasattr(comm, "Allgather"):
            raise CallError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
        return MpiGroup(comm)
    if process_group is not None or distributed:
        return TorchGroup(process_group)
    return None


def merge_moments(group: Group, moments: np.ndarray, name: str) -> np.ndarray:
    """Every rank's (count, mean, M2) per group, merged with Chan's formula in rank order."""
    parts = group.gather_checked(moments, "forward statistics", name)  # [world, g, 3]
    return merge_parts(np.ascontiguousarray(parts.transpose(1, 0, 2)))


def sum_ranks(group: Group, sums: np.ndarray, name: str) -> np.ndarray:
    """Per-group sums added over the ranks, in rank order (the same bits on every rank)."""
    # the forward checked that the ranks agree on the groups (the Forward carries them here)
    parts = group._gather(np.ascontiguousarray(sums, np.float64))
    total = parts[0].copy()
    for r in range(1, parts.shape[0]):
        total += parts[r]
    return total


def torch_sync_batchnorm_bytes(channels: int, world: int) -> dict[str, int]:
    """What PyTorch's SyncBatchNorm (CUDA) sends per rank per step, float32: forward
    all-gathers (mean, invstd, count) per channel; backward all-reduces (sum dy, sum dy x_mu)."""
    return {"forward": (2 * channels + 1) * 4, "backward": 2 * channels * 4}
