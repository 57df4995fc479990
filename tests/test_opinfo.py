"""PyTorch's own sample inputs (OpInfo) for the five normalization functionals: normgen's
twins in normgen.torch accept everything torch.nn.functional accepts and give the same
outputs, running statistics and gradients (NaN where PyTorch gives NaN: a negative eps)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch.testing._internal needs it

import normgen.torch as nt  # noqa: E402
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

TWINS = {"nn.functional.layer_norm": nt.layer_norm, "nn.functional.group_norm": nt.group_norm,
         "nn.functional.batch_norm": nt.batch_norm, "nn.functional.instance_norm": nt.instance_norm,
         "nn.functional.rms_norm": nt.rms_norm}
OPS = [op for op in op_db if op.name in TWINS and op.variant_test_name == ""]


def _samples():
    for op in OPS:
        for dtype in (torch.float32, torch.float64):
            for i, s in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
                yield pytest.param(op, s, id=f"{op.name.rsplit('.', 1)[1]}-{str(dtype)[6:]}-{i}")


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    return v


@pytest.mark.parametrize("op, sample", list(_samples()))
def test_opinfo_samples_forward_and_backward(op, sample):
    tol = {"rtol": 1e-4, "atol": 1e-4} if sample.input.dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    runs = []
    for fn in (op.op, TWINS[op.name]):
        x = _clone(sample.input)
        args = [_clone(a) for a in sample.args]
        kwargs = {k: _clone(v) for k, v in sample.kwargs.items()}
        y = fn(x, *args, **kwargs)
        grads = None
        if y.requires_grad and y.numel():
            leaves = [t for t in [x, *args, *kwargs.values()] if isinstance(t, torch.Tensor) and t.requires_grad]
            dy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
            grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
        state = [t.detach() for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor) and not t.requires_grad]
        runs.append((y.detach(), grads, state))
    (y_ref, g_ref, s_ref), (y_ng, g_ng, s_ng) = runs
    torch.testing.assert_close(y_ng, y_ref, equal_nan=True, **tol)
    for a, b in zip(s_ng, s_ref):  # running statistics after the call
        torch.testing.assert_close(a, b, equal_nan=True, **tol)
    assert (g_ng is None) == (g_ref is None)
    if g_ref is not None:
        for a, b in zip(g_ng, g_ref):
            if b is None or a is None:
                assert a is None or not a.abs().sum(), "normgen gives a gradient PyTorch does not"
                continue
            torch.testing.assert_close(a, b, equal_nan=True, **tol)
