"""Fused specs' kernels against the PyTorch lines they replace, autograd through all of them:
out, the kept prologue h, dx, every extra input's gradient, dweight and dbias, for the
bundled fused specs and two user-written ones, in contiguous, channels_last and sliced
layouts, float32 and float64. Then quantized output, save="y", and the errors of fused calls."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normgen
from normgen import CallError
from normgen.layouts import make_array
from normgen.verify import oracle

torch = pytest.importorskip("torch")
F = torch.nn.functional

USER_A = normgen.parse_spec(textwrap.dedent("""
    name = "gated_act_norm"
    input = "N C *spatial"
    kept = "N"
    [affine]
    axes = "C"
    weight_offset = 0.5
    [fuse]
    prologue = "tanh(x) * a - b / 2 + gelu(x) * 0.1"
    keep_prologue = true
    epilogue = "gelu_tanh(y) * sigmoid(b) + abs(y) * 0.25 + square(f) * y"
    """), "gated_act_norm.toml")
USER_B = normgen.parse_spec(textwrap.dedent("""
    name = "shifted_batch_norm_relu"
    input = "N C *spatial"
    kept = "C"
    [affine]
    axes = "C"
    [fuse]
    prologue = "x / (1 + exp(-g)) + relu(x - g)"
    epilogue = "relu(y) - 0.5 * y + exp(y * 0.1)"
    """), "shifted_batch_norm_relu.toml")

#: (op, shape, sizes) per case; 4-D so that channels_last differs from contiguous
CASES = {
    "add_rms_norm": ("add_rms_norm", (2, 3, 5, 24), {"normalized_shape": (24,)}),
    "add_layer_norm": ("add_layer_norm", (2, 3, 5, 24), {"normalized_shape": (5, 24)}),
    "group_norm_silu": ("group_norm_silu", (3, 12, 5, 6), {"num_groups": 4}),
    "gated_rms_norm": ("gated_rms_norm", (2, 3, 5, 24), {"normalized_shape": (24,)}),
    "gemma_rms_norm": ("gemma_rms_norm", (2, 3, 5, 24), {"normalized_shape": (24,)}),
    "user_a": (USER_A, (3, 8, 5, 6), {}),
    "user_b": (USER_B, (4, 16, 5, 6), {}),
}


def _torch_lines(name, x, e, p, sizes):
    """(out, h or None): the unfused PyTorch composition of a case."""
    if name in ("add_rms_norm", "add_layer_norm"):
        h = x + e["residual"]
        if name == "add_rms_norm":
            return F.rms_norm(h, sizes["normalized_shape"], p["weight"]), h
        return F.layer_norm(h, sizes["normalized_shape"], p["weight"], p["bias"], eps=1e-5), h
    if name == "group_norm_silu":
        return F.silu(F.group_norm(x, sizes["num_groups"], p["weight"], p["bias"], eps=1e-5)), None
    if name == "gated_rms_norm":
        return F.rms_norm(x * F.silu(e["z"]), sizes["normalized_shape"], p["weight"], eps=1e-5), None
    if name == "gemma_rms_norm":
        return F.rms_norm(x, sizes["normalized_shape"], p["weight"] + 1.0, eps=1e-6), None
    c = x.shape[1]
    bshape = (1, c, 1, 1)
    if name == "user_a":
        a, b, f = e["a"], e["b"], e["f"]
        h = torch.tanh(x) * a - b / 2 + F.gelu(x) * 0.1
        mu = h.mean(dim=(1, 2, 3), keepdim=True)
        var = h.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        y = (h - mu) / torch.sqrt(var + 1e-5) * (p["weight"].reshape(bshape) + 0.5) + p["bias"].reshape(bshape)
        return F.gelu(y, approximate="tanh") * torch.sigmoid(b) + torch.abs(y) * 0.25 + f * f * y, h
    g = e["g"]
    h = x / (1 + torch.exp(-g)) + F.relu(x - g)
    y = F.batch_norm(h, None, None, p["weight"], p["bias"], training=True, eps=1e-5)
    return F.relu(y) - 0.5 * y + torch.exp(y * 0.1), None


def _close(got, want, dtype, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    tol = 1e-9 if dtype == "float64" else 2e-4
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert got.shape == want.shape and err <= tol, f"{what}: error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_spec_against_torch_autograd(case, layout, dtype):
    spec, shape, sizes = CASES[case]
    op = normgen.load(spec)
    rng = np.random.default_rng(len(case) + len(layout))
    b = op.binding(shape, **sizes)
    x = make_array(rng.standard_normal(shape) * 1.5 + 0.5, layout, dtype)
    extras = {n: make_array(rng.standard_normal(shape), layout, dtype) for n in op.spec.extras}
    params = {n: (rng.standard_normal(b.param_shape) * 0.5 + 1.0).astype(dtype) for n in op.spec.param_names}
    dy = make_array(rng.standard_normal(shape), layout, dtype)
    keep = op.spec.fuse is not None and op.spec.fuse.keep_prologue
    dh = make_array(rng.standard_normal(shape), layout, dtype) if keep else None

    fwd = op.forward(x, **params, **extras, **sizes)
    grads = op.backward(dy, fwd, dprologue=dh)

    def t(a):
        return torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    tx, te, tp = t(x), {k: t(v) for k, v in extras.items()}, {k: t(v) for k, v in params.items()}
    ty, th = _torch_lines(case, tx, te, tp, sizes)
    outs, gouts = [ty], [torch.tensor(np.asarray(dy, np.float64))]
    if keep:
        outs.append(th)
        gouts.append(torch.tensor(np.asarray(dh, np.float64)))
    torch.autograd.backward(outs, gouts)

    _close(fwd.y, ty.detach(), dtype, "out")
    if keep:
        _close(fwd.prologue, th.detach(), dtype, "h")
        assert fwd.prologue.strides == fwd.y.strides  # h in x's layout, like y
    else:
        assert fwd.prologue is None
    _close(grads.dx, tx.grad, dtype, "dx")
    for n in extras:
        _close(grads[n], te[n].grad, dtype, f"d{n}")
    for n in params:
        _close(grads[n], tp[n].grad, dtype, f"d{n}")


def test_a_residual_gets_dx_itself_and_h_is_read_not_recomputed():
    """x + residual: ∂h/∂residual = ∂h/∂x, so the backward writes one array and returns it twice;
    the backward reads the kept h (one array) instead of x and the residual (two)."""
    op = normgen.load("add_rms_norm")
    x, r = np.ones((4, 64), np.float32), np.full((4, 64), 2.0, np.float32)
    fwd = op.forward(x, np.ones(64, np.float32), residual=r, normalized_shape=(64,))
    grads = op.backward(np.ones_like(x), fwd)
    assert grads["residual"] is grads.dx
    plan = op.plan((4, 64), direction="backward", normalized_shape=(64,))
    assert plan.kernel.fusion.h_from.value == "stored" and not plan.kernel.fusion.reads_x
    np.testing.assert_array_equal(fwd.prologue, x + r)


def test_extras_in_their_own_layouts_are_used_in_place():
    op = normgen.load("gated_rms_norm")
    rng = np.random.default_rng(3)
    x = make_array(rng.standard_normal((4, 6, 5, 8)), "contiguous", "float64")
    z = make_array(rng.standard_normal((4, 6, 5, 8)), "sliced", "float64")  # a strided view, not copied
    w = np.ones(8)
    fwd = op.forward(x, w, z=z, normalized_shape=(8,))
    assert fwd.call.extras["z"] is z
    ref = oracle.forward(op.spec, x, {"weight": w}, sizes={"normalized_shape": (8,)}, extras={"z": z})
    np.testing.assert_allclose(fwd.y, ref.y, rtol=1e-12, atol=1e-12)


QUANT = normgen.parse_spec(textwrap.dedent("""
    name = "add_rms_norm_int8"
    input = "*batch *normalized"
    kept = "*batch"
    center = "none"
    scale = "rms"
    [sizes]
    normalized = "normalized_shape"
    [affine]
    axes = "*normalized"
    bias = false
    [fuse]
    prologue = "x + residual"
    keep_prologue = true
    quantize = "int8"
    """), "add_rms_norm_int8.toml")


@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
def test_int8_output_with_a_scale_per_row(layout):
    op = normgen.load(QUANT)
    rng = np.random.default_rng(5)
    x = make_array(rng.standard_normal((64, 256)), layout, "float32")
    r = make_array(rng.standard_normal((64, 256)), layout, "float32")
    x[3] = -r[3]  # a row of zeros: scale 0, q 0
    w = (rng.standard_normal(256) * 0.3 + 1).astype(np.float32)
    fwd = op.forward(x, w, residual=r, normalized_shape=(256,))
    assert fwd.y.dtype == np.int8 and fwd.scale.dtype == np.float32 and fwd.scale.shape == (64,)
    h = torch.from_numpy(np.asarray(x, np.float64) + np.asarray(r, np.float64))
    out = F.rms_norm(h, (256,), torch.from_numpy(w.astype(np.float64)), eps=float(np.finfo(np.float32).eps))
    amax = out.abs().amax(dim=1)
    np.testing.assert_allclose(fwd.scale, (amax / 127).numpy(), rtol=2e-5)  # float32 normalization
    q = torch.where(amax[:, None] > 0, torch.round(out / (amax[:, None] / 127)), 0.0).clamp(-127, 127)
    assert np.abs(fwd.y.astype(np.int64) - q.numpy().astype(np.int64)).max() <= 1  # float32 vs float64 ties
    assert fwd.scale[3] == 0 and not fwd.y[3].any()
    assert np.abs(fwd.y).max() == 127
    np.testing.assert_allclose(fwd.prologue, h.numpy(), rtol=1e-6)
    with pytest.raises(CallError, match="quantized .* has no gradient"):
        op.backward(np.ones((64, 256), np.float32), fwd)


def test_float8_quantization_is_cuda_only():
    spec = normgen.parse_spec(QUANT.text.replace('"int8"', '"float8_e4m3"'), "f8.toml")
    with pytest.raises(CallError, match="float8_e4m3 and quantization on CUDA are not built yet"):
        normgen.load(spec).forward(np.ones((2, 8), np.float32), np.ones(8, np.float32),
                                   residual=np.ones((2, 8), np.float32), normalized_shape=(8,))


@pytest.mark.parametrize("name, shape, sizes, layout", [
    ("layer_norm", (6, 40), {"normalized_shape": (40,)}, "sliced"),
    ("group_norm", (3, 12, 5, 6), {"num_groups": 4}, "contiguous"),
    ("group_norm", (3, 12, 5, 6), {"num_groups": 4}, "channels_last"),
    ("batch_norm", (6, 16, 7, 5), {}, "channels_last"),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_y_rebuilds_x_hat_from_y(name, shape, sizes, layout, dtype):
    """save="y": the backward reads y, not x (x_hat = (y - bias) / weight), with the same gradients."""
    op = normgen.load(name)
    rng = np.random.default_rng(11)
    b = op.binding(shape, **sizes)
    x = make_array(rng.standard_normal(shape) * 2 + 1, layout, dtype)
    params = {p: (rng.standard_normal(b.param_shape) * 0.5 + 1).astype(dtype) for p in op.spec.param_names}
    dy = make_array(rng.standard_normal(shape), layout, dtype)
    fwd = op.forward(x, **params, **sizes, save="y")
    plan = op.plan(shape, direction="backward", **sizes)
    assert plan.kernel.fusion is None  # a plain call's plan; with save="y" the plan reads y:
    grads = op.backward(dy, fwd)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    ref = oracle.backward(op.spec, np.asarray(dy, np.float64), np.asarray(x, np.float64), p64, sizes=sizes)
    _close(grads.dx, ref["x"], dtype, "dx")
    for p in params:
        _close(grads[p], ref[p], dtype, f"d{p}")
    used = [p for p in op._plans.values() if p.kernel.direction.value == "backward"][-1]
    assert used.kernel.fusion.h_from.value == "from y" and not used.kernel.fusion.reads_x


def test_save_y_errors():
    op = normgen.load("layer_norm")
    x = np.ones((3, 8))
    with pytest.raises(CallError, match="save='y' needs the weight"):
        op.forward(x, normalized_shape=(8,), save="y")
    with pytest.raises(CallError, match=r"save='maybe'; expected 'x'"):
        op.forward(x, np.ones(8), normalized_shape=(8,), save="maybe")
    w = np.ones(8)
    w[5] = 0.0
    fwd = op.forward(np.arange(24.0).reshape(3, 8), w, np.zeros(8), normalized_shape=(8,), save="y")
    with pytest.raises(CallError, match=r"the weight has zeros \(at \(5,\)\); call with save='x'"):
        op.backward(np.ones((3, 8)), fwd)
    with pytest.raises(CallError, match="save='y' needs a spec without prologue"):
        normgen.load("add_rms_norm").forward(x, np.ones(8), residual=x, normalized_shape=(8,), save="y")


def test_fused_call_errors():
    op = normgen.load("add_layer_norm")
    x = np.ones((3, 8), np.float32)
    with pytest.raises(CallError, match=r"missing extra input residual="):
        op.forward(x, normalized_shape=(8,))
    with pytest.raises(CallError, match=r"residual has shape \(3, 7\) and dtype float32, expected \(3, 8\)"):
        op.forward(x, residual=np.ones((3, 7), np.float32), normalized_shape=(8,))
    with pytest.raises(CallError, match=r"residual has shape \(3, 8\) and dtype float64"):
        op.forward(x, residual=np.ones((3, 8)), normalized_shape=(8,))
    with pytest.raises(CallError, match="unexpected argument"):
        normgen.load("layer_norm").forward(x, residual=x, normalized_shape=(8,))
    fwd = normgen.load("group_norm_silu").forward(np.ones((2, 4, 3)), num_groups=2)
    with pytest.raises(CallError, match="does not keep its prologue"):
        normgen.load("group_norm_silu").backward(np.ones((2, 4, 3)), fwd, dprologue=np.ones((2, 4, 3)))
    with pytest.raises(CallError, match="fused specs .* run on the CPU backend"):
        op.plan((3, 8), target="cuda", normalized_shape=(8,))


def test_the_vectorizing_exponential_is_as_accurate_as_the_c_library():
    """exp_f32 / exp_f64 (codegen/cpu_prelude.py), which fused expressions call instead of np.exp:
    within ~1 ulp over the whole range, IEEE at the edges (overflow to inf, subnormals, 0, NaN)."""
    from normgen.codegen.cpu_prelude import exp_f32, exp_f64

    v32 = np.concatenate([np.linspace(-110, 95, 20001), [0.0, np.inf, -np.inf, 88.72, 88.73, -103.97]]).astype(np.float32)
    got = np.array([exp_f32(v) for v in v32], np.float32)
    with np.errstate(over="ignore"):
        want = np.exp(v32.astype(np.float64))
    normal = (want > np.finfo(np.float32).tiny) & (want < np.finfo(np.float32).max)
    assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < 2e-7
    np.testing.assert_allclose(got[~normal], want[~normal].astype(np.float32), rtol=0, atol=3e-45)  # subnormals, inf
    assert np.isnan(exp_f32(np.float32(np.nan))) and exp_f32(np.float32(89.0)) == np.inf

    v64 = np.concatenate([np.linspace(-750, 712, 40001), [0.0, np.inf, -np.inf, 709.78, 709.79, -745.2]])
    got = np.array([exp_f64(v) for v in v64])
    with np.errstate(over="ignore"):
        want = np.exp(v64)
    normal = (want > np.finfo(np.float64).tiny) & np.isfinite(want)
    assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < 1e-15
    np.testing.assert_array_equal(got[~normal & (want > 0)] > 0, True)  # subnormals, not 0
    assert exp_f64(709.79) == np.inf and exp_f64(-np.inf) == 0.0 and np.isnan(exp_f64(np.nan))


def test_fused_numerics_at_the_edges():
    """A NaN poisons only its group (and its h); a float32 group with mean 1e4 and std 1e-2
    after the prologue still normalizes to unit variance (the two-pass moments of h)."""
    op = normgen.load("add_layer_norm")
    rng = np.random.default_rng(2)
    x = (1e4 + rng.standard_normal((6, 512)) * 1e-2).astype(np.float32)
    r = (rng.standard_normal((6, 512)) * 1e-3).astype(np.float32)
    x[4, 7] = np.nan
    fwd = op.forward(x, residual=r, normalized_shape=(512,), eps=1e-12)
    assert np.isnan(fwd.y[4]).all() and np.isnan(fwd.prologue[4, 7]) and np.isfinite(fwd.prologue[3]).all()
    good = np.delete(np.arange(6), 4)
    assert np.isfinite(fwd.y[good]).all()
    ref = oracle.forward(op.spec, x[good], sizes={"normalized_shape": (512,)}, eps=1e-12,
                         extras={"residual": fwd.prologue[good].astype(np.float64) - x[good]})
    np.testing.assert_allclose(fwd.y[good], ref.y, atol=2e-3)  # float32 h = x + r, then exact statistics
    np.testing.assert_allclose(fwd.y[good].std(axis=1), 1.0, rtol=1e-3)
    q = normgen.load("gated_rms_norm")
    z = np.full((2, 64), -1000.0, np.float32)  # silu(-1000) = -0: h = -0, a group of zeros
    out = q.forward(np.ones((2, 64), np.float32), np.ones(64, np.float32), z=z, normalized_shape=(64,))
    assert np.isfinite(out.y).all() and not out.y.any()


# ---- random fused specs against the oracle ------------------------------------------------

_SAFE = ["relu", "silu", "sigmoid", "tanh", "gelu", "gelu_tanh", "abs", "square"]


def _bounded(names, max_leaves=6):
    """Expressions that stay moderate on moderate inputs (no exp, no division but by 1 + u^2)."""
    leaf = st.one_of(st.sampled_from(names), st.sampled_from(["0.5", "2", "1.5"]))

    def extend(children):
        return st.one_of(
            st.tuples(children, st.sampled_from("+-*"), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(children, children).map(lambda t: f"({t[0]} / (1 + square({t[1]})))"),
            st.tuples(st.sampled_from(_SAFE), children).map(lambda t: f"{t[0]}({t[1]})"),
            children.map(lambda c: f"-{c}"))
    return st.recursive(leaf, extend, max_leaves=max_leaves)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pro=_bounded(["x", "a"]), epi=_bounded(["y", "a", "b"]), keep=st.booleans(),
       layout=st.sampled_from(["contiguous", "channels_last", "sliced"]), kept=st.sampled_from(["N", "C", "N C"]))
def test_random_fused_specs_match_the_oracle(pro, epi, keep, layout, kept):
    if "x" not in pro:
        pro = f"x + {pro}"
    if "y" not in epi:
        epi = f"y * {epi}"
    text = textwrap.dedent(f"""
        name = "random_fused"
        input = "N C *spatial"
        kept = "{kept}"
        [affine]
        axes = "C"
        [fuse]
        prologue = "{pro}"
        keep_prologue = {"true" if keep else "false"}
        epilogue = "{epi}"
        """)
    op = normgen.load(normgen.parse_spec(text, "random_fused.toml"))
    rng = np.random.default_rng(len(pro) * 31 + len(epi))
    shape = (3, 4, 5, 6)
    x = make_array(rng.standard_normal(shape), layout, "float64")
    extras = {e: make_array(rng.standard_normal(shape), layout, "float64") for e in op.spec.extras}
    params = {"weight": rng.standard_normal(4) * 0.5 + 1, "bias": rng.standard_normal(4) * 0.3}
    fwd = op.forward(x, **params, **extras)
    ref = oracle.forward(op.spec, np.asarray(x), params, extras=extras)
    dy = make_array(rng.standard_normal(shape), layout, "float64")
    dh = make_array(rng.standard_normal(shape), layout, "float64") if keep else None
    grads = op.backward(dy, fwd, dprologue=dh)
    oref = oracle.backward(op.spec, np.asarray(dy), np.asarray(x), params, extras=extras,
                           dprologue=None if dh is None else np.asarray(dh))
    _close(fwd.y, ref.y, "float64", "out")
    if keep:
        _close(fwd.prologue, ref.prologue, "float64", "h")
    for name in ("x", *params, *extras):
        _close(grads[name], oref[name], "float64", f"d{name}")
