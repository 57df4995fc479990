"""normgen's torch.library custom ops: torch.library.opcheck for every bundled spec and user
specs, fake implementations that promise exactly what the real ones return, spec ids,
and running statistics updated with torch operations alone (no host reads).

Shapes and layouts are those of test_torch.py (float64), so the kernels are shared.
"""

from __future__ import annotations

import numpy as np
import pytest

import normgen
from normgen import CallError
from normgen.spec import build_spec, bundled_names

torch = pytest.importorskip("torch")
nt = pytest.importorskip("normgen.torch")
from normgen.torch import library
from normgen.torch.fake import extra_inputs, extra_outputs
from normgen.torch.registry import op_of, sizes_key, spec_key
from normgen.torch.running import update_running

X4 = (4, 6, 5, 5)
POS_NORM = """
name  = "pos_norm"
input = "N C H W"
kept  = "H W"
[affine]
axes = "C"
[running]
axes = "H W"
"""

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
    # fused specs: extra inputs in, a kept prologue out, and their gradients
    "add_rms_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "add_layer_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "gated_rms_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "gemma_rms_norm": (X4, {"normalized_shape": (5,)}, (5,), None),
    "group_norm_silu": (X4, {"num_groups": 3}, (6,), None),
}


def pos_norm_spec():
    """POS_NORM, built in Python."""
    return build_spec("pos_norm", "N C H W", "H W", affine={"axes": "C"}, running={"axes": "H W"})


def test_cases_cover_every_bundled_spec():
    assert sorted(CASES) == sorted(bundled_names())


def rand(shape, seed, scale=1.0, shift=0.0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).requires_grad_(grad)


def forward_args(key: str, x, sizes, param_shape, running_shape, training: bool, grad: bool = True) -> tuple:
    """The arguments of normgen::forward for spec `key`: every parameter the spec has, the
    running statistics in evaluation, a mixture's logits."""
    spec = op_of(key).spec
    w = rand(param_shape, 1, grad=grad) if spec.affine and spec.affine.weight else None
    b = rand(param_shape, 2, grad=grad) if spec.affine and spec.affine.bias else None
    rm = rv = None
    if running_shape is not None and not training:
        rm, rv = rand(running_shape, 3), rand(running_shape, 4).abs() + 0.5
    mw = vw = None
    if spec.is_mixture:
        mw, vw = rand((3,), 5, grad=grad), rand((3,), 6, grad=grad)
    extras = [rand(tuple(x.shape), 10 + i, grad=grad) for i, _ in enumerate(extra_inputs(spec))]
    return (x, w, b, extras, rm, rv, mw, vw, key, sizes_key(sizes), None, training, "")


def opcheck(op, args) -> None:
    # opcheck's own checks: schema (mutations and aliasing as declared), autograd registration,
    # fake tensors, and AOTAutograd with dynamic shapes against the eager results
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# evaluation (normalized with running statistics) for the specs that keep them
MODES = [(name, training) for name in sorted(CASES) for training in (True, False) if training or CASES[name][3]]


@pytest.mark.parametrize("name, training", MODES, ids=[f"{n}-{'train' if t else 'eval'}" for n, t in MODES])
def test_opcheck_bundled(name, training):
    shape, sizes, pshape, rshape = CASES[name]
    x = rand(shape, 0, scale=3, shift=1, grad=True)
    args = forward_args(name, x, sizes, pshape, rshape, training)
    opcheck(library.forward, args)
    _, stats, moments, extra = library.forward(*args)
    assert len(extra) == len(extra_outputs(op_of(name).spec))
    dy = rand(shape, 7)
    dextra = [rand(shape, 8) for _ in extra]
    detached = [[e.detach() for e in a] if isinstance(a, list) else a.detach() if isinstance(a, torch.Tensor) else a
                for a in args]
    opcheck(library.backward_op, (dy, dextra, *detached[:8], stats, moments, *detached[8:]))
    if training and rshape is not None:
        rm, rv = rand(rshape, 3), rand(rshape, 4).abs() + 0.5
        opcheck(library.update_running, (moments, rm, rv, None, list(shape), name, sizes_key(sizes), 0.1))


@pytest.mark.parametrize("source", ["file", "python"])
def test_opcheck_user_spec(tmp_path, source):
    if source == "file":
        path = tmp_path / "pos_norm.toml"
        path.write_text(POS_NORM)
        key = spec_key(str(path))
    else:
        key = spec_key(pos_norm_spec())
    assert key.startswith("pos_norm@")
    x = rand(X4, 0, scale=3, shift=1, grad=True)
    for training in (True, False):
        opcheck(library.forward, forward_args(key, x, {}, (6,), (5, 5), training))
    _, _, moments, _ = library.forward(*forward_args(key, x, {}, (6,), (5, 5), True))
    opcheck(library.update_running, (moments, rand((5, 5), 3), rand((5, 5), 4), None, list(X4), key, "", 0.1))


def test_spec_ids_are_stable_and_registered(tmp_path):
    assert spec_key("group_norm") == "group_norm" and op_of("group_norm") is normgen.load("group_norm")
    path = tmp_path / "pos_norm.toml"
    path.write_text(POS_NORM)
    same = pos_norm_spec()
    assert spec_key(str(path)) == spec_key(same)  # the spec's meaning, not its file, names it
    other = build_spec("pos_norm", "N C H W", "H W", affine={"axes": "C"})
    assert spec_key(other) != spec_key(same)
    with pytest.raises(CallError, match="no spec is registered under 'pos_norm@000000000000'"):
        op_of("pos_norm@000000000000")


