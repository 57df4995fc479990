"""Hypothesis: drawn shapes and strides for bundled specs, and drawn *specs* (random kept
sets over random axes, random centering, scale and affine axes), against the oracle."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normgen
from normgen import build_spec
from normgen.verify import oracle
from normgen.plan.bind import bind

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def strided(draw, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An array of `shape` with drawn memory order, gaps and offsets (all strides positive)."""
    nd = len(shape)
    order = draw(st.permutations(range(nd)))
    steps = [draw(st.integers(1, 3)) for _ in range(nd)]
    starts = [draw(st.integers(0, 2)) for _ in range(nd)]
    base_shape = [shape[d] * steps[d] + starts[d] for d in order]
    base = np.zeros(base_shape, dtype)
    view = base.transpose(np.argsort(order))
    view = view[tuple(slice(starts[d], starts[d] + shape[d] * steps[d], steps[d]) for d in range(nd))]
    seed = draw(st.integers(0, 2**16))
    view[...] = np.random.default_rng(seed).standard_normal(shape) * 2 + 1
    assert view.shape == tuple(shape)
    return view


def _compare(op, x, params, sizes, tol, **kw):
    fwd = op.forward(x, **params, **sizes, **kw)
    ref = oracle.forward(op.spec, x, params, sizes=sizes, **kw)
    np.testing.assert_allclose(fwd.y, ref.y, rtol=tol, atol=tol)
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(x.dtype)
    grads = op.backward(dy, fwd)
    oref = oracle.backward(op.spec, dy, x, params, sizes=sizes, **kw)
    scale = max(1.0, float(np.abs(oref["x"]).max()))
    np.testing.assert_allclose(grads.dx, oref["x"], rtol=tol, atol=tol * scale)
    for p in params:
        scale = max(1.0, float(np.abs(oref[p]).max()))
        np.testing.assert_allclose(grads[p], oref[p], rtol=tol, atol=tol * scale)


@st.composite
def bundled_calls(draw):
    name = draw(st.sampled_from(["layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm"]))
    n = draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    if name in ("layer_norm", "rms_norm"):
        norm = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=2)))
        shape, sizes = (n, draw(st.integers(1, 5))) + norm, {"normalized_shape": norm}
    elif name == "group_norm":
        g, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        shape, sizes = (n, g * c) + spatial, {"num_groups": g}
    else:
        shape, sizes = (max(n, 2), draw(st.integers(1, 5))) + spatial + ((2,) if name == "instance_norm" else ()), {}
    dtype = draw(st.sampled_from(["float32", "float64"]))
    x = draw(strided(shape, dtype))
    return name, x, sizes


@SETTINGS
@given(bundled_calls())
def test_drawn_shapes_and_strides(call):
    name, x, sizes = call
    op = normgen.load(name)
    b = bind(op.spec, x.shape, sizes)
    rng = np.random.default_rng(3)
    params = {p: rng.standard_normal(b.param_shape).astype(x.dtype) for p in op.spec.affine.params}
    _compare(op, x, params, sizes, 2e-4 if x.dtype == np.float32 else 1e-9)


@st.composite
def drawn_specs(draw):
    """A random variant: 2-4 axes (maybe one split), any kept subset, any valid center/scale."""
    n_axes = draw(st.integers(2, 4))
    names = ["A", "B", "C", "D"][:n_axes]
    split = draw(st.sampled_from([None] + names))
    items, parts = [], []
    for a in names:
        if a == split:
            items.append(f"({a} {a.lower()})")
            parts += [a, a.lower()]
        else:
            items.append(a)
            parts.append(a)
    kept = draw(st.lists(st.sampled_from(parts), unique=True, max_size=len(parts) - 1))
    center, scale = draw(st.sampled_from([("mean", "std"), ("none", "rms"), ("none", "l2"), ("mean", "none"),
                                          ("mean", "l2")]))
    affine = draw(st.lists(st.sampled_from(parts), unique=True, max_size=2))
    kw = {"center": center, "scale": scale}
    if scale == "l2":
        kw["eps"] = 1e-3
    if split:
        kw["sizes"] = {split: draw(st.integers(1, 3))}
    if affine:
        kw["affine"] = {"axes": " ".join(affine)}
    spec = build_spec("drawn", " ".join(items), kept=" ".join(kept), **kw)
    shape = []
    for a in names:
        size = draw(st.integers(1, 5))
        shape.append(size * (kw["sizes"][a] if a == split else 1))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    x = draw(strided(tuple(shape), dtype))
    return spec, x


@SETTINGS
@given(drawn_specs())
def test_drawn_specs_against_oracle(case):
    spec, x = case
    op = normgen.load(spec)
    b = bind(spec, x.shape, {})
    rng = np.random.default_rng(4)
    params = {p: (rng.standard_normal(b.param_shape) + 2).astype(x.dtype) for p in spec.param_names}
    _compare(op, x, params, {}, 5e-4 if x.dtype == np.float32 else 1e-8)
