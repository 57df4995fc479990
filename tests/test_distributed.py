"""Statistics across processes (normgen.op.distributed), checked against one process over the
concatenated data (normgen.testing.distcheck): in threads (fast, many shapes), in real gloo process
groups through torch.multiprocessing, and under `mpirun` with mpi4py."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from normgen import CallError, load
from normgen.testing import distcheck
from normgen.op.distributed import Group, sum_ranks


class ThreadGroup(Group):
    """`world` ranks as threads of one process: collectives through a shared list and a barrier."""

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

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        """Summed in a fixed order on every rank (as a ring all-reduce hands everyone the same bytes)."""
        parts = self.gather(a)
        total = parts[0].copy()
        for r in range(1, len(parts)):
            total += parts[r]
        return total


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


@pytest.mark.parametrize("sync", ["allreduce", "gather"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharded_matches_single_process(world, sync):
    """batch_norm (unequal shards, an empty rank from 3 ranks on), group_norm split along H,
    layer_norm and rms_norm with the hidden dimension split: forward, backward, running stats,
    bit-identical statistics on every rank."""
    done = run_threads(world, lambda g: distcheck.check_all(g, sync))
    assert all(len(d) == 5 for d in done)


def test_ranks_disagreeing_on_kept_axes_get_a_clear_error():
    op = load("batch_norm")

    def call(group):
        c = 4 + group.rank  # a different number of channels per rank: statistics do not line up
        op.forward(np.ones((3, c, 2)), process_group=group)

    with pytest.raises(CallError, match=r"different numbers of statistics groups \([45] here, 4.5 on average\)"):
        run_threads(2, call)
    with pytest.raises(CallError, match="different numbers of statistics groups .4, 5"):  # gathered: all of them
        run_threads(2, lambda g: op.forward(np.ones((3, 4 + g.rank, 2)), process_group=g, sync="gather"))


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


def _step_bytes(world: int, sync: str) -> list[tuple[int, int, int]]:
    op = load("batch_norm")
    x = np.random.default_rng(0).standard_normal((8, 64, 14, 14))

    def step(group):
        fwd = op.forward(x, process_group=group, sync=sync)
        op.backward(x, fwd)
        return group.bytes_sent, group.bytes_received, group.calls

    return run_threads(world, step)


def test_bytes_per_rank_do_not_grow_with_the_world():
    """batch_norm on [8, 64, 14, 14] per rank (64 groups): all-reduced, a rank sends and
    receives the same statistics bytes with 2 or 4 ranks — 16 (the group check) + 64 x 3
    float64 forward + 64 x 2 backward — never the data; gathered, what it receives grows
    with the world."""
    per_step = 16 + 64 * 3 * 8 + 64 * 2 * 8
    for world in (2, 4):
        assert set(_step_bytes(world, "allreduce")) == {(per_step, per_step, 3)}
    two, four = _step_bytes(2, "gather")[0], _step_bytes(4, "gather")[0]
    assert two[0] == four[0] == 8 + 64 * 3 * 8 + 64 * 2 * 8 and four[1] == 2 * two[1]


def test_allreduce_keeps_the_digits_of_far_offset_data():
    """float32 data with mean 1e4 and std 1e-2 across 3 ranks (running mean 0: the first shift
    is far; the sums are reduced again around the mean) normalize like one process does."""
    op = load("batch_norm")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((12, 4, 5, 5)) * 1e-2 + 1e4).astype(np.float32)
    ref = op.forward(x, running_mean=np.zeros(4, np.float32), running_var=np.ones(4, np.float32), training=True)

    def shard(group):
        rows = slice(4 * group.rank, 4 * group.rank + 4)
        rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
        fwd = op.forward(x[rows], running_mean=rm, running_var=rv, training=True, process_group=group)
        return fwd.y, rm, rv, group.calls

    out = run_threads(3, shard)
    y = np.concatenate([o[0] for o in out])
    assert np.abs(y.astype(np.float64) - ref.y).max() < 2e-3  # x_hat of order 1: float32 rounding
    assert out[0][3] == 3  # group check, sums around the running mean (far), sums around the mean
    assert all(np.array_equal(out[0][1], o[1]) and np.array_equal(out[0][2], o[2]) for o in out)


def _free_init_file() -> str:
    return "file://" + os.path.join(tempfile.mkdtemp(), "rendezvous")


def test_torch_gloo_process_groups_with_sync_batchnorm(tmp_path):
    """2, 3 and 4 real processes in gloo groups on loopback: every check (unequal shards, an
    empty rank from 3 on) plus normgen.torch.SyncBatchNorm against torch.nn.BatchNorm2d over
    the whole batch; and the bytes a rank moves per step are the same for 2 and 4 ranks."""
    mp = pytest.importorskip("torch.multiprocessing")
    for world in (2, 3, 4):
        mp.spawn(_gloo_rank, args=(world, _free_init_file(), str(tmp_path)), nprocs=world, join=True)
    lines = {w: [(tmp_path / f"{w}.{r}").read_text() for r in range(w)] for w in (2, 3, 4)}
    assert all("normgen.torch.SyncBatchNorm" in line for w in lines for line in lines[w])
    counts = {w: {line.rsplit("bytes per step ", 1)[1] for line in lines[w]} for w in lines}
    assert len(counts[2]) == 1 and counts[2] == counts[4], counts


def _gloo_rank(rank, world, init, out):
    done = distcheck.run_torch(rank, world, init)
    Path(out, f"{world}.{rank}").write_text("; ".join(done))


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
