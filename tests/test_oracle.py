"""The oracle itself: its backward against central finite differences of its forward (every
bundled spec, train and eval), and its forward/backward against PyTorch where PyTorch has
the op. The oracle never imports the planner or the templates."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import normgen
from normgen.plan.bind import bind
from normgen.spec.library import bundled_names
from normgen.verify import npexpr, oracle

SMALL = {
    "batch_norm": ((4, 3, 2, 3), {}),
    "group_norm": ((2, 6, 2, 2), {"num_groups": 3}),
    "instance_norm": ((2, 3, 3, 2), {}),
    "layer_norm": ((3, 2, 4), {"normalized_shape": (2, 4)}),
    "rms_norm": ((3, 5), {"normalized_shape": (5,)}),
    "switchable_norm": ((3, 4, 2, 2), {}),
    "weight_norm": ((3, 2, 3), {}),
    "weight_standardization": ((3, 2, 3), {}),
    "standardize": ((6, 3), {}),
    "add_rms_norm": ((3, 5), {"normalized_shape": (5,)}),
    "add_layer_norm": ((3, 2, 4), {"normalized_shape": (2, 4)}),
    "group_norm_silu": ((2, 6, 2, 2), {"num_groups": 3}),
    "gated_rms_norm": ((3, 5), {"normalized_shape": (5,)}),
    "gemma_rms_norm": ((3, 5), {"normalized_shape": (5,)}),
}

#: user-written fused specs: every function, extras in both expressions, division, a kept
#: prologue with an epilogue on a batch norm (running statistics), quantization
USER = {
    "fused_user_a": ("""
        name = "fused_user_a"
        input = "N C *spatial"
        kept = "N"
        [affine]
        axes = "C"
        weight_offset = 0.5
        [fuse]
        prologue = "tanh(x) * a - b / 2 + gelu(x) * 0.1"
        keep_prologue = true
        epilogue = "gelu_tanh(y) * sigmoid(b) + abs(y) * 0.25 + square(f) * y"
        """, (3, 4, 2), {}),
    "fused_user_b": ("""
        name = "fused_user_b"
        input = "N C *spatial"
        kept = "C"
        [affine]
        axes = "C"
        [running]
        axes = "C"
        [fuse]
        prologue = "x / (1 + exp(-g)) + relu(x - g)"
        epilogue = "-y * 0.5 + relu(y) + exp(y * 0.1)"
        """, (4, 3, 2), {}),
}


def user_spec(name):
    import textwrap

    return normgen.parse_spec(textwrap.dedent(USER[name][0]), f"{name}.toml")


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module or "." + n.names[0].name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return imported | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_oracle_is_independent_of_planner_and_templates():
    """The oracle reads the spec's data model only; it evaluates and differentiates fused
    expressions itself (npexpr.py), not through spec/derive.py or the code generators."""
    assert _imports(oracle) <= {"__future__", "collections.abc", "dataclasses", "typing", "numpy", "errors", "spec",
                                 ".npexpr"}
    assert _imports(npexpr) <= {"__future__", "math", "collections.abc", "numpy", "spec.expr"}


def _inputs(name, rng):
    spec = user_spec(name) if name in USER else normgen.load(name).spec
    shape, sizes = USER[name][1:] if name in USER else SMALL[name]
    b = bind(spec, shape, sizes)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    params = {p: rng.standard_normal(b.param_shape) for p in (spec.affine.params if spec.affine else ())}
    kw = {}
    if spec.running:
        kw = {"running_mean": rng.standard_normal(b.running_shape), "running_var": rng.random(b.running_shape) + 0.5}
    if spec.is_mixture:
        kw |= {"mean_weight": rng.standard_normal(3), "var_weight": rng.standard_normal(3)}
    if spec.extras:
        kw["extras"] = {e: rng.standard_normal(shape) for e in spec.extras}
    return spec, x, params, sizes, kw


MODES = [(n, True) for n in bundled_names() + list(USER)] + [
    (n, False) for n in bundled_names() if normgen.load(n).spec.running is not None] + [("fused_user_b", False)]


def _copy(v):
    if isinstance(v, np.ndarray):
        return v.copy()
    return {k: _copy(u) for k, u in v.items()} if isinstance(v, dict) else v


@pytest.mark.parametrize("name, training", MODES, ids=[f"{n}-{'train' if t else 'eval'}" for n, t in MODES])
def test_oracle_backward_matches_finite_differences(name, training, rng):
    """Gradients of sum(dy * out) + sum(dh * h) for x, every parameter and every extra input."""
    spec, x, params, sizes, kw = _inputs(name, rng)
    dy = rng.standard_normal(x.shape)
    keep = spec.fuse is not None and spec.fuse.keep_prologue
    dh = rng.standard_normal(x.shape) if keep else None
    grads = oracle.backward(spec, dy, x, params, sizes=sizes, training=training, dprologue=dh, **kw)

    def loss(x_=x, params_=params, kw_=kw):
        out = oracle.forward(spec, x_, params_, sizes=sizes, training=training, **_copy(kw_))
        return float((out.y * dy).sum()) + (float((out.prologue * dh).sum()) if keep else 0.0)

    h = 1e-6

    def fd(get, put):
        base = get()
        num = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            e = np.zeros_like(base)
            e[i] = h
            num[i] = (put(base + e) - put(base - e)) / (2 * h)
        return num

    np.testing.assert_allclose(grads["x"], fd(lambda: x, lambda v: loss(x_=v)), rtol=1e-5, atol=1e-6)
    for p in params:
        num = fd(lambda p=p: params[p], lambda v, p=p: loss(params_={**params, p: v}))
        np.testing.assert_allclose(grads[p], num, rtol=1e-5, atol=1e-6)
    if spec.is_mixture:
        for p in ("mean_weight", "var_weight"):
            num = fd(lambda p=p: kw[p], lambda v, p=p: loss(kw_={**kw, p: v}))
            np.testing.assert_allclose(grads[p], num, rtol=1e-5, atol=1e-6)
    ex = kw.get("extras", {})
    for e in spec.extras:
        num = fd(lambda e=e: ex[e], lambda v, e=e: loss(kw_={**kw, "extras": {**ex, e: v}}))
        np.testing.assert_allclose(grads[e], num, rtol=1e-5, atol=1e-6)
    assert set(grads) == {"x", *params, *spec.extras} | ({"mean_weight", "var_weight"} if spec.is_mixture else set())


def test_oracle_quantizes_per_kept_index(rng):
    spec = normgen.parse_spec('''
        input = "N C"
        kept = "N"
        center = "none"
        scale = "rms"
        [fuse]
        quantize = "int8"
        '''.replace("        ", ""), "q.toml", default_name="q")
    x = rng.standard_normal((3, 50))
    x[2] = 0.0  # a group of zeros: scale 0, q 0
    out = oracle.forward(spec, x)
    assert out.scale.shape == (3,) and out.scale[2] == 0 and not out.q[2].any()
    np.testing.assert_allclose(out.scale[:2], np.abs(out.y[:2]).max(axis=1) / 127, rtol=1e-15)
    assert np.abs(out.q).max() == 127 and np.array_equal(out.q, np.round(out.q))
    # dequantized within half a step of the unquantized output
    assert np.all(np.abs(out.q * out.scale[:, None] - out.y) <= 0.5 * out.scale[:, None] * (1 + 1e-12))


torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("case", ["batch_norm", "batch_norm_eval", "instance_norm", "group_norm", "layer_norm",
                                  "rms_norm", "weight_norm"])
def test_oracle_matches_torch(case, rng):
    name = case.removesuffix("_eval")
    training = not case.endswith("_eval")
    spec, x, params, sizes, kw = _inputs(name, rng)
    tx = _t(x)
    tp = {k: _t(v) for k, v in params.items()}
    tk = {k: torch.tensor(v) for k, v in kw.items()}
    if name == "batch_norm":
        ty = F.batch_norm(tx, tk["running_mean"], tk["running_var"], tp["weight"], tp["bias"], training=training)
    elif name == "instance_norm":
        ty = F.instance_norm(tx, tk["running_mean"], tk["running_var"], tp["weight"], tp["bias"])
    elif name == "group_norm":
        ty = F.group_norm(tx, sizes["num_groups"], tp["weight"], tp["bias"])
    elif name == "layer_norm":
        ty = F.layer_norm(tx, sizes["normalized_shape"], tp["weight"], tp["bias"])
    elif name == "rms_norm":
        ty = F.rms_norm(tx, sizes["normalized_shape"], tp["weight"])
    else:
        ty = torch._weight_norm(tx, tp["g"].reshape(-1, 1, 1), 0)
    _check_against(spec, x, params, sizes, kw, training, ty, tx, tp, rng, tk=tk)


def _check_against(spec, x, params, sizes, kw, training, ty, tx, tp, rng, th=None, textras=None, tk=None):
    ref = oracle.forward(spec, x, params, sizes=sizes, training=training, **_copy(kw))
    np.testing.assert_allclose(ref.y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    if th is not None:
        np.testing.assert_allclose(ref.prologue, th.detach().numpy(), rtol=1e-12, atol=1e-12)
    if spec.running and training:
        np.testing.assert_allclose(ref.running_mean, tk["running_mean"].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ref.running_var, tk["running_var"].numpy(), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(x.shape)
    dh = rng.standard_normal(x.shape) if th is not None else None
    torch.autograd.backward([ty] + ([th] if th is not None else []),
                            [torch.tensor(dy)] + ([torch.tensor(dh)] if th is not None else []))
    grads = oracle.backward(spec, dy, x, params, sizes=sizes, training=training, dprologue=dh, **kw)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, v in tp.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, v in (textras or {}).items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=1e-10, atol=1e-12)


FUSED = ["add_rms_norm", "add_layer_norm", "group_norm_silu", "gated_rms_norm", "gemma_rms_norm", "fused_user_a"]


@pytest.mark.parametrize("name", FUSED)
def test_fused_oracle_matches_torch_compositions(name, rng):
    """Each fused spec against the PyTorch lines it replaces, autograd through all of them."""
    spec, x, params, sizes, kw = _inputs(name, rng)
    tx = _t(x)
    tp = {k: _t(v) for k, v in params.items()}
    te = {k: _t(v) for k, v in kw.get("extras", {}).items()}
    th = None
    if name in ("add_rms_norm", "add_layer_norm"):
        th = tx + te["residual"]
        ty = (F.rms_norm(th, sizes["normalized_shape"], tp["weight"]) if name == "add_rms_norm"
              else F.layer_norm(th, sizes["normalized_shape"], tp["weight"], tp["bias"]))
    elif name == "group_norm_silu":
        ty = F.silu(F.group_norm(tx, sizes["num_groups"], tp["weight"], tp["bias"]))
    elif name == "gated_rms_norm":
        ty = F.rms_norm(tx * F.silu(te["z"]), sizes["normalized_shape"], tp["weight"], eps=1e-5)
    elif name == "gemma_rms_norm":
        ty = F.rms_norm(tx, sizes["normalized_shape"], tp["weight"] + 1.0, eps=1e-6)
    else:
        a, b, f = te["a"], te["b"], te["f"]
        th = torch.tanh(tx) * a - b / 2 + F.gelu(tx) * 0.1
        y = F.layer_norm(th, (4, 2), tp["weight"].reshape(4, 1).expand(4, 2) + 0.5,
                         tp["bias"].reshape(4, 1).expand(4, 2))
        ty = F.gelu(y, approximate="tanh") * torch.sigmoid(b) + torch.abs(y) * 0.25 + f * f * y
    _check_against(spec, x, params, sizes, kw, True, ty, tx, tp, rng, th, te)