LAYOUTS = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
    "sliced": lambda t: t[:, :, 1:, ::2],
    "transposed": lambda t: t.transpose(1, 3),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fake_outputs_promise_what_the_kernels_return(layout):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = LAYOUTS[layout](rand((4, 6, 5, 6), 0))
    cases = [("group_norm", {"num_groups": 3}, (x.shape[1],)), ("layer_norm", {"normalized_shape": x.shape[-1:]},
                                                                 tuple(x.shape[-1:]))]
    for name, sizes, pshape in cases:
        args = forward_args(name, x, sizes, pshape, None, True, grad=False)
        real = library.forward(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = library.forward(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
        for r, f in zip(real[:3], fake[:3]):
            assert (r.shape, r.stride(), r.dtype) == (tuple(f.shape), f.stride(), f.dtype), name
        assert real[0].stride() == torch.empty_like(x).stride()


def test_running_update_reads_nothing_on_the_host():
    # meta tensors have no data: an .item(), float() or .cpu() in the update would raise here,
    # so the same code on CUDA tensors does not wait for the GPU
    binding = normgen.load("instance_norm").binding(X4)
    moments = torch.empty((24, 3), dtype=torch.float64, device="meta")
    rm, rv = torch.empty(6, device="meta"), torch.empty(6, device="meta")
    update_running(binding, moments, rm, rv, None, torch.empty((), dtype=torch.long, device="meta"))
    update_running(binding, moments, rm, rv, 0.1, None)


@pytest.mark.parametrize("name", ["batch_norm", "instance_norm", "switchable_norm", "pos_norm"])
def test_running_update_matches_the_op(name):
    # torch operations (running.py) against the Op's NumPy update (op/running.py)
    spec = pos_norm_spec() if name == "pos_norm" else name
    op = normgen.load(spec)
    x = rand(X4, 0, scale=3, shift=1).numpy()
    extra = {"mean_weight": np.ones(3), "var_weight": np.ones(3)} if op.spec.is_mixture else {}
    shape = op.binding(X4).running_shape
    rm, rv = np.arange(np.prod(shape), dtype=np.float64).reshape(shape), np.ones(shape)
    want_m, want_v = rm.copy(), rv.copy()
    fwd = op.forward(x, running_mean=want_m, running_var=want_v, momentum=0.3, **extra)
    got_m, got_v = torch.from_numpy(rm), torch.from_numpy(rv)
    update_running(op.binding(X4), torch.from_numpy(np.asarray(fwd.moments)), got_m, got_v, 0.3, None)
    np.testing.assert_allclose(got_m.numpy(), want_m, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_v.numpy(), want_v, rtol=1e-12, atol=1e-12)


def test_cuda_training_forward_leaves_the_statistics_on_the_device(monkeypatch):
    # The CUDA code path on the CPU emulator (NumPy arrays stand for device memory): a training
    # forward copies nothing to the host, and its moments update the running statistics with
    # torch operations, as on a GPU; the result equals the Op's own (host) update.
    from normgen.runtime import select

    device = type(select(np.zeros(1), "cuda").device)
    copies = []
    to_host = device.to_host
    monkeypatch.setattr(device, "to_host", lambda self, a: copies.append(np.shape(a)) or to_host(self, a))
    op = normgen.load("batch_norm")
    x = rand(X4, 0, scale=3, shift=1).float().numpy()
    w, b = np.ones(6, np.float32), np.zeros(6, np.float32)
    fwd = op.forward(x, w, b, target="cuda")
    assert copies == []
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    update_running(op.binding(X4), torch.from_numpy(fwd.moments), rm, rv, 0.1, None)
    want_m, want_v = np.zeros(6), np.ones(6)
    op.forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), running_mean=want_m,
               running_var=want_v, momentum=0.1)
    np.testing.assert_allclose(rm.numpy(), want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.numpy(), want_v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["group_norm", "switchable_norm"])
def test_registered_autograd_formula_passes_gradcheck(name):
    # the op called directly with inputs that need gradients runs the formula registered with
    # torch.library.register_autograd (eager modules use autograd.NormFunction, compile this one)
    shape, sizes, pshape, rshape = CASES[name]
    x = rand(shape, 0, scale=3, shift=1, grad=True)
    args = forward_args(name, x, sizes, pshape, rshape, True)
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*tensors):
        full = list(args)
        for i, t in zip(where, tensors):
            full[i] = t
        y = library.forward(*full)[0]
        assert y.grad_fn is not None and "normgen_forward" in type(y.grad_fn).__name__
        return y

    assert torch.autograd.gradcheck(f, tuple(args[i] for i in where), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)


def test_a_failed_update_leaves_the_running_statistics_as_they_were():
    x = rand(X4, 0)
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    with pytest.raises(CallError, match=r"running_var has shape \(5,\) and dtype torch.float64, expected \(6,\)"):
        nt.batch_norm(x, rm, rv, training=True)
    assert torch.equal(rm, torch.zeros(6, dtype=torch.float64)) and torch.equal(rv, torch.ones(5, dtype=torch.float64))
    rv = torch.ones(6, dtype=torch.float64)
    with pytest.raises(CallError, match="expected more than 1 value per statistic"):
        nt.normalize("batch_norm", x[:1, :, :1, :1], running_mean=rm, running_var=rv)
    assert torch.equal(rm, torch.zeros(6, dtype=torch.float64)) and torch.equal(rv, torch.ones(6, dtype=torch.float64))
