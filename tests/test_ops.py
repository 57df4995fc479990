"""normgen.ops against torch.nn.functional: same arguments, same results, running
statistics updated in place (or not at all when a call fails), PyTorch's errors."""

from __future__ import annotations

import numpy as np
import pytest

import normgen
from normgen import CallError, ops
from normgen.layouts import make_array

torch = pytest.importorskip("torch")
F = torch.nn.functional


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(training, layout, rng):
    x = make_array(rng.standard_normal((8, 6, 5, 5)) * 2 + 1, layout, "float32")
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    rm, rv = rng.standard_normal(6).astype(np.float32), (rng.random(6) + 0.5).astype(np.float32)
    trm, trv = T(rm.copy()), T(rv.copy())
    ref = F.batch_norm(T(x), trm, trv, T(w), T(b), training=training, momentum=0.2, eps=1e-4)
    y = ops.batch_norm(x, rm, rv, w, b, training=training, momentum=0.2, eps=1e-4)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-6, atol=1e-6)


def test_batch_norm_momentum_none_is_a_cumulative_average(rng):
    tbn = torch.nn.BatchNorm1d(4, momentum=None).double()
    rm, rv = np.zeros(4), np.ones(4)
    tracked = np.zeros((), np.int64)
    for step in range(3):
        x = rng.standard_normal((10, 4)) * (step + 1)
        tbn(T(x))
        ops.batch_norm(x, rm, rv, training=True, momentum=None, num_batches_tracked=tracked)
    assert int(tracked) == 3 == int(tbn.num_batches_tracked)
    np.testing.assert_allclose(rm, tbn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, tbn.running_var.numpy(), rtol=1e-12)


def test_layer_group_instance_rms(rng):
    x = rng.standard_normal((4, 6, 3, 5)).astype(np.float32)
    w6, b6 = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    w35 = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(ops.layer_norm(x, (3, 5), w35, w35, eps=1e-3),
                               F.layer_norm(T(x), (3, 5), T(w35), T(w35), eps=1e-3).numpy(), atol=2e-5)
    np.testing.assert_allclose(ops.group_norm(x, 3, w6, b6), F.group_norm(T(x), 3, T(w6), T(b6)).numpy(), atol=2e-5)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    trm, trv = T(rm.copy()), T(rv.copy())
    np.testing.assert_allclose(ops.instance_norm(x, rm, rv, w6, b6), F.instance_norm(T(x), trm, trv, T(w6), T(b6)).numpy(),
                               atol=2e-5)
    np.testing.assert_allclose(rm, trm.numpy(), atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), atol=1e-6)
    np.testing.assert_allclose(ops.rms_norm(x, 5, w35[0]), F.rms_norm(T(x), (5,), T(w35[0])).numpy(), atol=2e-5)


@pytest.mark.parametrize("dim", [0, 1, 2, -2, -1, None])
def test_weight_norm(dim, rng):
    v = rng.standard_normal((5, 4, 3)).astype(np.float64)
    whole = dim is None or dim == -1  # torch._weight_norm: -1 means one norm over all of v
    gshape = [1] * v.ndim
    if not whole:
        gshape[dim] = v.shape[dim]
    g = rng.standard_normal(gshape)
    ref = torch._weight_norm(T(v), T(g), -1 if dim is None else dim).numpy()
    np.testing.assert_allclose(ops.weight_norm(v, g, dim=dim), ref, atol=1e-12)


def test_weight_norm_of_a_zero_row_is_an_error(rng):
    v = rng.standard_normal((3, 4))
    v[1] = 0
    with pytest.raises(CallError, match=r"group at kept index \(1,\) has zero norm"):
        ops.weight_norm(v, np.ones(3))


def test_errors_like_pytorch(rng):
    x = rng.standard_normal((1, 3)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(CallError, match="expected more than 1 value per channel when training"):
        ops.batch_norm(x, rm, rv, training=True)
    with pytest.raises(CallError, match="running_mean and running_var are needed"):
        ops.batch_norm(x, None, None, training=False)
    with pytest.raises(CallError, match="which G=4 does not divide"):
        ops.group_norm(rng.standard_normal((2, 6, 3)), 4)


def test_a_failing_call_leaves_running_statistics_unchanged(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    bad_weight = np.ones(4, np.float32)
    with pytest.raises(CallError, match=r"weight has shape \(4,\), expected \(3,\)"):
        ops.batch_norm(x, rm, rv, bad_weight, training=True)
    with pytest.raises(CallError, match="out has shape"):
        ops.batch_norm(x, rm, rv, training=True, out=np.empty((4, 3), np.float32))
    assert np.all(rm == 0) and np.all(rv == 1)


def test_load_reads_a_changed_spec_file_again(tmp_path):
    path = tmp_path / "my_norm.toml"
    path.write_text('input = "N C"\nkept = "N"\n')
    first = normgen.load(str(path))
    assert normgen.load(str(path)) is first  # unchanged: the same op (and its compiled plans)
    path.write_text('input = "N C"\nkept = "C"\n# edited\n')
    second = normgen.load(str(path))
    assert second is not first and second.spec.kept_axes == ("C",)
