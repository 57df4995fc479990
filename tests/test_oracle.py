"""The oracle itself: its backward against central finite differences of its forward (every
bundled spec, train and eval), and its forward/backward against PyTorch where PyTorch has
the op. The oracle never imports the planner or the templates."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import normgen
from normgen.verify import oracle
from normgen.plan.bind import bind
from normgen.spec.library import bundled_names

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
}


def test_oracle_is_independent_of_planner_and_templates():
    tree = ast.parse(Path(oracle.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "dataclasses", "typing", "numpy", "errors", "spec"}, imported


def _inputs(name, rng):
    spec = normgen.load(name).spec
    shape, sizes = SMALL[name]
    b = bind(spec, shape, sizes)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    params = {p: rng.standard_normal(b.param_shape) for p in (spec.affine.params if spec.affine else ())}
    kw = {}
    if spec.running:
        kw = {"running_mean": rng.standard_normal(b.running_shape), "running_var": rng.random(b.running_shape) + 0.5}
    if spec.is_mixture:
        kw |= {"mean_weight": rng.standard_normal(3), "var_weight": rng.standard_normal(3)}
    return spec, x, params, sizes, kw


MODES = [(n, True) for n in bundled_names()] + [
    (n, False) for n in bundled_names() if normgen.load(n).spec.running is not None]


@pytest.mark.parametrize("name, training", MODES, ids=[f"{n}-{'train' if t else 'eval'}" for n, t in MODES])
def test_oracle_backward_matches_finite_differences(name, training, rng):
    spec, x, params, sizes, kw = _inputs(name, rng)
    dy = rng.standard_normal(x.shape)
    grads = oracle.backward(spec, dy, x, params, sizes=sizes, training=training, **kw)

    def loss(x_=x, params_=params, kw_=kw):
        out = oracle.forward(spec, x_, params_, sizes=sizes, training=training,
                             **{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw_.items()})
        return float((out.y * dy).sum())

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
    ref = oracle.forward(spec, x, params, sizes=sizes, training=training,
                         **{k: v.copy() for k, v in kw.items()})
    np.testing.assert_allclose(ref.y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    if spec.running and training:
        np.testing.assert_allclose(ref.running_mean, tk["running_mean"].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ref.running_var, tk["running_var"].numpy(), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(x.shape)
    ty.backward(torch.tensor(dy))
    grads = oracle.backward(spec, dy, x, params, sizes=sizes, training=training, **kw)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, v in tp.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=1e-10, atol=1e-12)
