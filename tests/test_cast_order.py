"""`[affine] cast`: where a float16/bfloat16 result is rounded to the input dtype. Llama
normalizes in float32, casts, then multiplies the weight ("before_weight"); Gemma and
torch.nn multiply first ("after_weight", the default). The oracle's semantics are checked
against PyTorch's own bfloat16 arithmetic (an implementation independent of the oracle)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import normgen
from normgen import CallError, SpecError, parse_spec
from normgen.verify import oracle

RMS = '''
name   = "my_rms"
input  = "*batch *normalized"
kept   = "*batch"
center = "none"
scale  = "rms"
eps    = 1e-6
[sizes]
normalized = "normalized_shape"
[affine]
axes = "*normalized"
bias = false
'''
LLAMA = parse_spec(RMS + 'cast = "before_weight"\n', "llama.toml")
AFTER = parse_spec(RMS, "after.toml")


def _err(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "my_rms.toml")
    return str(info.value)


def test_pinned_errors() -> None:
    assert _err(RMS + 'cast = "before"\n') == textwrap.dedent('''\
        my_rms.toml:13:9: key 'affine.cast': unknown cast 'before'
            cast = "before"
                    ^^^^^^
          allowed: 'after_weight', 'before_weight\'''')
    assert _err(RMS + "cast = 1\n").startswith("my_rms.toml:13:8: key 'affine.cast': expected a string, got an integer")
    no_weight = RMS.replace("bias = false", "weight = false\nbias = true") + 'cast = "before_weight"\n'
    assert "cast = 'before_weight' without a weight" in _err(no_weight)
    assert AFTER.affine.cast == "after_weight"
    assert "half types cast before the weight" in str(LLAMA)


def test_bfloat16_rounding_is_nearest_even() -> None:
    one = 1.0
    halfway_down = one + 2.0 ** -8  # between 1 and 1 + 2^-7: ties to the even 1
    halfway_up = one + 3 * 2.0 ** -8  # between 1 + 2^-7 and 1 + 2^-6: ties to the even 1 + 2^-6
    got = oracle.round_to(np.array([halfway_down, halfway_up, -halfway_up, np.inf, 3.0e38 * 1.2]), "bfloat16")
    assert got.tolist() == [1.0, 1.0 + 2.0 ** -6, -(1.0 + 2.0 ** -6), np.inf, np.inf]
    assert np.isnan(oracle.round_to(np.array([np.nan]), "bfloat16")).all()


def test_bfloat16_rounding_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    v = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    want = torch.from_numpy(v).to(torch.bfloat16).double().numpy()
    assert np.array_equal(oracle.round_to(v.astype(np.float64), "bfloat16"), want)


def test_oracle_orders_match_llama_and_gemma_code_in_bfloat16() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((64, 48)).astype(np.float32)).to(torch.bfloat16)
    w = torch.from_numpy(rng.standard_normal(48).astype(np.float32) * 3).to(torch.bfloat16)
    xf = x.float()
    xhat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    llama = (w * xhat.to(torch.bfloat16)).double().numpy()  # LlamaRMSNorm.forward
    gemma_order = (xhat * w.float()).to(torch.bfloat16).double().numpy()  # weight in float32, then cast
    kw = {"sizes": {"normalized_shape": (48,)}, "storage": "bfloat16"}
    x64, w64 = x.double().numpy(), w.double().numpy()
    before = oracle.round_to(oracle.forward(LLAMA, x64, {"weight": w64}, **kw).y, "bfloat16")
    after = oracle.round_to(oracle.forward(AFTER, x64, {"weight": w64}, **kw).y, "bfloat16")
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(llama), 1e-30))) - 7)
    assert np.max(np.abs(before - llama) / ulp) <= 1  # torch's float32 rsqrt may round x_hat differently
    assert np.mean(before == llama) > 0.99
    assert np.mean(after == gemma_order) > 0.99
    assert np.mean(before != after) > 0.05  # the option changes results: the orders really differ


def test_float_results_do_not_depend_on_the_order() -> None:
    x = np.random.default_rng(2).standard_normal((6, 32)).astype(np.float32)
    w = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    a = normgen.load(LLAMA).forward(x, w, normalized_shape=(32,)).y
    b = normgen.load(AFTER).forward(x, w, normalized_shape=(32,)).y
    assert np.array_equal(a, b)
    want = oracle.forward(LLAMA, x, {"weight": w}, sizes={"normalized_shape": (32,)}).y
    np.testing.assert_allclose(a, want, rtol=2e-6, atol=2e-6)


def test_half_input_with_before_weight_is_refused_until_kernels_round_there() -> None:
    x = np.ones((4, 32), np.float16)
    with pytest.raises(CallError, match="cast = 'before_weight' with float16 input is not implemented by the kernels"):
        normgen.load(LLAMA).forward(x, np.ones(32, np.float16), normalized_shape=(32,), target="cuda")
