"""Bad calls: every one is a CallError that says what was expected and what was received,
and running statistics are exactly as they were after any failed call."""

from __future__ import annotations

import numpy as np
import pytest

import normgen
from normgen import CallError, ops
from normgen.testing.hostile import BAD_CALLS

X = np.random.default_rng(0).standard_normal((4, 6, 5)).astype(np.float32)


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_calls_raise_clear_errors(case):
    call, pattern = BAD_CALLS[case]
    with pytest.raises(CallError, match=pattern):
        call()


def test_failed_calls_leave_running_statistics_unchanged():
    op = normgen.load("batch_norm")
    rm = np.arange(6, dtype=np.float32)
    rv = np.arange(1, 7, dtype=np.float32)
    before = (rm.copy(), rv.copy())
    failing = [
        dict(weight=np.ones(5, np.float32)),
        dict(out=np.empty((1,), np.float32)),
        dict(momentum="fast"),
        dict(bias=np.zeros(6, np.float64)),
    ]
    for kw in failing:
        with pytest.raises(CallError):
            op.forward(X, running_mean=rm, running_var=rv, training=True, **kw)
        assert np.array_equal(rm, before[0]) and np.array_equal(rv, before[1])
    with pytest.raises(CallError):  # a zero-norm weight fails after the kernel ran: nothing else changed
        ops.weight_norm(np.zeros((3, 4), np.float32), np.ones(3, np.float32))


def test_empty_batch_is_an_empty_result():
    """As in PyTorch: empty inputs give empty outputs (also when the groups have no elements),
    and running statistics stay as they were."""
    y = ops.layer_norm(np.zeros((0, 5), np.float32), (5,))
    assert y.shape == (0, 5)
    assert ops.layer_norm(np.zeros((3, 0), np.float32), (0,)).shape == (3, 0)
    rm, rv = np.arange(3, dtype=np.float32), np.ones(3, np.float32)
    assert ops.batch_norm(np.zeros((0, 3, 4), np.float32), rm, rv, training=True).shape == (0, 3, 4)
    assert np.array_equal(rm, np.arange(3)) and np.array_equal(rv, np.ones(3))
    fwd = normgen.load("group_norm").forward(np.zeros((0, 6, 3), np.float32), num_groups=3)
    assert fwd.y.shape == (0, 6, 3) and fwd.mean.shape == (0, 3)


def test_repeated_calls_take_the_recipe_and_match_the_general_path():
    """The second call of a structure runs the remembered recipe (no re-checks); its results
    are those of the general path, and what the recipe cannot vouch for goes the general way."""
    from normgen.op import Op

    op = Op(normgen.load("layer_norm").spec)
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((16, 64)).astype(np.float32) for _ in range(2))
    w, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    first = op.forward(x1, w, b, normalized_shape=(64,))
    assert len(op._fast) == 1
    again = op.forward(x2, w, b, normalized_shape=(64,))
    general = Op(op.spec).forward(x2, w, b, normalized_shape=(64,))
    assert again.y is not first.y and np.array_equal(again.y, general.y)
    assert np.array_equal(again.kstats, general.kstats) and again.call.x is x2
    grads = op.backward(np.ones_like(x2), again)  # the recipe's Forward serves the backward
    assert np.array_equal(grads.dx, Op(op.spec).backward(np.ones_like(x2), general).dx)
    # a wrong parameter still fails, with the general path's message
    with pytest.raises(CallError, match=r"weight has shape \(63,\), expected \(64,\)"):
        op.forward(x2, w[:63], b, normalized_shape=(64,))
    # out= is written by a recipe too; what its structure cannot vouch for is checked each call
    out = np.empty_like(x2)
    assert op.forward(x2, w, b, normalized_shape=(64,), out=out).y is out
    out[...] = np.nan
    assert op.forward(x2, w, b, normalized_shape=(64,), out=out).y is out and np.array_equal(out, general.y)
    out.flags.writeable = False
    with pytest.raises(CallError, match="out is read-only"):
        op.forward(x2, w, b, normalized_shape=(64,), out=out)
    with pytest.raises(CallError, match="out overlaps an input"):
        op.forward(x2, w, b, normalized_shape=(64,), out=x2)
    # a parameter the general path copies (not dense) is never trusted to the recipe
    w_strided = np.repeat(w, 2)[::2]
    before = len(op._fast)
    assert np.array_equal(op.forward(x2, w_strided, b, normalized_shape=(64,)).y, general.y)
    assert len(op._fast) == before


def test_a_recipe_keeps_no_arrays():
    """Remembering a call's structure must not keep its input or output alive."""
    import weakref

    from normgen.op import Op

    op = Op(normgen.load("layer_norm").spec)
    x = np.ones((4, 8), np.float32)
    y = op(x, normalized_shape=(8,))
    refs = weakref.ref(x), weakref.ref(y)
    assert len(op._fast) == 1
    del x, y
    assert refs[0]() is None and refs[1]() is None


def test_eps_zero_on_a_group_without_spread_is_a_clear_error():
    x = np.ones((2, 4), np.float32)
    x[1] = np.arange(4)
    with pytest.raises(CallError, match=r"group at kept index \(0,\) has zero variance, so \(x - mean\) / std "
                                        r"is undefined \(eps = 0\)"):
        ops.layer_norm(x, (4,), eps=0.0)
    with pytest.raises(CallError, match=r"zero mean square, so x / rms is undefined"):
        ops.rms_norm(np.zeros((2, 4), np.float32), (4,), eps=0.0)
    nan = x.copy()
    nan[0, 0] = np.nan  # NaN poisons its own group only, and is not an error
    y = ops.layer_norm(nan, (4,), eps=0.0)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
