"""Statistics across processes: the reduced axes of x split over the ranks of a group.

When the elements that share statistics live on several processes (batch norm with the
batch split across data-parallel ranks; layer_norm / rms_norm with the hidden dimension
split across tensor-parallel ranks; group_norm with the image split spatially), each rank
runs the kernels on its own shard, and only statistics travel. Two ways (`sync=`):

- **"allreduce"** (the default): constant bytes per rank, whatever the world size. Each
  rank turns its exact local moments (count, mean, M2) per group into shifted sums
  (n, Σ(x − K), Σ(x − K)²) in float64, with a shift K that every rank knows identically
  (the running mean when the call has one, else 0), and the sums are all-reduced: mean
  = K + S₁/N, M2 = S₂ − S₁²/N. The subtraction loses relative precision ~1e-16·r² with
  r = |mean − K| / std; where r > `MAX_SHIFT` (a running mean far from the batch, data
  far from 0), every rank sees it in the same reduced numbers and the sums are reduced
  once more around the mean just found (r ≈ 0). An all-reduce hands every rank the same
  bytes, so every rank computes bit-identical statistics and running statistics.
- **"gather"**: every rank's (count, mean, M2) are all-gathered and merged with Chan's
  formula in rank order: exact rank-order merging, bytes per rank growing with the world.

The backward's two per-group sums (Σ g, Σ g·x̂) are all-reduced (or gathered and added in
rank order). Parameter gradients stay local (sum them across ranks, as DDP does, when the
parameters are replicated). A rank with no elements contributes zeros. Before the
statistics, the ranks check (one 16-byte all-reduce) that they agree on the number of
statistics groups: the kept axes must be the same on every rank.

Engines: `torch.distributed` process groups (gloo on CPU, NCCL on GPU: the statistics
travel as tensors on the current CUDA device) and mpi4py communicators. Every collective's
payload is counted (`bytes_sent`, `bytes_received`, `calls`) for benchmarks and tests.

    >>> y = normgen.ops.batch_norm(x_shard, rm, rv, w, b, training=True, process_group=pg)
    >>> fwd = normgen.load("layer_norm").forward(x_cols, w_cols, b_cols, normalized_shape=(h,), comm=MPI.COMM_WORLD)
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..errors import CallError
from ..runtime.moments import merge_parts

#: the ways statistics cross ranks
SYNCS = ("allreduce", "gather")
#: reduce the shifted sums again when |mean - shift| / std exceeds this (precision ~1e-16 * r^2)
MAX_SHIFT = 1000.0


class Group:
    """The ranks that share statistics, behind two collectives on small float64 arrays.

    `gather(a)` returns every rank's `a` stacked in rank order ([world, *a.shape]);
    `allreduce(a)` returns the sum over the ranks, the same bytes on every rank. The arrays
    have the same shape on every rank.
    """

    world: int
    rank: int

    def __init__(self) -> None:
        self.bytes_sent = 0  # this rank's payload into collectives
        self.bytes_received = 0  # the payload collectives hand back to this rank
        self.calls = 0

    def gather(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gather(self, a: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.bytes_sent += a.nbytes
        self.bytes_received += a.nbytes * self.world
        return self.gather(a)

    def _allreduce(self, a: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.bytes_sent += a.nbytes
        self.bytes_received += a.nbytes
        return self.allreduce(a)

    def allreduce_device(self, a: Any, device: Any) -> None:
        """Sum a contiguous float64 array of `device` (runtime/cuda.py's Device) over the ranks,
        in place. Counted like `allreduce`; `reduce_on_device` does the work."""
        self.calls += 1
        self.bytes_sent += a.nbytes
        self.bytes_received += a.nbytes
        self.reduce_on_device(a, device)

    def reduce_on_device(self, a: Any, device: Any) -> None:
        """The in-place sum of a device array. Here through the host (a copy each way: the host
        waits for the device); TorchGroup reduces the device memory itself."""
        a[...] = device.asarray(self.allreduce(device.to_host(a)))

    def check_groups(self, n_groups: int, sync: str, name: str) -> None:
        """Every rank has the same number of statistics groups (else a CallError on every rank)."""
        if sync == "gather":
            sizes = self._gather(np.array([n_groups], np.float64)).reshape(-1)
            agree = bool(np.all(sizes == sizes[0]))
            shown = ", ".join(str(int(s)) for s in sizes)
        else:  # sum and sum of squares: equal only when every rank has the same count
            s, s2 = self._allreduce(np.array([n_groups, float(n_groups) ** 2], np.float64))
            agree = s2 * self.world == s * s
            shown = f"{n_groups} here, {s / self.world:g} on average"
        if not agree:
            raise CallError(f"{name}: the ranks of the process group have different numbers of statistics groups "
                            f"({shown}); with process_group/comm, only the reduced axes may be split across ranks, "
                            "the kept axes must be the same everywhere")


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

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        t = self.torch.from_numpy(np.array(a, np.float64)).to(self.device)  # a copy: reduced in place
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.pg)
        return t.cpu().numpy()

    def reduce_on_device(self, a: Any, device: Any) -> None:
        """all_reduce of a tensor that wraps `a`'s memory (no copy): a CuPy array through DLPack,
        issued on CuPy's current stream (the one the kernels before and after it run on: NCCL
        orders itself after the kernels that wrote the sums, and the kernels that read them
        after it, without the host waiting); a NumPy array (the CPU emulator) as it is, for gloo."""
        t = _wrapping_tensor(self.torch, a)
        if t is None or t.device.type != self.device.type:  # e.g. CuPy arrays with a gloo group
            super().reduce_on_device(a, device)
            return
        with _stream_of(self.torch, a):
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.pg)


def _wrapping_tensor(torch: Any, a: Any) -> Any:
    """A tensor on `a`'s memory, or None when it cannot wrap it without a copy."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a) if a.flags.c_contiguous and a.flags.writeable else None
    if hasattr(a, "__dlpack__"):
        return torch.from_dlpack(a)
    return None


