"""Statistics that stay on the CUDA device (runtime/cuda_ranks.py), run on the CPU emulator with
an instrumented device (normgen.testing.devicesync): the order of the kernels and collectives,
no device -> host copy (and no host computation on device arrays, which raises) between the
statistics kernel and the apply, results against the float64 oracle over the whole data, and
bit-identical statistics on every rank; the running update as a kernel; a real gloo group of
two processes reducing the emulator's device buffers in place."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from normgen import load
from normgen.op.distributed import Group
from normgen.runtime.device_kernels import source
from normgen.testing.cuda_emu import nvcc_check, nvcc_path
from normgen.testing.devicesync import DeviceArray, HostRead, RecordingDevice, RecordingGroup
from normgen.verify import oracle

FORWARD = ["forward_partial", "forward_merge", "ranks_mean_sums", "allreduce", "ranks_m2_sums", "allreduce",
           "ranks_moments", "forward_merge", "forward_apply"]
BACKWARD = ["backward_partial", "backward_merge", "ranks_grad_pack", "allreduce", "ranks_grad_parts",
            "backward_merge", "backward_apply"]


def _close(got, want, tol=1e-12):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max(initial=0))))


def test_training_step_across_ranks_never_reads_the_device():
    """batch_norm forward (running statistics updated) and backward with a process group: the
    kernels and collectives in order, on device arrays, and no copy to the host at all (the
    parameter gradients are summed on the device too); every result against the oracle."""
    op, dev = load("batch_norm"), RecordingDevice()
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((8, 4, 3)) * 2 + 1, rng.standard_normal((8, 4, 3))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    rm, rv = dev.put(np.zeros(4)), dev.put(np.ones(4))
    args = (dev.put(x), dev.put(w), dev.put(b))
    group = RecordingGroup(dev)
    dev.clear()
    fwd = op.forward(*args, running_mean=rm, running_var=rv, training=True, process_group=group)
    assert dev.kernels() == FORWARD + ["running_update_f64"]
    assert dev.count("to_host") == 0
    assert [w for k, w in dev.log if k == "allreduce"] == [4 * 2 * 8, 4 * 8]  # (count, count*mean), then M2
    dev.clear()
    grads = op.backward(dev.put(dy), fwd)
    assert dev.kernels() == BACKWARD + ["param_sums"]  # the parameter gradients too, on the device
    assert dev.count("to_host") == 0

    ref = oracle.forward(op.spec, x, {"weight": w, "bias": b}, running_mean=np.zeros(4), running_var=np.ones(4))
    rgrads = oracle.backward(op.spec, dy, x, {"weight": w, "bias": b})
    _close(dev.to_host(fwd.y), ref.y)
    _close(dev.to_host(rm), ref.running_mean)
    _close(dev.to_host(rv), ref.running_var)
    _close(dev.to_host(grads.dx), rgrads["x"])
    _close(dev.to_host(grads["weight"]), rgrads["weight"])
    _close(dev.to_host(grads["bias"]), rgrads["bias"])


def test_host_computation_on_a_device_array_is_caught():
    dev = RecordingDevice()
    a = dev.put(np.ones(3))
    for read in (lambda: a.sum(), lambda: np.where(a > 0, a, 0), lambda: float(a[0]), lambda: a.tolist(),
                 lambda: bool(a[0]), lambda: a + 1):
        with pytest.raises(HostRead, match="host code read a device array"):
            read()
    assert isinstance(a.reshape(3, 1), DeviceArray) and isinstance(np.empty_like(a), DeviceArray)
    assert dev.count("to_host") == 0


def _ranks(world: int, fn) -> list:
    """fn(group) on `world` threads, one RecordingDevice each; re-raises the first failure."""
    groups = RecordingGroup.threads(world)
    results, errors = [None] * world, []

    def target(g: RecordingGroup) -> None:
        try:
            results[g.rank] = fn(g)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            g.shared["barrier"].abort()

    threads = [threading.Thread(target=target, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return results


def test_three_ranks_with_unequal_and_empty_shards_match_the_whole_batch():
    """batch_norm over 3 ranks holding 5, 3 and 0 samples, two training steps: y, dx, the
    summed parameter gradients and the running statistics equal the oracle's on all 8
    samples; statistics and running statistics bit-identical on every rank; no rank copies
    anything to the host in a training step."""
    op = load("batch_norm")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((8, 3, 2, 3)) * 3 + 2 for _ in range(2)]
    dys = [rng.standard_normal((8, 3, 2, 3)) for _ in range(2)]
    w, b = rng.standard_normal(3) + 1, rng.standard_normal(3)
    bounds = [slice(0, 5), slice(5, 8), slice(8, 8)]

    def rank(g: RecordingGroup):
        dev, mine = g.device, bounds[g.rank]
        rm, rv = dev.put(np.zeros(3)), dev.put(np.ones(3))
        out = []
        for x, dy in zip(xs, dys):
            dev.clear()
            fwd = op.forward(dev.put(x[mine]), dev.put(w), dev.put(b), running_mean=rm, running_var=rv,
                             training=True, process_group=g)
            grads = op.backward(dev.put(np.ascontiguousarray(dy[mine])), fwd)
            reads = dev.count("to_host")
            out.append((dev.to_host(fwd.y), dev.to_host(grads.dx), dev.to_host(grads["weight"]),
                        dev.to_host(grads["bias"]), dev.to_host(fwd.kstats), reads))
        return out, dev.to_host(rm), dev.to_host(rv)

    done = _ranks(3, rank)
    rm, rv = np.zeros(3), np.ones(3)
    for step, (x, dy) in enumerate(zip(xs, dys)):
        ref = oracle.forward(op.spec, x, {"weight": w, "bias": b}, running_mean=rm, running_var=rv)
        rm, rv = ref.running_mean, ref.running_var
        rg = oracle.backward(op.spec, dy, x, {"weight": w, "bias": b})
        per_rank = [d[0][step] for d in done]
        _close(np.concatenate([p[0] for p in per_rank]), ref.y)
        _close(np.concatenate([p[1] for p in per_rank]), rg["x"])
        _close(sum(p[2] for p in per_rank), rg["weight"])
        _close(sum(p[3] for p in per_rank), rg["bias"])
        assert all(np.array_equal(per_rank[0][4], p[4]) for p in per_rank)  # the same bits on every rank
        # nothing read back on any rank (the empty one finalizes with a stand-in plan's merge: the same bits)
        assert [p[5] for p in per_rank] == [0, 0, 0]
    for _, got_rm, got_rv in done:
        _close(got_rm, rm)
        _close(got_rv, rv)
    assert all(np.array_equal(done[0][2], d[2]) for d in done)


def test_far_offset_float32_hidden_split_keeps_its_digits():
    """layer_norm rows with mean 1e4 and std 1e-2 in float32, the hidden dimension split over
    3 ranks: M2 is reduced about the global mean (no cancellation), so y stays within the
    float32 rounding of x - mean (the bound the host path's test uses)."""
    op = load("layer_norm")
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((6, 40)) * 1e-2 + 1e4).astype(np.float32)
    cols = [slice(0, 20), slice(20, 33), slice(33, 40)]
    ref = oracle.forward(op.spec, x.astype(np.float64), sizes={"normalized_shape": (40,)})

    def rank(g: RecordingGroup):
        c = cols[g.rank]
        fwd = op.forward(g.device.put(x[:, c]), normalized_shape=(c.stop - c.start,), process_group=g)
        return g.device.to_host(fwd.y), g.device.to_host(fwd.kstats)

    done = _ranks(3, rank)
    y = np.concatenate([d[0] for d in done], axis=1).astype(np.float64)
    assert np.abs(y - ref.y).max() < 2e-3
    assert all(np.array_equal(done[0][1], d[1]) for d in done)


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm"])
def test_running_update_without_ranks_is_a_kernel(name):
    """A CUDA training forward updates the running statistics by a kernel (instance_norm: the
    average over N of each channel's groups), with no copy to the host, as the oracle does."""
    op, dev = load(name), RecordingDevice()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5)) * 2 + 1
    rm0, rv0 = rng.standard_normal(3).astype(np.float32), (rng.random(3) + 0.5).astype(np.float32)
    rm, rv = dev.put(rm0), dev.put(rv0)
    xd = dev.put(x)
    dev.clear()
    op.forward(xd, running_mean=rm, running_var=rv, training=True, momentum=0.3)
    assert dev.count("to_host") == 0 and dev.kernels()[-1] == "running_update_f32"
    ref = oracle.forward(op.spec, x, running_mean=rm0.astype(np.float64), running_var=rv0.astype(np.float64),
                         momentum=0.3)
    _close(dev.to_host(rm), ref.running_mean, tol=1e-6)
    _close(dev.to_host(rv), ref.running_var, tol=1e-6)


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed")
def test_device_kernels_compile_with_nvcc():
    nvcc_check(source(), name="device_kernels.cu")


