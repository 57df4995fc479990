"""PyTorch's graph capture and transforms with normgen layers: torch.export, ONNX (decomposed
into standard operations: the file runs without normgen), torch.func.grad and vmap (per-sample
gradients), torch.jit.trace; torch.jit.script fails with one clear sentence."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import normgen.torch as nt  # noqa: E402
from normgen import NormgenError  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), nt.BatchNorm2d(8), nt.GroupNorm(2, 8), nt.InstanceNorm2d(8, affine=True),
        torch.nn.Flatten(2), nt.LayerNorm(36), nt.RMSNorm(36),
        nt.from_spec("layer_norm", normalized_shape=(36,)))


def test_torch_export_runs_normgen_ops():
    m = _model().eval()
    x = torch.randn(2, 3, 6, 6)
    ep = torch.export.export(m, (x,))
    assert "normgen.forward" in str(ep.graph)
    x2 = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(ep.module()(x2), m(x2))


def test_decompositions_give_a_graph_of_standard_operations():
    m = _model().eval()
    with torch.no_grad():  # running statistics that are not the defaults
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 6, 6)
    ep = torch.export.export(m, (x,)).run_decompositions(nt.decompositions())
    assert "normgen" not in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-5, atol=1e-5)


ONNX_RUN = textwrap.dedent("""
    import sys
    sys.modules["normgen"] = None  # the exported file must run without normgen
    import numpy as np, onnxruntime as ort
    sess = ort.InferenceSession(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], sess.run(None, {sess.get_inputs()[0].name: x})[0])
""")


def test_onnx_export_runs_in_onnxruntime_without_normgen(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    m = _model().eval()
    x = torch.randn(2, 3, 6, 6)
    nt.onnx_export(m, (x,), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run([sys.executable, "-c", ONNX_RUN, str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), m(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_torch_func_grad_and_per_sample_gradients():
    from torch.func import functional_call, grad, vmap

    m = torch.nn.Sequential(torch.nn.Linear(6, 6), nt.LayerNorm(6), nt.RMSNorm(6)).double()
    ref = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6), torch.nn.RMSNorm(6)).double()
    ref.load_state_dict(m.state_dict())
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(5, 6, dtype=torch.float64)

    def loss(module):
        return lambda p, xi: functional_call(module, p, (xi.unsqueeze(0),)).square().sum()

    g = grad(loss(m))(params, x[0])
    g_ref = grad(loss(ref))(params, x[0])
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k])
    per_sample = vmap(grad(loss(m)), in_dims=(None, 0))(params, x)  # one gradient per sample
    per_sample_ref = vmap(grad(loss(ref)), in_dims=(None, 0))(params, x)
    for k in per_sample_ref:
        torch.testing.assert_close(per_sample[k], per_sample_ref[k])
    torch.testing.assert_close(vmap(m)(x.unsqueeze(1)), vmap(ref)(x.unsqueeze(1)))


def test_running_statistics_under_vmap_are_refused_clearly():
    from torch.func import vmap

    bn = nt.BatchNorm1d(4)  # training mode: its running statistics would be written per mapped element
    with pytest.raises(NormgenError, match="running statistics cannot be updated under torch.func.vmap"):
        vmap(bn)(torch.randn(3, 5, 4))


def test_torch_jit_trace():
    m = _model().eval()
    traced = torch.jit.trace(m, (torch.randn(2, 3, 6, 6),))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(traced(x), m(x))


def test_torch_jit_script_says_what_to_use_instead():
    with pytest.raises(NormgenError, match=r"cannot be compiled by torch.jit.script: use torch.compile, or "
                                            r"torch.export"):
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 4), nt.LayerNorm(4)))
