"""Identities between variants, checked kernel against kernel (no oracle involved)."""

from __future__ import annotations

import numpy as np
import pytest

from normgen import ops
from normgen.layouts import make_array


@pytest.fixture(params=["contiguous", "channels_last"])
def x(request, rng):
    return make_array(rng.standard_normal((3, 6, 5, 4)) * 3 + 2, request.param, "float64")


def test_group_norm_one_group_is_layer_norm_over_c_and_spatial(x):
    np.testing.assert_allclose(ops.group_norm(x, 1), ops.layer_norm(x, x.shape[1:]), atol=1e-12)


def test_group_norm_c_groups_is_instance_norm(x):
    np.testing.assert_allclose(ops.group_norm(x, x.shape[1]), ops.instance_norm(x), atol=1e-12)


def test_batch_norm_on_a_matrix_is_standardize(rng):
    m = rng.standard_normal((50, 7)) * 4 - 1
    rm, rv = np.zeros(7), np.ones(7)
    np.testing.assert_allclose(ops.batch_norm(m, rm, rv, training=True), ops.standardize(m), atol=1e-12)


def test_layout_does_not_change_the_result(rng):
    values = rng.standard_normal((4, 8, 6, 6))
    ref = ops.group_norm(make_array(values, "contiguous", "float32"), 4)
    for layout in ("channels_last", "transposed", "sliced"):
        np.testing.assert_allclose(ops.group_norm(make_array(values, layout, "float32"), 4), ref, atol=2e-6)


def test_batch_norm_commutes_with_a_permutation_of_the_batch(x, rng):
    perm = rng.permutation(x.shape[0])
    rm, rv = np.zeros(6), np.ones(6)
    y = ops.batch_norm(x, rm.copy(), rv.copy(), training=True)
    np.testing.assert_allclose(ops.batch_norm(x[perm], rm.copy(), rv.copy(), training=True), y[perm], atol=1e-12)


def test_normalization_is_invariant_to_positive_affine_maps_of_the_input(x):
    eps = 1e-12
    np.testing.assert_allclose(ops.layer_norm(3.5 * x - 7.0, x.shape[1:], eps=eps), ops.layer_norm(x, x.shape[1:], eps=eps),
                               atol=1e-9)


def test_rms_norm_of_centered_rows_is_layer_norm(rng):
    rows = rng.standard_normal((8, 32))
    rows -= rows.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(ops.rms_norm(rows, 32, eps=1e-5), ops.layer_norm(rows, 32, eps=1e-5), atol=1e-12)


def test_weight_standardization_is_layer_norm_over_fan_in(rng):
    w = rng.standard_normal((16, 8, 3, 3))
    np.testing.assert_allclose(ops.weight_standardization(w), ops.layer_norm(w, (8, 3, 3)), atol=1e-12)
