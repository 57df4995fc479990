"""Cost of statistics across processes: bytes per step and synchronization overhead.

    python bench/distributed.py [--worlds 2,4] [--shape 16,128,28,28] [--steps 30]

For each world size, gloo processes on loopback (one thread each) time a batch_norm
training step (forward + backward) on their shard, three ways, interleaved:
  local   normgen without a process group (per-rank statistics: what is being synchronized)
  sync    normgen with the process group (statistics over the whole batch)
  torch   torch.nn.functional.batch_norm, per rank (no sync: torch.nn.SyncBatchNorm
          refuses CPU tensors, recorded below)
  gathers the three small all-gathers of a sync step alone (the latency floor of gloo here)
and report the median step time, the overhead of sync over local, and the bytes each rank
sends per step, next to what PyTorch's SyncBatchNorm algorithm sends for the same channels.
Writes bench/results/distributed-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rank_main(rank: int, world: int, init: str, shape: tuple[int, ...], steps: int, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np
    import torch
    import torch.distributed as dist

    from normgen import load
    from normgen.runtime import cpu
    from normgen.op.distributed import group_of

    cpu.set_num_threads(1)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = group_of(distributed=True)
    op = load("batch_norm")
    c = shape[1]
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    tx = torch.from_numpy(x).clone().requires_grad_(True)
    tw, tb = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    trm, trv = torch.zeros(c), torch.ones(c)

    def local():
        fwd = op.forward(x, w, b, running_mean=rm, running_var=rv, training=True)
        op.backward(dy, fwd)

    def sync():
        fwd = op.forward(x, w, b, running_mean=rm, running_var=rv, training=True, process_group=group)
        op.backward(dy, fwd)

    def torch_local():
        y = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True)
        torch.autograd.grad(y, [tx, tw, tb], torch.from_numpy(dy))

    moments, sums, count = np.zeros((c, 3)), np.zeros((c, 2)), np.zeros(1)

    def collectives():  # the three all-gathers of a sync step alone: the latency floor
        group.gather(count)
        group.gather(moments)
        group.gather(sums)

    runs = {"local": local, "sync": sync, "torch": torch_local, "collectives": collectives}
    for fn in runs.values():
        for _ in range(3):
            fn()
    before = group.bytes_sent, group.calls
    sync()
    per_step = group.bytes_sent - before[0], group.calls - before[1]
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for k, fn in runs.items():
            dist.barrier()  # every rank starts the step together, as in training
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    torch_sync_error = ""
    try:
        torch.nn.SyncBatchNorm(c)(tx)
    except Exception as e:  # noqa: BLE001 - recorded: PyTorch's SyncBatchNorm is GPU-only
        torch_sync_error = f"{type(e).__name__}: {e}"
    if rank == 0:
        from normgen.op.distributed import torch_sync_batchnorm_bytes

        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        Path(out).write_text(json.dumps({
            "world": world, "shape_per_rank": list(shape), "ms": ms, "overhead_sync_vs_local": ms["sync"] / ms["local"],
            "bytes_per_step": per_step[0], "collectives_per_step": per_step[1],
            "torch_syncbn_bytes_per_step": sum(torch_sync_batchnorm_bytes(c, world).values()),
            "data_bytes_per_rank": x.nbytes, "torch_syncbn_on_cpu": torch_sync_error or "ran"}))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--shape", default="16,128,28,28", help="per-rank batch_norm input")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    import torch.multiprocessing as mp

    shape = tuple(int(s) for s in args.shape.split(","))
    rows = []
    for world in (int(w) for w in args.worlds.split(",")):
        tmp = tempfile.mkdtemp()
        out = os.path.join(tmp, "r.json")
        print(f"world {world}: {world} gloo processes, batch_norm {list(shape)} per rank, {args.steps} steps ...",
              flush=True)
        mp.spawn(rank_main, args=(world, "file://" + os.path.join(tmp, "init"), shape, args.steps, out),
                 nprocs=world, join=True)
        rows.append(json.loads(Path(out).read_text()))
    print(f"\n{'world':>5} {'local ms':>9} {'sync ms':>8} {'torch ms':>9} {'3 gathers ms':>12} {'sync/local':>10} "
          f"{'bytes/step':>10} {'torch SyncBN alg.':>17} {'data/rank':>10}")
    for r in rows:
        print(f"{r['world']:>5} {r['ms']['local']:>9.2f} {r['ms']['sync']:>8.2f} {r['ms']['torch']:>9.2f} "
              f"{r['ms']['collectives']:>12.2f} "
              f"{r['overhead_sync_vs_local']:>10.2f} {r['bytes_per_step']:>10} {r['torch_syncbn_bytes_per_step']:>17} "
              f"{r['data_bytes_per_rank']:>10}")
    print(f"\ntorch.nn.SyncBatchNorm on CPU tensors: {rows[0]['torch_syncbn_on_cpu']}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = ROOT / "bench" / "results" / f"distributed-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from normgen.bench.cpu import machine

    path.write_text(json.dumps({"machine": machine(), "results": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
