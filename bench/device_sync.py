"""Device -> host copies and collectives per training step on CUDA, counted on the instrumented
emulator (normgen/testing/devicesync.py): the device path (runtime/cuda_ranks.py) against the
host path the same backend took before it (device_stats off: the statistics, the running
update and the parameter gradients through the host), for batch_norm with running
statistics across ranks in threads.

    python bench/device_sync.py [--world 2] [--shape 8,64,14,14]

Per rank and step it prints: copies to the host in the forward, in the backward before dx is
written, and after it (parameter gradients); the collectives and their bytes. Counts, not
times: the emulator's times say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import threading

import numpy as np

from normgen import load
from normgen.runtime import select
from normgen.testing.devicesync import RecordingGroup


def step(group: RecordingGroup, shape: tuple[int, ...], device_path: bool) -> dict[str, int]:
    op, dev = load("batch_norm"), group.device
    rng = np.random.default_rng(group.rank)
    c = shape[1]
    x, dy = dev.put(rng.standard_normal(shape)), dev.put(rng.standard_normal(shape))
    w, b, rm, rv = dev.put(np.ones(c)), dev.put(np.zeros(c)), dev.put(np.zeros(c)), dev.put(np.ones(c))
    select(x).device_stats = device_path  # this rank's backend (one per RecordingDevice)
    if not device_path:  # the parameter gradients as before too: partials summed on the host
        _host_param_sums(select(x))
    fwd = op.forward(x, w, b, running_mean=rm, running_var=rv, training=True, process_group=group)
    forward_reads = dev.count("to_host")
    fwd_calls, fwd_bytes = group.calls, group.bytes_sent
    group.bytes_sent = group.bytes_received = group.calls = 0
    dev.clear()
    op.backward(dy, fwd)
    names = [w if k == "launch" else k for k, w in dev.log]
    apply_at = names.index("backward_apply")
    before = sum(1 for k, _ in dev.log[:apply_at] if k == "to_host")
    after = sum(1 for k, _ in dev.log[apply_at:] if k == "to_host")
    return {"forward_to_host": forward_reads, "backward_to_host_before_dx": before,
            "backward_to_host_after_dx": after, "forward_collectives": fwd_calls, "forward_bytes": fwd_bytes,
            "backward_collectives": group.calls, "backward_bytes": group.bytes_sent}


def _host_param_sums(backend) -> None:
    """This backend's param_sums replaced by the host's bincount (what the backend did before)."""
    from normgen.runtime import cuda_ranks

    kernels = cuda_ranks.kernels(backend)
    dev = backend.device

    def on_host(part, width, first, order, offsets, n_param, dw, db):
        rows, ends = order.raw(), offsets.raw()  # constants of the plan, which the host path held on the host
        host = dev.to_host(part).reshape(-1, width)[:, first:first + 2]
        index = np.repeat(np.arange(n_param), np.diff(ends))
        dw[...] = dev.asarray(np.bincount(index, weights=host[rows, 0], minlength=n_param))
        db[...] = dev.asarray(np.bincount(index, weights=host[rows, 1], minlength=n_param))

    kernels.param_sums = on_host


def run(world: int, shape: tuple[int, ...], device_path: bool) -> list[dict[str, int]]:
    groups = RecordingGroup.threads(world)
    out: list = [None] * world

    def rank(g: RecordingGroup) -> None:
        out[g.rank] = step(g, shape, device_path)

    threads = [threading.Thread(target=rank, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--shape", default="8,64,14,14")
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    for label, device_path in (("host path (before)", False), ("device path", True)):
        counts = run(args.world, shape, device_path)
        print(f"{label:20s} batch_norm {shape} x {args.world} ranks, rank 0: {counts[0]}")


if __name__ == "__main__":
    main()