def _stream_of(torch: Any, a: Any):
    """torch's current stream set to CuPy's current one for a CuPy array (under normgen.torch
    they are already the same stream); nothing to do for host arrays."""
    if isinstance(a, np.ndarray):
        return contextlib.nullcontext()
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == torch.cuda.current_stream().cuda_stream:
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.ExternalStream(ptr))


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

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        out = np.empty_like(a, np.float64)
        self.comm.Allreduce(np.ascontiguousarray(a, np.float64), out, op=MPI.SUM)
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


def on_device(spec: Any, call: Any) -> bool:
    """Whether a call's statistics cross the ranks on the device (runtime/cuda_ranks.py): a
    backend that can (CUDA), the all-reduce way, not a mixture (its mix runs on the host).
    The forward and the backward of a call decide alike."""
    return (call.group is not None and call.sync == "allreduce" and not spec.is_mixture
            and getattr(call.backend, "device_stats", False))


def check_sync(sync: Any, name: str) -> str:
    if sync not in SYNCS:
        raise CallError(f"{name}: sync={sync!r} is not a way to share statistics across ranks",
                        allowed=", ".join(repr(s) for s in SYNCS))
    return sync


def merge_moments(group: Group, moments: np.ndarray, name: str, sync: str = "allreduce",
                  shift: np.ndarray | None = None) -> np.ndarray:
    """Every rank's (count, mean, M2) per group [g, 3], merged over the ranks: [g, 3], the same
    bits on every rank. `shift`: per-group values every rank knows identically (e.g. the
    running mean), the first guess of the mean for the all-reduced sums."""
    group.check_groups(moments.shape[0], sync, name)
    if sync == "gather":
        parts = group._gather(np.ascontiguousarray(moments, np.float64))  # [world, g, 3]
        return merge_parts(np.ascontiguousarray(parts.transpose(1, 0, 2)))
    k = np.zeros(moments.shape[0]) if shift is None else np.asarray(shift, np.float64).reshape(-1)
    merged = _reduced_around(group, moments, k)
    n, mean, m2 = merged[:, 0], merged[:, 1], merged[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.abs(mean - k) > MAX_SHIFT * np.sqrt(m2 / n)  # identical on every rank: same reduced bytes
    if np.any(far & (n > 0)):
        merged = _reduced_around(group, moments, np.where(far & (n > 0), mean, k))
    return merged


def _reduced_around(group: Group, moments: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(N, mean, M2) per group from the all-reduced sums (n, Σ(x − k), Σ(x − k)²)."""
    n, mean, m2 = moments[:, 0], moments[:, 1], moments[:, 2]
    d = np.where(n > 0, mean - k, 0.0)  # a rank without elements has no mean
    local = np.stack([n, n * d, m2 + n * d * d], axis=1)
    total = group._allreduce(np.ascontiguousarray(local, np.float64))
    big_n, s1, s2 = total[:, 0], total[:, 1], total[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(big_n > 0, s1 / big_n, 0.0)
        return np.stack([big_n, k + mu, np.maximum(s2 - s1 * mu, 0.0)], axis=1)


def sum_ranks(group: Group, sums: np.ndarray, name: str, sync: str = "allreduce") -> np.ndarray:
    """Per-group sums added over the ranks, the same bits on every rank (rank order with "gather")."""
    # the forward checked that the ranks agree on the groups (the Forward carries them here)
    if sync == "allreduce":
        return group._allreduce(np.ascontiguousarray(sums, np.float64))
    parts = group._gather(np.ascontiguousarray(sums, np.float64))
    total = parts[0].copy()
    for r in range(1, parts.shape[0]):
        total += parts[r]
    return total


def torch_sync_batchnorm_bytes(channels: int, world: int) -> dict[str, int]:
    """What PyTorch's SyncBatchNorm (CUDA) moves per rank per step, float32: the forward
    all-gathers (mean, invstd, count) per channel — each rank receives world times that —
    and the backward all-reduces (sum dy, sum dy x_mu)."""
    forward = (2 * channels + 1) * 4
    return {"forward_sent": forward, "forward_received": forward * world, "backward": 2 * channels * 4}
