"""The CUDA kernels on a real GPU, through CuPy: skipped (with the reason) where CuPy sees
no GPU. CI has none; `bench/gpu.sh` runs these on a GPU machine. The same kernels run on
the CPU emulator in test_cuda.py everywhere."""

import numpy as np
import pytest

from normgen import load
from normgen.verify import check
from normgen.runtime.cuda import cupy_device
from normgen.spec.library import bundled_names

pytestmark = pytest.mark.skipif(cupy_device() is None, reason="no CUDA GPU visible to CuPy")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.skip(reason="the CUDA templates do not fuse yet (issue 13)"))
    if load(n).spec.fuse is not None else n for n in bundled_names()])
def test_spec_against_oracle_on_gpu(name):
    """Every case x layout x dtype x mode of every bundled spec, CuPy arrays, against the oracle."""
    results = check.check_spec(load(name), dtypes=check.CUDA_DTYPES, target="cuda")
    failed = [f"{r.case} {r.layout} {r.dtype} {r.mode} {r.plan}: {r.error or r.worst}" for r in results if not r.ok]
    assert results and not failed, "\n".join(failed[:20])


def test_cupy_arrays_dispatch_to_cuda_and_stay_on_device():
    import cupy as cp

    x = cp.random.standard_normal((64, 1000), dtype=cp.float32)
    fwd = load("layer_norm").forward(x, normalized_shape=(1000,))
    assert isinstance(fwd.y, cp.ndarray) and fwd.backend.name == "cuda"
    ref = load("layer_norm").forward(x.get(), normalized_shape=(1000,))
    np.testing.assert_allclose(fwd.y.get(), ref.y, atol=2e-5)


def test_batch_norm_running_stats_on_device_match_cpu():
    import cupy as cp

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 5, 5)).astype(np.float32)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    grm, grv = cp.asarray(rm), cp.asarray(rv)
    op = load("batch_norm")
    for _ in range(3):
        op.forward(x, running_mean=rm, running_var=rv, training=True)
        op.forward(cp.asarray(x), running_mean=grm, running_var=grv, training=True)
    np.testing.assert_allclose(grm.get(), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grv.get(), rv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_modules_on_cuda_tensors_match_torch_nn(dtype):
    """normgen.torch layers on CUDA tensors (DLPack to CuPy, current stream), channels_last kept."""
    torch = pytest.importorskip("torch")
    import normgen.torch as nt

    tdt = getattr(torch, dtype)
    tol = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}[dtype]
    torch.manual_seed(0)
    x = torch.randn(8, 32, 9, 9, device="cuda", dtype=tdt).to(memory_format=torch.channels_last)
    for ours, ref in ((nt.GroupNorm(4, 32), torch.nn.GroupNorm(4, 32)), (nt.BatchNorm2d(32), torch.nn.BatchNorm2d(32)),
                      (nt.LayerNorm([32, 9, 9]), torch.nn.LayerNorm([32, 9, 9]))):
        ours, ref = ours.cuda().to(tdt), ref.cuda().to(tdt)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = ours(xa), ref(xb)
        assert ya.is_cuda and ya.dtype == tdt and ya.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ya.float(), yb.float(), atol=tol, rtol=tol)
        dy = torch.randn_like(ya)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad.float(), xb.grad.float(), atol=tol * 10, rtol=tol * 10)
        torch.testing.assert_close(ours.weight.grad.float(), ref.weight.grad.float(), atol=tol * 50, rtol=tol * 10)
