"""Inference calls through normgen.torch (no autograd): y alone through the Op's recipe, equal to
the general path and to torch.nn, in x's memory order, without copies; the CPU threads claim
pieces of a range, each exactly once; and the --small and --interleaved benchmarks run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import normgen.torch as nt
from normgen import CallError
from normgen.op import Op
from normgen.runtime import threads as cpu_threads
from normgen.torch import kernels

torch.manual_seed(0)

LAYERS = [
    ("LayerNorm", lambda m: m.LayerNorm(64), (3, 5, 64), None),
    ("RMSNorm", lambda m: m.RMSNorm(64, eps=1e-6), (7, 64), None),
    ("GroupNorm-channels_last", lambda m: m.GroupNorm(4, 16), (2, 16, 5, 5), torch.channels_last),
    ("LayerNorm-no_affine", lambda m: m.LayerNorm(64, elementwise_affine=False), (4, 64), None),
]


def _pair(make):
    ref, new = make(nn).double(), make(nt).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
    new.load_state_dict(ref.state_dict())
    return ref, new


@pytest.mark.parametrize("make, shape, fmt", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_inference_matches_torch_and_the_general_path(make, shape, fmt, monkeypatch):
    ref, new = _pair(make)
    x = torch.randn(shape, dtype=torch.float64)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    general = []
    forward_impl = kernels.forward_impl
    monkeypatch.setattr("normgen.torch.function.forward_impl",
                        lambda *a: general.append(1) or forward_impl(*a))
    with torch.no_grad():
        expected = ref(x)
        for _ in range(3):  # the first call plans and leaves a recipe; the others take it
            y = new(x)
            torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
            assert y.stride() == torch.empty_like(x).stride() and not y.requires_grad
    assert not general  # no statistics were computed for nobody
    # the general path (statistics, moments: what autograd would save) gives the same y
    w, b = getattr(new, "weight", None), getattr(new, "bias", None)
    spec = {"LayerNorm": "layer_norm", "RMSNorm": "rms_norm", "GroupNorm": "group_norm"}[type(new).__name__]
    sizes = (f"num_groups={new.num_groups}" if spec == "group_norm"
             else f"normalized_shape=({','.join(str(d) for d in new.normalized_shape)},)")
    y_general = forward_impl(x, None if w is None else w.detach(), None if b is None else b.detach(), [], None, None,
                             None, None, spec, sizes, new.eps, True, "")[0]
    assert torch.equal(y, y_general)


def test_inference_runs_the_kernels_on_the_tensors_memory(monkeypatch):
    seen = []
    call = Op.__call__

    def spy(self, x, *args, **kwargs):
        seen.append((x, kwargs.get("out")))
        return call(self, x, *args, **kwargs)

    monkeypatch.setattr(Op, "__call__", spy)
    x = torch.randn(4, 32, dtype=torch.float64)[:, ::2]  # a strided view
    with torch.no_grad():
        y = nt.LayerNorm(16).double()(x)
    xa, out = seen[-1]
    assert np.shares_memory(xa, x.numpy()) and xa.strides == x.numpy().strides
    assert np.shares_memory(out, y.numpy())


def test_inference_also_when_nothing_requires_grad():
    m = nt.LayerNorm(8).requires_grad_(False)
    x = torch.randn(3, 8)
    y = m(x)  # grad mode on, but autograd records nothing
    assert y.grad_fn is None
    torch.testing.assert_close(y, nn.functional.layer_norm(x, (8,), m.weight, m.bias))
    m.requires_grad_(True)
    assert m(x).grad_fn is not None  # a parameter that needs a gradient: the autograd path


def test_inference_errors_are_the_general_paths():
    with torch.no_grad():
        with pytest.raises(CallError, match="dtype torch.int64; normgen takes torch.float16, torch.bfloat16"):
            nt.LayerNorm(5)(torch.arange(10).reshape(2, 5))
        y = nt.LayerNorm(5)(torch.randn(2, 5).bfloat16())  # half types: the general path, not the recipe
        assert y.dtype == torch.bfloat16
        with pytest.raises(CallError, match=r"normalized_shape=\(5,\) does not match the trailing dimensions \(6,\)"):
            nt.LayerNorm(5)(torch.randn(2, 6))
        y = nt.LayerNorm(5)(torch.randn(0, 5))  # empty: an empty y
        assert y.shape == (0, 5)


def test_threads_claim_every_piece_exactly_once(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_threads", 3)
    for n, t, claim in ((1000, 3, True), (7, 3, True), (5, 8, True), (1, 2, True), (1000, 3, False), (2, 3, False)):
        covered = np.zeros(n, np.int64)
        calls = []

        def piece(covered, calls, lock, lo, hi):
            with lock:
                covered[lo:hi] += 1
                calls.append((lo, hi))
        cpu_threads.split(piece, n, t, covered, calls, threading.Lock(), claim=claim)
        assert (covered == 1).all(), (n, t)
        pieces = min(n, cpu_threads.PIECES_PER_THREAD * t) if claim else min(n, t)
        assert len(calls) == pieces, (n, t, claim)


def test_a_piece_that_raises_raises_in_the_caller(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_threads", 2)

    def piece(lo, hi):
        if lo > 0:
            raise ValueError(f"piece at {lo}")
    with pytest.raises(ValueError, match="piece at"):
        cpu_threads.split(piece, 100, 2)


def test_small_and_interleaved_benchmarks_run():
    from normgen.bench import interleaved, small

    res = small.run(paths=("ops", "module", "module+grad"), rounds=2, inner=2, warmup=1, only=["rms_norm [1, 4096]"])
    assert [r.path for r in res] == ["ops", "module", "module+grad"]
    assert all(r.us["normgen"] > 0 and r.us["torch"] > 0 for r in res)
    assert "rms_norm [1, 4096]" in small.table(res) and "ng/torch" in small.table(res)
    case = interleaved.InterleavedCase("layer_norm [64,256]", "layer_norm", (64, 256))
    calls, between = interleaved.setup(case, "backward")
    ms, busy = interleaved.measure(calls, between, repeat=2, warmup=1)
    assert set(ms) == {"normgen", "torch"} and all(v["alone"] > 0 and v["interleaved"] > 0 for v in ms.values())
    assert busy >= 0


def test_bench_small_cli_writes_json_and_refuses_unknown_paths(tmp_path, capsys):
    import json

    from normgen import cli

    assert cli.main(["bench", "--small", "--paths", "foo"]) == 2
    assert "unknown path(s) foo" in capsys.readouterr().err
    out = tmp_path / "small.json"
    assert cli.main(["bench", "--small", "--paths", "ops", "--case", "rms_norm [1, 4096]", "--repeat", "2",
                     "--calls", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["path"] for r in data["results"]] == ["ops"] and data["results"][0]["case"] == "rms_norm [1, 4096]"
    assert "ng/torch" in capsys.readouterr().out
