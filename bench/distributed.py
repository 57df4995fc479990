"""Cost of statistics across processes: bytes per rank per step, and synchronization overhead.

    python bench/distributed.py [--worlds 2,4,8] [--shape 16,128,28,28] [--steps 30]
    python bench/distributed.py --model        # the modeled table at 64 / 1,024 / 8,192 ranks

For each world size, gloo processes on loopback (one thread each) time a batch_norm
training step (forward + backward) on their shard, interleaved:
  local      normgen without a process group (per-rank statistics: what is being synchronized)
  allreduce  normgen with the process group, sync="allreduce" (the default)
  gather     normgen with the process group, sync="gather" (rank-order merging)
  torch      torch.nn.functional.batch_norm, per rank (no sync: torch.nn.SyncBatchNorm
             refuses CPU tensors, recorded below)
and report the median step time and the bytes each rank sends and receives per step
(every collective's payload, counted by normgen's Group), next to what PyTorch's
SyncBatchNorm algorithm moves for the same channels. Writes bench/results/distributed-DATE.json.
With more processes than cores the times measure the machine, not the algorithm: the bytes
are exact.
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
    from normgen.op.distributed import group_of
    from normgen.runtime import threads

    threads.set_num_threads(1)
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

    def synced(how):
        def step():
            fwd = op.forward(x, w, b, running_mean=rm, running_var=rv, training=True, process_group=group, sync=how)
            op.backward(dy, fwd)
        return step

    def torch_local():
        y = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True)
        torch.autograd.grad(y, [tx, tw, tb], torch.from_numpy(dy))

    runs = {"local": local, "allreduce": synced("allreduce"), "gather": synced("gather"), "torch": torch_local}
    for fn in runs.values():
        for _ in range(3):
            fn()
    per_step = {}
    for how in ("allreduce", "gather"):
        before = group.bytes_sent, group.bytes_received, group.calls
        runs[how]()
        per_step[how] = {"sent": group.bytes_sent - before[0], "received": group.bytes_received - before[1],
                         "collectives": group.calls - before[2]}
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
        tb = torch_sync_batchnorm_bytes(c, world)
        Path(out).write_text(json.dumps({
            "world": world, "shape_per_rank": list(shape), "ms": ms, "per_step": per_step,
            "torch_syncbn_received_per_step": tb["forward_received"] + tb["backward"],
            "data_bytes_per_rank": x.nbytes, "torch_syncbn_on_cpu": torch_sync_error or "ran"}))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="2,4,8")
    ap.add_argument("--model", action="store_true", help="print the modeled table at 64 / 1,024 / 8,192 ranks")
    ap.add_argument("--shape", default="16,128,28,28", help="per-rank batch_norm input")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    if args.model:
        print(model_table())
        return 0
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
    print(f"\n{'world':>5} {'local ms':>9} {'allreduce ms':>12} {'gather ms':>9} {'torch ms':>9} "
          f"{'allreduce sent/recv per rank':>28} {'gather sent/recv':>18} {'torch SyncBN recv':>17} {'data/rank':>10}")
    for r in rows:
        a, g = r["per_step"]["allreduce"], r["per_step"]["gather"]
        print(f"{r['world']:>5} {r['ms']['local']:>9.2f} {r['ms']['allreduce']:>12.2f} {r['ms']['gather']:>9.2f} "
              f"{r['ms']['torch']:>9.2f} {a['sent']:>14}/{a['received']:<13} {g['sent']:>8}/{g['received']:<9} "
              f"{r['torch_syncbn_received_per_step']:>17} {r['data_bytes_per_rank']:>10}")
    print(f"\ntorch.nn.SyncBatchNorm on CPU tensors: {rows[0]['torch_syncbn_on_cpu']}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = ROOT / "bench" / "results" / f"distributed-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from normgen.bench.cpu import machine

    path.write_text(json.dumps({"machine": machine(), "results": rows}, indent=1))
    print(f"wrote {path}")
    return 0


#: ResNet-50's BatchNorm layers (53): channels of the stem, then per stage (blocks x (c, c, 4c) + downsample 4c)
RESNET50_CHANNELS = [64] + [c for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3))
                            for c in [width, width, 4 * width] * blocks + [4 * width]]


def model_table(alpha_us: float = 10.0, gbps: float = 25.0) -> str:
    """Bytes a rank receives per training step, and a latency + bandwidth time model, at 64,
    1,024 and 8,192 ranks: ResNet-50's BatchNorm layers (data parallel) and the RMSNorms of an
    80-layer decoder with the hidden dimension sharded (tensor parallel, 4,096 tokens per
    step). Ring all-reduce: each rank sends and receives 2(P-1)/P of the payload, in 2(P-1)
    latency-bound steps (a tree: 2 log2 P); ring all-gather: (P-1) payloads in P-1 steps.
    alpha: per-message latency, gbps: per-rank bandwidth (GB/s). Per layer and step, normgen
    all-reduces 16 bytes (the group check) + 24 per group forward and 16 per group backward;
    gathers 8 + 24 per group and 16 per group; PyTorch's SyncBatchNorm all-gathers
    (2C + 1) float32 forward and all-reduces 2C float32 backward."""
    import math

    cases = {"ResNet-50 BN (53 layers, 26,560 channels)": RESNET50_CHANNELS,
             "decoder RMSNorm, TP (160 norms x 4,096 tokens)": [4096] * 160}
    rows = ["| workload | ranks | normgen all-reduce: received | time, ring / tree | normgen gather: received | "
            "time | PyTorch SyncBN algorithm: received | time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, groups in cases.items():
        g, layers = sum(groups), len(groups)
        for p in (64, 1024, 8192):
            ring = 2 * (p - 1) / p
            ar = ring * (layers * 16 + 24 * g + 16 * g)  # three all-reduces per layer
            ar_ring = layers * 3 * 2 * (p - 1) * alpha_us + ar / (gbps * 1e3)
            ar_tree = layers * 3 * 2 * math.log2(p) * alpha_us + ar / (gbps * 1e3)
            ga = (p - 1) * (layers * 8 + 24 * g + 16 * g)  # three all-gathers per layer
            ga_time = layers * 3 * (p - 1) * alpha_us + ga / (gbps * 1e3)
            tb = (p - 1) * 4 * (2 * g + layers) + ring * 8 * g  # an all-gather forward, an all-reduce backward
            tb_time = layers * ((p - 1) + 2 * (p - 1)) * alpha_us + tb / (gbps * 1e3)
            rows.append(f"| {label} | {p:,} | {ar / 1e6:,.2f} MB | {ar_ring / 1e3:,.1f} / {ar_tree / 1e3:,.1f} ms | "
                        f"{ga / 1e6:,.1f} MB | {ga_time / 1e3:,.1f} ms | {tb / 1e6:,.1f} MB | {tb_time / 1e3:,.1f} ms |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
