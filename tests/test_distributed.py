"""Statistics across processes (normgen.op.distributed), checked against one process over the
concatenated data (normgen.testing.distcheck): in threads (fast, many shapes), in real gloo process
groups through torch.multiprocessing, and under `mpirun` with mpi4py."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

from normgen import CallError, load
from normgen.testing import distcheck
from normgen.op.distributed import Group, sum_ranks


class ThreadGroup(Group):
    """`world` ranks as threads of one process: gather through a shared list and a barrier."""

    def __init__(self, world: int, rank: int, shared: dict) -> None:
        super().__init__()
        self.world, self.rank, self.shared = world, rank, shared

    def gather(self, a: np.ndarray) -> np.ndarray:
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = a.copy()
        barrier.wait()
        out = np.stack(slots)
        barrier.wait()  # nobody overwrites a slot before everyone has read them all
        return out


def run_threads(world: int, fn) -> list:
    """fn(group) on `world` threads; re-raises the first failure."""
    shared = {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=120)}
    results, errors = [None] * world, []

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadGroup(world, rank, shared))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return results


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharded_matches_single_process(world):
    """batch_norm (unequal shards, an empty rank from 3 ranks on), group_norm split along H,
    layer_norm and rms_norm with the hidden dimension split: forward, backward, running stats."""
    done = run_threads(world, distcheck.check_all)
    assert all(len(d) == 4 for d in done)


def test_ranks_disagreeing_on_kept_axes_get_a_clear_error():
    op = load("batch_norm")

    def call(group):
        c = 4 + group.rank  # a different number of channels per rank: statistics do not line up
        op.forward(np.ones((3, c, 2)), process_group=group)

    with pytest.raises(CallError, match="different numbers of statistics groups .4, 5"):
        run_threads(2, call)


def test_mixtures_refuse_process_groups():
    op = load("switchable_norm")
    with pytest.raises(CallError, match="not supported for mixtures"):
        run_threads(1, lambda g: op.forward(np.ones((2, 3, 4)), mean_weight=np.ones(3), var_weight=np.ones(3),
                                            process_group=g))


def test_one_value_per_channel_over_all_ranks_raises_on_every_rank_and_keeps_running_stats():
    op = load("batch_norm")
    errors = []

    def call(group):
        rm, rv = np.zeros(3), np.ones(3)
        x = np.ones((1 if group.rank == 0 else 0, 3))  # one sample in all
        try:
            op.forward(x, running_mean=rm, running_var=rv, training=True, process_group=group)
        except CallError as e:
            errors.append(str(e))
        assert rm.tolist() == [0, 0, 0] and rv.tolist() == [1, 1, 1]

    run_threads(2, call)
    assert len(errors) == 2 and "more than 1 value per statistic" in errors[0]


def test_sums_are_added_in_rank_order_identically_everywhere():
    rng = np.random.default_rng(0)
    parts = rng.standard_normal((3, 5, 2)) * 1e8
    out = run_threads(3, lambda g: sum_ranks(g, parts[g.rank], "t"))
    assert all(np.array_equal(out[0], o) for o in out)
    np.testing.assert_allclose(out[0], parts.sum(axis=0), rtol=1e-12)


def test_bytes_sent_per_step_are_statistics_only():
    """batch_norm on [8, 64, 14, 14] per rank: each rank sends g x 3 float64 moments forward and
    g x 2 sums backward (plus the 8-byte group count the forward checks first), never the data."""
    op = load("batch_norm")
    x = np.random.default_rng(0).standard_normal((8, 64, 14, 14))

    def step(group):
        fwd = op.forward(x, process_group=group)
        op.backward(x, fwd)
        return group.bytes_sent, group.calls

    sent, calls = run_threads(2, step)[0]
    assert calls == 3 and sent == 64 * 3 * 8 + 64 * 2 * 8 + 8
    assert sent < x.nbytes / 100


def _free_init_file() -> str:
    return "file://" + os.path.join(tempfile.mkdtemp(), "rendezvous")


def test_torch_gloo_process_group_with_sync_batchnorm():
    """Three real processes in a gloo group on loopback: every check plus
    normgen.torch.SyncBatchNorm against torch.nn.BatchNorm2d over the whole batch."""
    mp = pytest.importorskip("torch.multiprocessing")
    mp.spawn(_gloo_rank, args=(3, _free_init_file()), nprocs=3, join=True)


def _gloo_rank(rank, world, init):
    done = distcheck.run_torch(rank, world, init)
    assert "normgen.torch.SyncBatchNorm" in done


def test_mpirun_two_ranks():
    """`mpirun -n 2 python -m normgen.testing.distcheck` with mpi4py (installed by `.ci/run` from the
    `distributed` extra, which brings Open MPI as a wheel)."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install -e '.[distributed]')")
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        pytest.skip("no mpirun on PATH (pip install -e '.[distributed]' brings Open MPI)")
    cmd = [mpirun, "-n", "2", sys.executable, "-m", "normgen.testing.distcheck"]
    if "Open MPI" in subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout:
        cmd[1:1] = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    env = {**os.environ, "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    oks = [line for line in proc.stdout.splitlines() if line.startswith("rank ") and " ok: " in line]
    assert len(oks) == 2 and all("rms_norm (hidden split)" in line for line in oks), proc.stdout


def test_convert_sync_shares_tensors_and_is_batch_norm_outside_a_group():
    torch = pytest.importorskip("torch")
    import normgen.torch as nt

    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.BatchNorm2d(4, momentum=None))).double()
    ref[1].running_mean.fill_(0.5)
    model = nt.convert_sync(ref, process_group=None)
    assert isinstance(model[1], nt.SyncBatchNorm) and isinstance(model[3][0], nt.SyncBatchNorm)
    assert model[1].weight is ref[1].weight and model[1].running_mean is ref[1].running_mean
    assert model[3][0].momentum is None and model[1].training
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    expect = torch.nn.functional.batch_norm(ref[0](x), None, None, ref[1].weight, ref[1].bias, training=True)
    torch.testing.assert_close(model[1](ref[0](x)), expect)
