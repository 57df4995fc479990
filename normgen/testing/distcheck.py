"""Distributed normalization checked against one process over the concatenated data.

Every rank builds the same global data (seeded), takes its shard, runs normgen with the
process group, and compares its shard of the results with a single-process run over the
whole data, which every rank also computes. Shards are deliberately unequal, and with 3 or
more ranks, batch_norm's last rank has no samples at all.

Run under MPI (`mpirun -n 2 python -m normgen.testing.distcheck`) or through torch.distributed
(`run_torch(rank, world, init_method)`, used by tests/test_distributed.py). Each rank
returns (or prints) the scenarios it checked and raises on the first mismatch.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..op import load
from ..op.distributed import Group, group_of

TOL = 1e-10  # float64 data: the sharded and the single-process runs differ only in summation order


def shares(total: int, world: int, empty_last: bool = False) -> list[int]:
    """Unequal shard sizes adding up to `total` (the last rank gets 0 when asked and world > 2)."""
    weights = np.arange(world, 0, -1, dtype=np.float64)  # rank 0 biggest
    if empty_last and world > 2:
        weights[-1] = 0.0
    sizes = np.floor(weights / weights.sum() * total).astype(int)
    sizes[0] += total - sizes.sum()
    return [int(s) for s in sizes]


def _bounds(sizes: list[int], rank: int) -> slice:
    lo = sum(sizes[:rank])
    return slice(lo, lo + sizes[rank])


def _close(name: str, got: np.ndarray, want: np.ndarray, rank: int) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"rank {rank}: {name}: shape {got.shape}, expected {want.shape}")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not err <= TOL * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0):
        raise AssertionError(f"rank {rank}: {name}: max |sharded - single process| = {err:.3e} > {TOL:.0e}")


def _same_everywhere(group: Group, name: str, a: np.ndarray) -> None:
    """Bit-identical on every rank (running statistics must not drift apart)."""
    every = group.gather(np.ascontiguousarray(a, np.float64))
    if not all(np.array_equal(every[0], every[r]) for r in range(group.world)):
        raise AssertionError(f"rank {group.rank}: {name} differs between ranks")


def _sum_over_ranks(group: Group, a: np.ndarray) -> np.ndarray:
    return group.gather(np.ascontiguousarray(a, np.float64)).sum(axis=0)


def check_batch_norm(group: Group, sync: str = "allreduce", steps: int = 2) -> None:
    """Batch split unequally (an empty rank when world > 2); running statistics over steps."""
    op = load("batch_norm")
    rng = np.random.default_rng(7)
    n_total, c = 11, 6
    sizes = shares(n_total, group.world, empty_last=True)
    mine = _bounds(sizes, group.rank)
    w, b = rng.standard_normal(c) + 1.0, rng.standard_normal(c)
    rm, rv = np.zeros(c), np.ones(c)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    for step in range(steps):
        x = rng.standard_normal((n_total, c, 5, 3)) * 3.0 + 2.0
        dy = rng.standard_normal(x.shape)
        fwd = op.forward(x[mine], w, b, running_mean=rm, running_var=rv, training=True, process_group=group,
                         sync=sync)
        ref = op.forward(x, w, b, running_mean=rm_ref, running_var=rv_ref, training=True)
        _close(f"batch_norm step {step} y", fwd.y, ref.y[mine], group.rank)
        grads = op.backward(np.ascontiguousarray(dy[mine]), fwd)
        rgrads = op.backward(dy, ref)
        _close(f"batch_norm step {step} dx", grads.dx, rgrads.dx[mine], group.rank)
        _close(f"batch_norm step {step} dweight (summed over ranks)", _sum_over_ranks(group, grads["weight"]),
               rgrads["weight"], group.rank)
        _close(f"batch_norm step {step} dbias (summed over ranks)", _sum_over_ranks(group, grads["bias"]),
               rgrads["bias"], group.rank)
    _close("batch_norm running_mean", rm, rm_ref, group.rank)
    _close("batch_norm running_var", rv, rv_ref, group.rank)
    _same_everywhere(group, "batch_norm running_var", rv)


def check_group_norm_spatial(group: Group, sync: str = "allreduce") -> None:
    """group_norm with the image split along H (spatial parallelism): strided shards."""
    op = load("group_norm")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 9, 4)) + 1.0
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    rows = _bounds(shares(9, group.world), group.rank)
    shard = x[:, :, rows]  # a view: the kernels walk its strides
    fwd = op.forward(shard, w, b, num_groups=3, process_group=group, sync=sync)
    ref = op.forward(x, w, b, num_groups=3)
    _close("group_norm y", fwd.y, ref.y[:, :, rows], group.rank)
    grads = op.backward(dy[:, :, rows], fwd)
    rgrads = op.backward(dy, ref)
    _close("group_norm dx", grads.dx, rgrads.dx[:, :, rows], group.rank)
    _close("group_norm dweight (summed)", _sum_over_ranks(group, grads["weight"]), rgrads["weight"], group.rank)


def check_hidden_sharded(group: Group, name: str, sync: str = "allreduce") -> None:
    """layer_norm / rms_norm with the hidden dimension (and the parameters) split: tensor parallel."""
    op = load(name)
    rng = np.random.default_rng(9)
    rows, hidden = 10, 24
    x = rng.standard_normal((rows, hidden)) * 2.0 + 5.0
    dy = rng.standard_normal(x.shape)
    params = {"weight": rng.standard_normal(hidden) + 1.0}
    if name == "layer_norm":
        params["bias"] = rng.standard_normal(hidden)
    cols = _bounds(shares(hidden, group.world), group.rank)
    local = {k: np.ascontiguousarray(v[cols]) for k, v in params.items()}
    width = cols.stop - cols.start
    fwd = op.forward(x[:, cols], **local, normalized_shape=(width,), process_group=group, eps=1e-5, sync=sync)
    ref = op.forward(x, **params, normalized_shape=(hidden,), eps=1e-5)
    _close(f"{name} y", fwd.y, ref.y[:, cols], group.rank)
    grads = op.backward(dy[:, cols], fwd)
    rgrads = op.backward(dy, ref)
    _close(f"{name} dx", grads.dx, rgrads.dx[:, cols], group.rank)
    for p in params:  # sharded parameters: each rank's gradient is its slice of the full one
        _close(f"{name} d{p}", grads[p], rgrads[p][cols], group.rank)


def check_far_offset(group: Group, sync: str = "allreduce") -> None:
    """float32 rows with mean 1e4 and std 1e-2, the hidden dimension split: the statistics
    keep their digits (the shifted sums are reduced again around the mean), within the
    float32 tolerance of `normgen check`, and are bit-identical on every rank."""
    op = load("layer_norm")
    rng = np.random.default_rng(10)
    rows, hidden = 6, 40
    x = (rng.standard_normal((rows, hidden)) * 1e-2 + 1e4).astype(np.float32)
    cols = _bounds(shares(hidden, group.world), group.rank)
    width = cols.stop - cols.start
    fwd = op.forward(np.ascontiguousarray(x[:, cols]), normalized_shape=(width,), process_group=group, sync=sync)
    ref = op.forward(x.astype(np.float64), normalized_shape=(hidden,))
    err = float(np.abs(fwd.y.astype(np.float64) - ref.y[:, cols]).max()) if width else 0.0
    if not err <= 2e-3:  # x_hat is of order 1; float32 rounding of x - mean with |mean| = 1e4 is ~1e-3 of std
        raise AssertionError(f"rank {group.rank}: far-offset layer_norm y: max error {err:.2e} > 2e-3")
    _same_everywhere(group, "far-offset layer_norm statistics", fwd.host)


def check_all(group: Group, sync: str = "allreduce") -> list[str]:
    done = []
    check_batch_norm(group, sync)
    done.append("batch_norm (unequal shards" + (", an empty rank)" if group.world > 2 else ")"))
    check_group_norm_spatial(group, sync)
    done.append("group_norm (split along H)")
    for name in ("layer_norm", "rms_norm"):
        check_hidden_sharded(group, name, sync)
        done.append(f"{name} (hidden split)")
    check_far_offset(group, sync)
    done.append("far-offset float32 (mean 1e4, std 1e-2)")
    return done


def check_torch_sync_batchnorm(group: Group, process_group: Any = None) -> None:
    """normgen.torch.SyncBatchNorm vs torch.nn.BatchNorm2d over the whole batch, 2 steps."""
    import torch

    from ..torch import SyncBatchNorm  # (torch is optional: imported when this check runs)

    torch.manual_seed(0)
    n_total, c = 9, 4
    sizes = shares(n_total, group.world, empty_last=True)
    mine = _bounds(sizes, group.rank)
    sync = SyncBatchNorm(c, process_group=process_group).double()
    ref = torch.nn.BatchNorm2d(c).double()
    with torch.no_grad():
        for m in (sync, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, c))
            m.bias.copy_(torch.linspace(-1, 1, c))
    for step in range(2):
        x = torch.randn(n_total, c, 4, 3, dtype=torch.float64) * 2 + 1
        dy = torch.randn_like(x)
        xs = x[mine].clone().requires_grad_(True)
        xr = x.clone().requires_grad_(True)
        ys, yr = sync(xs), ref(xr)
        _close(f"SyncBatchNorm step {step} y", ys.detach().numpy(), yr.detach().numpy()[mine], group.rank)
        ys.backward(dy[mine])
        yr.backward(dy)
        _close(f"SyncBatchNorm step {step} dx", xs.grad.numpy(), xr.grad.numpy()[mine], group.rank)
    _close("SyncBatchNorm dweight (summed)", _sum_over_ranks(group, sync.weight.grad.numpy()),
           ref.weight.grad.numpy(), group.rank)
    _close("SyncBatchNorm running_mean", sync.running_mean.numpy(), ref.running_mean.numpy(), group.rank)
    _close("SyncBatchNorm running_var", sync.running_var.numpy(), ref.running_var.numpy(), group.rank)
    if int(sync.num_batches_tracked) != int(ref.num_batches_tracked):
        raise AssertionError(f"rank {group.rank}: num_batches_tracked {int(sync.num_batches_tracked)}")


def step_bytes(group: Group, shape: tuple[int, ...] = (4, 64, 7, 7)) -> tuple[int, int]:
    """(sent, received) by this rank in one batch_norm training step (forward and backward)
    on a fresh group: the payload of every collective, counted."""
    op = load("batch_norm")
    x = np.random.default_rng(group.rank).standard_normal(shape)
    fwd = op.forward(x, running_mean=np.zeros(shape[1]), running_var=np.ones(shape[1]), training=True,
                     process_group=group)
    op.backward(x, fwd)
    return group.bytes_sent, group.bytes_received


def run_torch(rank: int, world: int, init_method: str, with_module: bool = True) -> list[str]:
    """One rank of a gloo group on loopback (the target of torch.multiprocessing.spawn)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        group = group_of(distributed=True)
        done = check_all(group)
        if with_module:
            check_torch_sync_batchnorm(group)
            done.append("normgen.torch.SyncBatchNorm")
        done.append(f"bytes per step {step_bytes(group_of(distributed=True))}")
        dist.barrier()
        return done
    finally:
        dist.destroy_process_group()


def main() -> int:
    """`mpirun -n N python -m normgen.testing.distcheck`: every check over MPI_COMM_WORLD."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    group = group_of(comm=comm)
    try:
        done = check_all(group)
    except AssertionError as e:
        print(f"FAIL {e}", flush=True)
        comm.Abort(1)
        return 1
    comm.Barrier()
    print(f"rank {group.rank}/{group.world} ok: {'; '.join(done)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
