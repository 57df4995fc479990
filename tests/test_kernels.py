"""Generated kernels against the NumPy oracle: the table spec x shape x layout x dtype x
mode, the phased path forced on small shapes, calls without parameters, out=, and
inputs used in place (not copied)."""

from __future__ import annotations

import numpy as np
import pytest

import normgen
from normgen.verify import oracle
from normgen.plan.launch import COL_APPLY
from normgen.plan.model import Options, Strategy
from normgen.verify.check import cases, run_case
from normgen.layouts import LAYOUTS, make_array
from normgen.spec.library import bundled_names


def _assert_all_ok(results):
    failed = [r for r in results if not r.ok]
    detail = "\n".join(f"{r.spec} {r.case} {r.layout} {r.dtype} {r.mode} {r.plan}: "
                       + (r.error or f"{r.worst[0]}={r.worst[1]:.2e} > {r.tol:.0e}") for r in failed)
    assert not failed, f"{len(failed)} of {len(results)} checks failed:\n{detail}"


#: float32 in every layout; float64 (the stricter tolerance) contiguous and sliced. `normgen check
#: --all` runs the full product.
TABLE = [(layout, "float32") for layout in LAYOUTS] + [("contiguous", "float64"), ("sliced", "float64")]


@pytest.mark.parametrize("layout, dtype", TABLE, ids=[f"{lay}-{dt}" for lay, dt in TABLE])
@pytest.mark.parametrize("name", bundled_names())
def test_oracle_table(name, layout, dtype):
    """Every case of the spec (small, other ranks, large few-groups), train and eval, forward and backward."""
    op = normgen.load(name)
    modes = (True, False) if op.spec.running is not None else (True,)
    results = [run_case(op, case, layout, dtype, training, seed=i)
               for i, case in enumerate(cases(op.spec)) for training in modes]
    assert len(results) >= 2 * len(modes)
    _assert_all_ok(results)


@pytest.mark.parametrize("name", ["batch_norm", "group_norm", "layer_norm", "switchable_norm", "standardize"])
def test_phased_path_on_small_shapes(name):
    """Split every group's reduction into parts: partial moments, Chan merge, apply."""
    op = normgen.load(name, options=Options(parts=3))
    case = cases(op.spec)[0]
    results = [run_case(op, case, layout, "float64", True, seed=7) for layout in ("contiguous", "channels_last")]
    assert all("parts" in r.plan for r in results), [r.plan for r in results]
    _assert_all_ok(results)


BLOCKED = [("batch_norm", (6, 16, 13, 11), (), "channels_last"), ("standardize", (1501, 24), (), "contiguous"),
           ("group_norm", (3, 12, 9, 10), (("num_groups", 4),), "channels_last")]


@pytest.mark.parametrize("name, shape, sizes, layout", BLOCKED, ids=[b[0] for b in BLOCKED])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_columns_with_rows_back_to_back_in_blocks(name, shape, sizes, layout, dtype):
    """Narrow column tiles whose rows lie back to back are reduced and applied KB rows per
    vector loop (then the leftover rows one by one): shapes where both happen, against the oracle."""
    from normgen.verify.check import Case
    from normgen.layouts import layout_strides

    op = normgen.load(name)
    plan = op.plan(shape, strides=layout_strides(shape, layout), dtype=dtype, **dict(sizes))
    la, k = plan.launch, plan.kernel
    tile = la.seg * (la.sizes[k.tail] if k.tail is not None else 1)
    rows_per_part = min(la.sizes[i] for i in k.rows) // la.n_parts
    assert k.strategy is Strategy.COLUMNS and len(k.rows) == 1
    assert la.kb == COL_APPLY // tile and la.kb_write  # rows back to back: written kb at a time
    assert rows_per_part > la.kb > 1  # blocks of rows, and some left over
    modes = (True, False) if op.spec.running is not None else (True,)
    _assert_all_ok([run_case(op, Case("blocked", shape, sizes), layout, dtype, t, seed=3) for t in modes])


def test_no_parameters_and_out(rng):
    op = normgen.load("group_norm")
    x = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    out = np.full_like(x, np.nan)
    fwd = op.forward(x, num_groups=3, out=out)
    assert fwd.y is out
    ref = oracle.forward(op.spec, x, {}, sizes={"num_groups": 3})
    np.testing.assert_allclose(out, ref.y, rtol=1e-5, atol=1e-5)
    grads = op.backward(np.ones_like(x), fwd)
    assert grads.params == {}
    ref_dx = oracle.backward(op.spec, np.ones_like(x), x, {}, sizes={"num_groups": 3})["x"]
    np.testing.assert_allclose(grads.dx, ref_dx, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_strided_inputs_are_used_in_place(layout, rng):
    op = normgen.load("batch_norm")
    x = make_array(rng.standard_normal((4, 3, 5, 5)), layout, "float32")
    fwd = op.forward(x)
    assert fwd.x is x  # not copied
    assert fwd.y.strides == np.empty_like(x).strides  # the output keeps the input's memory order
    plan = op.plan(x)
    assert plan.launch.stride("x")[0] != 0


def test_negative_strides_are_copied_not_misread(rng):
    op = normgen.load("layer_norm")
    base = rng.standard_normal((5, 8)).astype(np.float64)
    x = base[::-1, ::-1]
    y = op(x, normalized_shape=(8,))
    ref = oracle.forward(op.spec, x, {}, sizes={"normalized_shape": (8,)})
    np.testing.assert_allclose(y, ref.y, atol=1e-12)


def test_forward_statistics_shapes(rng):
    x = rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    fwd = normgen.load("group_norm").forward(x, num_groups=4)
    assert fwd.mean.shape == (2, 4) and fwd.rstd.shape == (2, 4) and fwd.mean.dtype == np.float32
    fwd = normgen.load("batch_norm").forward(x)
    assert fwd.mean.shape == (8,)
    assert normgen.load("rms_norm").forward(x, normalized_shape=(3, 3)).mean is None
