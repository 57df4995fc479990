"""Mixtures of statistics (Switchable Norm): the forward mix and the chain rule through it.

A mixture spec keeps several sets of axes; the first (finest) set's moments come from the
kernels, the coarser components' are merged from them (law of total variance), and
`μ = Σ softmax(λ_μ)_k μ_k`, `σ² = Σ softmax(λ_σ)_k σ²_k`. In evaluation, the component
the running statistics belong to uses them instead (and gets no gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..plan.bind import Binding
from ..spec import Spec
from . import stats as st
from .running import broadcast_running


@dataclass(frozen=True)
class Mix:
    """What a mixed forward leaves for the backward."""

    mw: np.ndarray  # softmax of the mean logits
    vw: np.ndarray  # softmax of the variance logits
    comp_mu: tuple[np.ndarray, ...]  # each component's mean (size-1 dims where it reduces)
    comp_var: tuple[np.ndarray, ...]
    frozen: tuple[bool, ...]  # taken from running statistics: no gradient flows into it
    mean_weight: np.ndarray  # the logits, as given
    var_weight: np.ndarray

    def component(self, spec: Spec) -> int:
        """The component the running statistics belong to."""
        return next(i for i, c in enumerate(spec.kept) if set(c) == set(spec.running.axes))


def mix_forward(spec: Spec, binding: Binding, norm: st.Normalizer, logits: dict[str, np.ndarray], eval_mode: bool,
                running_mean, running_var, eps: float) -> tuple[st.Normalizer, Mix]:
    """The mixed statistics, from the finest component's (`norm`)."""
    mw, vw = st.softmax(logits["mean_weight"]), st.softmax(logits["var_weight"])
    comp_mu, comp_var, frozen = [], [], []
    for k, keep in enumerate(binding.component_dims):
        m, v = st.component_moments(norm.mean, norm.var, keep)
        is_run = spec.running is not None and set(spec.kept[k]) == set(spec.running.axes)
        if eval_mode and is_run:
            m = broadcast_running(binding, running_mean, keep_dims=keep)
            v = broadcast_running(binding, running_var, keep_dims=keep)
        comp_mu.append(m)
        comp_var.append(v)
        frozen.append(eval_mode and is_run)
    mu = np.broadcast_to(sum(w * m for w, m in zip(mw, comp_mu)), norm.mean.shape).copy()
    var = np.broadcast_to(sum(w * v for w, v in zip(vw, comp_var)), norm.mean.shape).copy()
    mix = Mix(mw, vw, tuple(comp_mu), tuple(comp_var), tuple(frozen), logits["mean_weight"], logits["var_weight"])
    return st.Normalizer(mu, var, 1.0 / np.sqrt(var + eps)), mix


def mix_backward(spec: Spec, binding: Binding, mix: Mix, mu64: np.ndarray, rstd: np.ndarray, a: np.ndarray,
                 b: np.ndarray):
    """Coefficients of dx = c0·g + c1·(x − μ) + c2 per finest group, and the logits' gradients.

    a = Σ g and b = Σ g·x̂ per finest group (g = dy·weight); see DESIGN.md and oracle.backward.
    """
    n = binding.group_size
    d_mu = -rstd * a
    d_var = -0.5 * b * rstd * rstd
    c1 = np.zeros_like(rstd)
    c2 = np.zeros_like(rstd)
    d_mw = np.zeros(len(spec.kept))
    d_vw = np.zeros(len(spec.kept))
    for k, keep in enumerate(binding.component_dims):
        axes = tuple(d for d in range(rstd.ndim) if d not in keep)
        m_k = n * math.prod(rstd.shape[d] for d in axes)
        dmu_k = mix.mw[k] * (d_mu.sum(axis=axes, keepdims=True) if axes else d_mu)
        dvar_k = mix.vw[k] * (d_var.sum(axis=axes, keepdims=True) if axes else d_var)
        d_mw[k] = float((d_mu * mix.comp_mu[k]).sum())
        d_vw[k] = float((d_var * mix.comp_var[k]).sum())
        if mix.frozen[k]:
            continue
        c1 = c1 + 2.0 * dvar_k / m_k
        c2 = c2 + dmu_k / m_k + 2.0 * dvar_k * (mu64 - mix.comp_mu[k]) / m_k
    grads = {"mean_weight": (mix.mw * (d_mw - np.dot(mix.mw, d_mw))).astype(mix.mean_weight.dtype),
             "var_weight": (mix.vw * (d_vw - np.dot(mix.vw, d_vw))).astype(mix.var_weight.dtype)}
    coef = np.stack([np.broadcast_to(c, rstd.shape).reshape(-1) for c in (rstd, c1, c2)], axis=1)
    return coef, grads