def test_gloo_ranks_reduce_the_device_buffers_in_place(tmp_path):
    """Two real processes in a gloo group (torch.distributed), emulator device arrays: the
    group's collectives wrap the device buffers without a copy (no copy to the host on the
    ranks), and the result equals the oracle on the whole batch."""
    mp = pytest.importorskip("torch.multiprocessing")
    init = "file://" + os.path.join(tempfile.mkdtemp(), "rendezvous")
    mp.spawn(_gloo_rank, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    op = load("batch_norm")
    x, w, b = _gloo_data()
    ref = oracle.forward(op.spec, x, {"weight": w, "bias": b})
    y = np.concatenate([np.load(tmp_path / f"{r}.npy") for r in range(2)])
    _close(y, ref.y)
    assert [(tmp_path / f"{r}.txt").read_text() for r in range(2)] == ["to_host 0, collectives 2"] * 2


def _gloo_data():
    rng = np.random.default_rng(5)
    return rng.standard_normal((6, 3, 4)) + 1, rng.standard_normal(3), rng.standard_normal(3)


def _gloo_rank(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from normgen.op.distributed import group_of

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dev, group = RecordingDevice(), group_of(distributed=True)
        x, w, b = _gloo_data()
        mine = slice(0, 4) if rank == 0 else slice(4, 6)
        xd, wd, bd = dev.put(x[mine]), dev.put(w), dev.put(b)
        dev.clear()
        fwd = load("batch_norm").forward(xd, wd, bd, process_group=group)
        Path(out, f"{rank}.txt").write_text(f"to_host {dev.count('to_host')}, collectives {group.calls}")
        np.save(Path(out, f"{rank}.npy"), dev.to_host(fwd.y))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm"])
def test_evaluation_statistics_come_from_the_running_ones_on_the_device(name):
    """Evaluation normalizes with the running statistics without copying them to the host
    (a kernel spreads each running entry over its groups), as the oracle does."""
    op, dev = load(name), RecordingDevice()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32) * 2 + 1
    rm0, rv0 = rng.standard_normal(3), rng.random(3) + 0.5
    xd, rm, rv = dev.put(x), dev.put(rm0), dev.put(rv0)
    dev.clear()
    fwd = op.forward(xd, running_mean=rm, running_var=rv, training=False)
    assert dev.kernels() == ["eval_kstats_f64_f32", "forward_apply"] and dev.count("to_host") == 0
    ref = oracle.forward(op.spec, x.astype(np.float64), running_mean=rm0, running_var=rv0, training=False)
    _close(dev.to_host(fwd.y), ref.y, tol=1e-6)


class _HostOnlyGroup(Group):
    """One rank whose collectives take host arrays (as mpi4py's do): the default reduce_on_device."""

    world, rank = 1, 0

    def gather(self, a):
        return np.asarray(a)[None]

    def allreduce(self, a):
        return np.array(a)


def test_a_group_without_device_collectives_copies_each_through_the_host():
    """The device kernels still run; each collective's sums go to the host and back (and that
    is all that does): 3 copies for the 3 collectives of a training step, results as the oracle's."""
    op, dev = load("layer_norm"), RecordingDevice()
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((5, 12)) + 2, rng.standard_normal((5, 12))
    xd, dyd = dev.put(x), dev.put(dy)
    dev.clear()
    fwd = op.forward(xd, normalized_shape=(12,), process_group=_HostOnlyGroup())
    grads = op.backward(dyd, fwd)
    assert dev.count("to_host") == 3
    _close(dev.to_host(fwd.y), oracle.forward(op.spec, x, sizes={"normalized_shape": (12,)}).y)
    _close(dev.to_host(grads.dx), oracle.backward(op.spec, dy, x, sizes={"normalized_shape": (12,)})["x"])
