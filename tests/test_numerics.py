"""Hard numerics: large offsets, constant groups, denormals, values near the float32
maximum, NaN/Inf confinement, eps = 0, very long and very many tiny groups."""

from __future__ import annotations

import numpy as np
import pytest

import normgen
from normgen.errors import CallError
from normgen.verify import oracle
from normgen.layouts import make_array

# (spec, shape, layout, sizes): both strategies (rows, columns), both directions
CASES = [
    ("layer_norm", (16, 4096), "contiguous", {"normalized_shape": (4096,)}),
    ("batch_norm", (8, 6, 16, 16), "contiguous", {}),
    ("batch_norm", (8, 6, 16, 16), "channels_last", {}),
    ("group_norm", (4, 16, 8, 8), "channels_last", {"num_groups": 4}),
    ("instance_norm", (2, 3, 40, 40), "contiguous", {}),
    ("standardize", (20000, 8), "contiguous", {}),
    ("switchable_norm", (4, 6, 8, 8), "contiguous", {}),
]
IDS = [f"{c[0]}-{c[2]}" for c in CASES]


def _call(name, x, sizes, **kw):
    op = normgen.load(name)
    extra = {}
    if op.spec.is_mixture:
        extra = {"mean_weight": np.array([0.2, 0.3, 0.5]), "var_weight": np.array([0.1, 0.6, 0.3])}
    fwd = op.forward(x, **sizes, **extra, **kw)
    ref = oracle.forward(op.spec, x, {}, sizes=sizes, **extra, **kw)
    return op, fwd, ref, extra


@pytest.mark.parametrize("mean, std", [(1e4, 1e-2), (1e6, 1.0)])
@pytest.mark.parametrize("name, shape, layout, sizes", CASES, ids=IDS)
def test_large_offsets_normalize_within_5e_3(name, shape, layout, sizes, mean, std):
    """PyTorch's float32 layer_norm is off by ~0.15 here (E[x^2] - E[x]^2 in float32)."""
    x = make_array(np.random.default_rng(1).standard_normal(shape) * std + mean, layout, "float32")
    op, fwd, ref, extra = _call(name, x, sizes)
    err = np.abs(fwd.y - ref.y).max()
    assert err <= 5e-3, err
    assert np.abs(ref.y).std() > 0.5  # the data really were normalized to unit scale
    dy = make_array(np.random.default_rng(2).standard_normal(shape), layout, "float32")
    grads = op.backward(dy, fwd)
    gref = oracle.backward(op.spec, dy, x, {}, sizes=sizes, **extra)
    assert np.abs(grads.dx - gref["x"]).max() <= 5e-3 * max(1.0, np.abs(gref["x"]).max())


@pytest.mark.parametrize("name, shape, layout, sizes", CASES, ids=IDS)
def test_constant_groups_give_zero_not_nan(name, shape, layout, sizes):
    x = make_array(np.full(shape, 3.25), layout, "float32")
    _, fwd, _, _ = _call(name, x, sizes)
    assert np.all(np.isfinite(fwd.y)) and np.abs(fwd.y).max() < 1e-3


def test_denormals_and_values_near_the_float32_maximum():
    rng = np.random.default_rng(3)
    # denormal and tiny values with the default eps: x_hat is (close to) 0, never NaN
    for scale in (1e-41, 1e-38, 1e-20):
        x = (rng.standard_normal((6, 256)) * scale).astype(np.float32)
        op, fwd, ref, _ = _call("layer_norm", x, {"normalized_shape": (256,)})
        assert np.all(np.isfinite(fwd.y)) and np.abs(fwd.y - ref.y).max() < 1e-4, scale
    # huge values, with and without eps: the variance (~1e76) is formed in float64
    for scale, eps in ((1e37, 0.0), (3e38 / 4, 0.0), (3e38 / 4, 1e-5)):
        x = (rng.standard_normal((6, 256)) * scale).astype(np.float32)
        op, fwd, ref, _ = _call("layer_norm", x, {"normalized_shape": (256,)}, eps=eps)
        assert np.all(np.isfinite(fwd.y)), scale
        assert np.abs(fwd.y - ref.y).max() < 1e-4, scale
    x = (rng.standard_normal((200, 8)) * 3e38 / 4).astype(np.float32)
    op, fwd, ref, _ = _call("standardize", x, {}, eps=0.0)
    assert np.all(np.isfinite(fwd.y)) and np.abs(fwd.y - ref.y).max() < 1e-4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_stay_in_their_group(bad):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    x[3, 10] = bad
    op = normgen.load("layer_norm")
    fwd = op.forward(x, normalized_shape=(64,))
    assert np.all(np.isnan(fwd.y[3]))
    assert np.all(np.isfinite(np.delete(fwd.y, 3, axis=0)))
    dx = op.backward(np.ones_like(x), fwd).dx
    assert np.all(np.isfinite(np.delete(dx, 3, axis=0)))
    # the columns strategy: channels_last batch norm, bad value in channel 2
    xc = make_array(rng.standard_normal((4, 5, 6, 6)), "channels_last", "float32")
    xc[1, 2, 3, 3] = bad
    y = normgen.ops.batch_norm(xc, np.zeros(5, np.float32), np.ones(5, np.float32), training=True)
    assert np.all(np.isnan(y[:, 2]))
    assert np.all(np.isfinite(np.delete(y, 2, axis=1)))


def test_eps_zero_matches_the_oracle_and_a_constant_group_is_a_clear_error():
    x = np.random.default_rng(5).standard_normal((5, 32)).astype(np.float64)
    op, fwd, ref, _ = _call("layer_norm", x, {"normalized_shape": (32,)}, eps=0.0)
    assert np.abs(fwd.y - ref.y).max() < 1e-12
    x[2] = 1.5  # (x - mean) / std is 0 / 0 there: PyTorch gives NaN silently, normgen says where
    with pytest.raises(CallError, match=r"kept index \(2,\) has zero variance"):
        normgen.ops.layer_norm(x, 32, eps=0.0)


def test_groups_longer_than_64k_elements():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 100_003)) + 7).astype(np.float32)
    op, fwd, ref, _ = _call("layer_norm", x, {"normalized_shape": (100_003,)})
    assert np.abs(fwd.y - ref.y).max() < 1e-4
    x = make_array(rng.standard_normal((64, 2, 60, 60)), "channels_last", "float32")
    op, fwd, ref, _ = _call("batch_norm", x, {})
    assert np.abs(fwd.y - ref.y).max() < 1e-4


def test_very_many_tiny_groups():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 256, 2, 1)).astype(np.float32)
    op, fwd, ref, _ = _call("instance_norm", x, {})
    assert np.abs(fwd.y - ref.y).max() < 1e-4
    y = normgen.ops.group_norm(x, 256 * 2 // 2)  # one channel per group: groups of 2 elements
    assert np.all(np.isfinite(y))
    y1 = normgen.ops.layer_norm(x, (1,))  # groups of one element: x_hat = 0
    assert np.all(y1 == 0)
