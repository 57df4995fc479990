"""The matrix of `normgen check`: the full one as before, and the representative default
that covers every layout, dtype, mode, case and kernel entry point with fewer kernels.
Planning only: nothing here compiles."""

from __future__ import annotations

import pytest

from normgen.layouts import LAYOUTS
from normgen.op import load
from normgen.plan.model import Direction
from normgen.runtime import cpu
from normgen.spec.library import bundled_names
from normgen.verify import matrix, session
from normgen.verify.check import DTYPES


def test_the_full_matrix_keeps_its_order_and_seeds():
    spec = load("batch_norm").spec
    checks = matrix.full(spec, LAYOUTS, DTYPES)
    expected = [(case, layout, dtype, training) for case in matrix.cases(spec) for layout in LAYOUTS
                for dtype in DTYPES for training in (True, False)]
    assert [(c.case, c.layout, c.dtype, c.training) for c in checks] == expected
    assert [c.seed for c in checks] == list(range(1, len(expected) + 1))


def test_entry_points_follow_the_path_a_call_takes():
    op = load("batch_norm")
    train = matrix.full(op.spec, ("contiguous",), ("float64",))[0]
    fwd, bwd = matrix.plans(op, train)
    assert matrix.entries(fwd, training=True, mixture=False) == \
        (("forward_fused",) if fwd.launch.fused else ("forward_partial", "forward_apply"))
    assert matrix.entries(fwd, training=False, mixture=False) == ("forward_apply",)
    assert matrix.entries(bwd, training=False, mixture=False) == ("backward_partial", "backward_apply")
    assert matrix.entries(fwd, training=True, mixture=True) == ("forward_partial", "forward_apply")
    assert fwd.kernel.direction is Direction.FORWARD and bwd.kernel.direction is Direction.BACKWARD


def _needed(planned: session.Planned) -> set[tuple[object, str]]:
    return {(matrix.body(n.kernel), e) for n in planned.needs for e in n.entries}


@pytest.mark.parametrize("name", bundled_names())
def test_the_default_covers_what_the_full_matrix_covers(name):
    op = load(name)
    whole = session.plan(op, LAYOUTS, DTYPES, whole=True, have=set())
    part = session.plan(op, LAYOUTS, DTYPES, whole=False, have=set())
    full_set = set(whole.checks)
    assert set(part.checks) <= full_set and len(part.checks) < len(whole.checks)

    def covered(checks):
        return set().union(*(matrix.features(c, matrix.needs(op, c)) for c in checks))

    feats = covered(whole.checks)
    assert covered(part.checks) == feats
    for kind in ("layout", "dtype", "mode", "case"):  # each of them, at least once
        assert {f for f in feats if f[0] == kind}, kind
    assert {f[1] for f in feats if f[0] == "layout"} == set(LAYOUTS)
    assert {f[1] for f in feats if f[0] == "dtype"} == set(DTYPES)
    assert _needed(part) <= _needed(whole)


def test_specs_checked_together_share_kernels_and_compile_fewer():
    have: set = set()
    total_alone = 0
    for name in bundled_names():
        op = load(name)
        together = session.plan(op, LAYOUTS, DTYPES, whole=False, have=have)
        total_alone += len(_needed(session.plan(op, LAYOUTS, DTYPES, whole=False, have=set())))
        assert _needed(together) <= have
    whole: set = set()
    for name in bundled_names():
        session.plan(load(name), LAYOUTS, DTYPES, whole=True, have=whole)
    assert len(have) <= total_alone and len(have) < len(whole) / 2


def test_kernels_with_equal_bodies_share_one_module():
    """matrix.body stands for the module key (the code below the header) without rendering."""
    keys: dict = {}
    specs: dict = {}
    for name in ("instance_norm", "switchable_norm", "layer_norm"):
        op = load(name)
        for check in matrix.full(op.spec, ("contiguous", "channels_last"), DTYPES):
            for need in matrix.needs(op, check):
                keys.setdefault(matrix.body(need.kernel), set()).add(cpu.module_key(need.kernel))
                specs.setdefault(matrix.body(need.kernel), set()).add(name)
    assert all(len(k) == 1 for k in keys.values())  # one body, one module
    assert len(set().union(*keys.values())) == len(keys)  # and the other way round
    assert any(s == {"instance_norm", "switchable_norm"} for s in specs.values())  # shared across specs


@pytest.mark.parametrize("name", [n for n in bundled_names() if load(n).spec.fuse is not None])
def test_a_fused_spec_plans_the_kernels_its_checks_render(name):
    """The matrix plans a fused spec's calls with its extra arrays (op/fused.plan_arrays), as
    the op does: the planned kernels render (the prebuild keys them by their source)."""
    op = load(name)
    planned = session.plan(op, LAYOUTS, DTYPES, whole=False, have=set())
    kernels = [n.kernel for n in planned.needs]
    assert kernels and all(set(op.spec.fuse.extras) <= {a.removeprefix("e_") for a in k.arrays} for k in kernels)
    assert all(cpu.module_key(k) for k in kernels)
