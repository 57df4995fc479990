"""On a machine with a CUDA GPU: statistics across ranks through a real NCCL group (a world of
one rank: the lent machines have one GPU, and one rank still runs every kernel and collective
of the device path), checked three ways. Prints one line per check and exits non-zero when
one fails:

1. normgen.torch.SyncBatchNorm (NCCL group) against torch.nn.BatchNorm2d over a training step:
   y, dx, dweight, running statistics;
2. the same forward under torch.cuda.set_sync_debug_mode("error"): PyTorch raises on any
   synchronizing call it makes (the collective, the tensors' copies);
3. normgen.load("batch_norm").forward on CuPy arrays with the NCCL group and running
   statistics, captured in a CUDA graph (a device -> host copy or a synchronization is an
   error inside a capture), replayed on new data and compared with an eager call.

    python bench/gpu_nccl.py            (bench/gpu.sh runs it)
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback


def main() -> int:
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        print("gpu_nccl: no CUDA device; nothing to check")
        return 0
    init = "file://" + os.path.join(tempfile.mkdtemp(), "rendezvous")
    dist.init_process_group("nccl", init_method=init, rank=0, world_size=1)
    failures = 0
    for check in (check_module, check_no_sync, check_graph):
        try:
            print(f"ok   {check.__name__}: {check()}", flush=True)
        except Exception:  # noqa: BLE001 - every check reports, then the script fails
            failures += 1
            print(f"FAIL {check.__name__}:\n{traceback.format_exc()}", flush=True)
    dist.destroy_process_group()
    return 1 if failures else 0


def _pair():
    import torch

    import normgen.torch as nt

    torch.manual_seed(0)
    sync = nt.SyncBatchNorm(32).cuda()
    ref = torch.nn.BatchNorm2d(32).cuda()
    with torch.no_grad():
        for m in (sync, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, 32))
            m.bias.copy_(torch.linspace(-1, 1, 32))
    return sync, ref


def check_module() -> str:
    import torch

    sync, ref = _pair()
    x = torch.randn(8, 32, 16, 16, device="cuda") * 3 + 1
    dy = torch.randn_like(x)
    xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ys, yr = sync(xs), ref(xr)
    ys.backward(dy)
    yr.backward(dy)
    for name, a, b in (("y", ys, yr), ("dx", xs.grad, xr.grad), ("dweight", sync.weight.grad, ref.weight.grad),
                       ("running_mean", sync.running_mean, ref.running_mean),
                       ("running_var", sync.running_var, ref.running_var)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    return "SyncBatchNorm in an NCCL group equals BatchNorm2d (y, dx, dweight, running statistics)"


def check_no_sync() -> str:
    import torch

    sync, _ = _pair()
    x = torch.randn(8, 32, 16, 16, device="cuda")
    sync(x)  # compile and warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            sync(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return "a training forward makes no synchronizing PyTorch call"


def check_graph() -> str:
    import cupy as cp
    import numpy as np
    import torch

    import normgen
    from normgen.op.distributed import group_of

    op, group = normgen.load("batch_norm"), group_of(distributed=True)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((8, 32, 16, 16)).astype(np.float32))
    rm, rv = cp.zeros(32, cp.float32), cp.ones(32, cp.float32)
    y = cp.empty_like(x)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream), cp.cuda.ExternalStream(stream.cuda_stream):
        for _ in range(2):  # compile, fill CuPy's memory pool: no allocation inside the capture
            op.forward(x, out=y, running_mean=rm, running_var=rv, training=True, process_group=group)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="relaxed"):
            op.forward(x, out=y, running_mean=rm, running_var=rv, training=True, process_group=group)
    x[...] = cp.asarray(rng.standard_normal(x.shape).astype(np.float32) * 2 + 3)
    rm_before, rv_before = rm.copy(), rv.copy()
    graph.replay()
    torch.cuda.synchronize()
    want_rm, want_rv = rm_before.copy(), rv_before.copy()
    eager = op.forward(x, running_mean=want_rm, running_var=want_rv, training=True)
    for name, a, b in (("y", y, eager.y), ("running_mean", rm, want_rm), ("running_var", rv, want_rv)):
        err = float(cp.abs(a - b).max())
        if err > 1e-4:
            raise AssertionError(f"replayed graph: {name} differs from an eager call by {err:.2e}")
    return "the forward with its NCCL collectives and running update was captured in a CUDA graph and replayed"


if __name__ == "__main__":
    sys.exit(main())
