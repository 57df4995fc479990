"""A Forward rebuilt from what a forward call leaves behind (op/saved.py: what normgen.torch's
backward op runs from) gives the same gradients as the Forward itself, for every bundled
spec, in training and in evaluation with running statistics."""

from __future__ import annotations

import numpy as np
import pytest

import normgen
from normgen.op.saved import restore
from normgen.spec import bundled_names

X4 = (4, 6, 5, 5)
# spec -> (input shape, call-time sizes, parameter shape or None, running statistics shape or None)
CASES = {
    "batch_norm": (X4, {}, (6,), (6,)),
    "instance_norm": (X4, {}, (6,), (6,)),
    "group_norm": (X4, {"num_groups": 3}, (6,), None),
    "layer_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "rms_norm": (X4, {"normalized_shape": (5, 5)}, (5, 5), None),
    "switchable_norm": (X4, {}, (6,), (6,)),
    "weight_norm": ((6, 3, 3, 3), {}, (6,), None),
    "weight_standardization": ((4, 3, 3, 3), {}, None, None),
    "standardize": ((5, 3), {}, None, None),
    "add_rms_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "add_layer_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "gated_rms_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "gemma_rms_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "group_norm_silu": (X4, {"num_groups": 3}, (6,), None),
}


def rand(shape, seed, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


def test_cases_cover_every_bundled_spec():
    assert sorted(CASES) == sorted(bundled_names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_restored_forward_gives_the_same_gradients(name):
    shape, sizes, pshape, rshape = CASES[name]
    op = normgen.load(name)
    x = rand(shape, 0, scale=3, shift=1)
    dy = rand(shape, 7)
    kw = dict(sizes)
    if pshape is not None:
        kw.update((p, rand(pshape, i + 1)) for i, p in enumerate(op.spec.param_names))
    if op.spec.is_mixture:
        kw.update(mean_weight=np.array([0.1, 0.5, -0.2]), var_weight=np.array([0.3, -0.1, 0.2]))
    kw.update((e, rand(shape, 10 + i)) for i, e in enumerate(op.spec.extras))  # a fused spec's extra inputs
    modes = [{}]
    if rshape is not None:  # evaluation: normalized with (and restored from) the running statistics
        modes.append({"training": False, "running_mean": rand(rshape, 3),
                      "running_var": np.abs(rand(rshape, 4)) + 0.5})
    for mode in modes:
        fwd = op.forward(x, **kw, **mode)
        want = op.backward(dy, fwd)
        got = op.backward(dy, restore(op, x, fwd.kstats, fwd.moments, **kw, **mode))
        # a kept prologue h: the Forward's backward reads it, the restored one evaluates it again
        # (the reassociating sums may round h - mean differently: the last bit)
        same = np.testing.assert_array_equal if not (op.spec.fuse and op.spec.fuse.keep_prologue) else \
            (lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15))
        same(got.dx, want.dx)
        assert got.params.keys() == want.params.keys()
        for p in want.params:
            same(got.params[p], want.params[p])
        for e in op.spec.extras:
            same(got[e], want[e])
