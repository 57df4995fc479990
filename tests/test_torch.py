"""normgen.torch against torch.nn: the same outputs, input and parameter gradients, running
buffers and state_dicts, over layouts and modes; gradcheck for every bundled spec's module.

Kernels compile per (spec, structure, layout, dtype): the cases reuse a few small shapes (X4
below and its layouts) in float64, and gradcheck runs on the same ones, so that the whole file
stays around a minute on two cores.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normgen import CallError
from normgen.spec.library import bundled_names

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
nt = pytest.importorskip("normgen.torch")

REPO = Path(__file__).resolve().parent.parent
X4 = (4, 6, 5, 5)


def make_input(shape: tuple[int, ...], layout: str, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """An input of `shape` in memory layout `layout`, with mean 1 and std 3 (not unit: so a
    missing centering or scaling shows)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return (torch.randn(shape, generator=g, dtype=dtype) * 3 + 1)
    if layout == "channels_last":
        x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
        return x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if layout == "sliced":  # every dimension strided, with an offset
        big = torch.randn([n * 2 + 1 for n in shape], generator=g, dtype=dtype) * 3 + 1
        return big[tuple(slice(1, None, 2) for _ in shape)]
    raise ValueError(layout)


def randomize(module: nn.Module, seed: int = 1) -> None:
    """Parameters and running statistics away from their 1/0 initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)


def assert_same_step(ref: nn.Module, new: nn.Module, x: torch.Tensor, seed: int, tol: float = 1e-9) -> torch.Tensor:
    """One forward + backward of both modules on copies of x: outputs, input and parameter
    gradients, and buffers (running statistics, num_batches_tracked) must agree."""
    xa, xb = x.detach().clone().requires_grad_(), x.detach().requires_grad_()  # xb keeps x's layout
    ya, yb = ref(xa), new(xb)
    dy = torch.randn(ya.shape, generator=torch.Generator().manual_seed(seed), dtype=ya.dtype)
    for m in (ref, new):
        m.zero_grad(set_to_none=True)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(yb, ya, rtol=tol, atol=tol)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=tol, atol=tol)
    params_a, params_b = dict(ref.named_parameters()), dict(new.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        torch.testing.assert_close(params_b[name].grad, p.grad, rtol=tol, atol=tol * 10, msg=name)
    buffers_a, buffers_b = dict(ref.named_buffers()), dict(new.named_buffers())
    assert buffers_a.keys() == buffers_b.keys()
    for name, b in buffers_a.items():
        torch.testing.assert_close(buffers_b[name], b, rtol=tol, atol=tol, msg=name)
    return yb


def ran_normgen(y: torch.Tensor) -> bool:
    """Whether y's autograd graph goes through normgen's function (the generated kernels)."""
    todo, seen = [y.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        if type(fn).__name__ == "NormFunctionBackward":
            return True
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return False


# (id, constructor taking the module namespace, input shape, layout)
CASES = [
    ("BatchNorm2d", lambda m: m.BatchNorm2d(6, momentum=0.2), X4, "contiguous"),
    ("BatchNorm2d-channels_last", lambda m: m.BatchNorm2d(6), X4, "channels_last"),
    ("BatchNorm2d-sliced", lambda m: m.BatchNorm2d(6), X4, "sliced"),
    ("BatchNorm1d-NC-momentum_None", lambda m: m.BatchNorm1d(6, momentum=None), (8, 6), "contiguous"),
    ("BatchNorm1d-NCL-no_affine", lambda m: m.BatchNorm1d(6, affine=False), (4, 6, 25), "contiguous"),
    ("BatchNorm3d-untracked", lambda m: m.BatchNorm3d(6, track_running_stats=False), (4, 6, 5, 1, 5), "contiguous"),
    ("InstanceNorm1d", lambda m: m.InstanceNorm1d(6), (4, 6, 25), "contiguous"),
    ("InstanceNorm2d-affine-tracked", lambda m: m.InstanceNorm2d(6, affine=True, track_running_stats=True),
     X4, "channels_last"),
    ("InstanceNorm3d-unbatched", lambda m: m.InstanceNorm3d(6, affine=True), (6, 5, 1, 5), "contiguous"),
    ("LayerNorm", lambda m: m.LayerNorm(5), X4, "contiguous"),
    ("LayerNorm-sliced-bias_False", lambda m: m.LayerNorm((5, 5), bias=False), X4, "sliced"),
    ("LayerNorm-no_affine", lambda m: m.LayerNorm(5, elementwise_affine=False, eps=1e-3), X4, "contiguous"),
    ("GroupNorm", lambda m: m.GroupNorm(3, 6), X4, "contiguous"),
    ("GroupNorm-channels_last", lambda m: m.GroupNorm(2, 6), X4, "channels_last"),
    ("RMSNorm", lambda m: m.RMSNorm(5), X4, "contiguous"),
    ("RMSNorm-eps-no_affine", lambda m: m.RMSNorm((5, 5), eps=1e-4, elementwise_affine=False), X4, "contiguous"),
]


@pytest.mark.parametrize("make, shape, layout", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_module_matches_torch_nn(make, shape, layout):
    ref, new = make(nn).double(), make(nt).double()
    assert isinstance(new, type(ref)) and type(new) is not type(ref)  # a subclass: torch.nn's state and API
    randomize(ref)
    new.load_state_dict(ref.state_dict())
    for step in range(3):  # training: running statistics move (and num_batches_tracked counts)
        x = make_input(shape, layout, seed=step)
        y = assert_same_step(ref, new, x, seed=step)
        assert ran_normgen(y)  # the kernels ran, not torch
        assert y.stride() == torch.empty_like(x).stride()  # y keeps x's memory order
    ref.eval()
    new.eval()
    assert_same_step(ref, new, make_input(shape, layout, seed=9), seed=9)


def test_float32():  # the cases above run in float64 (sharing kernels with gradcheck); once in float32
    ref, new = nn.LayerNorm(5), nt.LayerNorm(5)
    randomize(ref)
    new.load_state_dict(ref.state_dict())
    y = assert_same_step(ref, new, make_input(X4, "contiguous", dtype=torch.float32), seed=0, tol=2e-5)
    assert y.dtype == torch.float32


def test_inputs_reach_the_kernels_without_a_copy(monkeypatch):
    from normgen.op import Op

    seen = []
    forward = Op.forward

    def spy(self, x, *args, **kwargs):
        seen.append(x)
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(Op, "forward", spy)
    for layout in ("channels_last", "sliced"):
        x = make_input(X4, layout)
        nt.BatchNorm2d(6).double()(x)
        assert np.shares_memory(seen[-1], x.numpy()) and seen[-1].strides == x.numpy().strides


def sn_reference(x, mw, vw, w, b, rm, rv, training, momentum, eps):
    """Switchable Norm in plain torch (biased variances, mixture of IN, LN, BN statistics)."""
    dims = tuple(range(2, x.dim()))
    mean_in = x.mean(dims, keepdim=True)
    var_in = x.var(dims, keepdim=True, unbiased=False)
    second = var_in + mean_in**2
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = second.mean(1, keepdim=True) - mean_ln**2
    view = (1, -1) + (1,) * len(dims)
    if training:
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = second.mean(0, keepdim=True) - mean_bn**2
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            rm.mul_(1 - momentum).add_(momentum * mean_bn.reshape(-1))
            rv.mul_(1 - momentum).add_(momentum * var_bn.reshape(-1) * n / (n - 1))
    else:
        mean_bn, var_bn = rm.reshape(view), rv.reshape(view)
    sm, sv = torch.softmax(mw, 0), torch.softmax(vw, 0)
    mean = sm[0] * mean_in + sm[1] * mean_ln + sm[2] * mean_bn
    var = sv[0] * var_in + sv[1] * var_ln + sv[2] * var_bn
    return (x - mean) / torch.sqrt(var + eps) * w.reshape(view) + b.reshape(view)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_switchable_norm_matches_a_torch_reference(training):
    sn = nt.SwitchableNorm2d(6, momentum=0.3).double()
    randomize(sn)
    assert [n for n, _ in sn.named_parameters()] == ["weight", "bias", "mean_weight", "var_weight"]
    assert [n for n, _ in sn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    sn.train(training)
    params = [p.detach().clone().requires_grad_() for p in (sn.mean_weight, sn.var_weight, sn.weight, sn.bias)]
    rm, rv = sn.running_mean.clone(), sn.running_var.clone()
    x = make_input(X4, "contiguous")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = sn_reference(xa, *params, rm, rv, training, 0.3, 1e-5)
    yb = sn(xb)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(yb, ya)
    torch.testing.assert_close(xb.grad, xa.grad)
    for ref, p in zip(params, (sn.mean_weight, sn.var_weight, sn.weight, sn.bias)):
        torch.testing.assert_close(p.grad, ref.grad)
    torch.testing.assert_close(sn.running_mean, rm)
    torch.testing.assert_close(sn.running_var, rv)
    assert int(sn.num_batches_tracked) == int(training)


# ---- gradcheck for every bundled spec's module, and a user's spec ------------------------------

POS_NORM = """
name  = "pos_norm"
doc   = "Statistics per position (H, W) over the batch and the channels."
input = "N C H W"
kept  = "H W"
[affine]
axes = "C"
[running]
axes = "H W"
"""

# spec -> (from_spec arguments, input shape, layout): the shapes and layouts of the cases above,
# so that gradcheck (float64) reuses their compiled kernels
GRADCHECK = {
    "batch_norm": ({"num_features": 6}, X4, "contiguous"),
    "instance_norm": ({"num_features": 6}, X4, "channels_last"),
    "group_norm": ({"num_groups": 3, "num_channels": 6}, X4, "contiguous"),
    "layer_norm": ({"normalized_shape": 5}, X4, "contiguous"),
    "rms_norm": ({"normalized_shape": 5}, X4, "contiguous"),
    "switchable_norm": ({"num_features": 6}, X4, "contiguous"),
    "weight_norm": ({"num_features": 6}, (6, 3, 3, 3), "contiguous"),
    "weight_standardization": ({}, (4, 3, 3, 3), "contiguous"),
    "standardize": ({}, (5, 3), "contiguous"),
    # fused specs: their extra inputs get gradients too, and a kept prologue h is a second output
    "add_rms_norm": ({"normalized_shape": 5}, X4, "contiguous"),
    "add_layer_norm": ({"normalized_shape": 5}, X4, "channels_last"),
    "gated_rms_norm": ({"normalized_shape": 5}, X4, "contiguous"),
    "gemma_rms_norm": ({"normalized_shape": 5}, X4, "contiguous"),
    "group_norm_silu": ({"num_groups": 3, "num_channels": 6}, X4, "channels_last"),
}


def test_gradcheck_covers_every_bundled_spec():
    assert sorted(GRADCHECK) == sorted(bundled_names())


def gradcheck_module(module: nn.Module, x: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> None:
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    extra_names = list(extras or {})

    def f(x, *rest):
        es, ps = rest[:len(extra_names)], rest[len(extra_names):]
        return torch.func.functional_call(module, dict(zip(names, ps)), (x,), dict(zip(extra_names, es)))

    # fast mode compares random projections u^T J v of the analytical and numerical Jacobians:
    # a wrong entry shows as surely as in the full Jacobian, at a hundredth of the calls
    inputs = (x.detach().requires_grad_(), *(e.detach().requires_grad_() for e in (extras or {}).values()), *params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_gradcheck_bundled(name):
    kwargs, shape, layout = GRADCHECK[name]
    module = nt.from_spec(name, dtype=torch.float64, **kwargs)
    assert type(module) is nt.SpecNorm  # every shape was known up front
    randomize(module)
    x = make_input(shape, layout, seed=3)
    extras = {e: make_input(shape, layout, seed=4 + i) * 0.3 for i, e in enumerate(module.spec.extras)}
    gradcheck_module(module, x, extras)
    if module.spec.running is not None:  # evaluation: normalized with the running statistics
        gradcheck_module(module.eval(), x, extras)


def test_gradcheck_user_spec_from_a_file(tmp_path):
    path = tmp_path / "pos_norm.toml"
    path.write_text(POS_NORM)
    module = nt.from_spec(path, dtype=torch.float64)
    assert isinstance(module, nt.LazySpecNorm)  # the running statistics' (H, W) come from the input
    x = make_input(X4, "contiguous")
    module(x)
    assert type(module) is nt.SpecNorm
    assert module.weight.shape == (6,) and module.running_mean.shape == (5, 5)
    assert int(module.num_batches_tracked) == 1
    randomize(module)
    gradcheck_module(module, x)
    gradcheck_module(module.eval(), x)


def test_from_spec_is_a_drop_in_batch_norm():
    ref = nn.BatchNorm2d(6, dtype=torch.float64)
    randomize(ref)
    new = nt.from_spec("batch_norm", num_features=6, dtype=torch.float64)
    new.load_state_dict(ref.state_dict())
    for step in range(2):
        assert_same_step(ref, new, make_input(X4, "contiguous", seed=step), seed=step)
    assert new.state_dict().keys() == ref.state_dict().keys()


def test_from_spec_shapes_and_errors():
    assert nt.from_spec("layer_norm", normalized_shape=(2, 3)).weight.shape == (2, 3)
    assert nt.from_spec("group_norm", sizes={"num_groups": 2}, num_channels=4).bias.shape == (4,)
    assert isinstance(nt.from_spec("group_norm", num_groups=2), nt.LazySpecNorm)
    assert [n for n, _ in nt.from_spec("weight_norm", 3).named_parameters()] == ["g"]
    plain = nt.from_spec("batch_norm", num_features=3, affine=False, track_running_stats=False)
    assert list(plain.parameters()) == [] and list(plain.buffers()) == []
    with pytest.raises(CallError, match="unknown size argument.*num_group.*takes num_groups"):
        nt.from_spec("group_norm", num_group=2, num_channels=4)
    with pytest.raises(CallError, match="shape of the parameters or running statistics is unknown"):
        nt.SpecNorm("batch_norm")
    gn = nt.from_spec("group_norm", num_groups=2, num_channels=8)
    with pytest.raises(CallError, match=r"weight has shape \(8,\), expected \(6,\)"):
        gn(make_input(X4, "contiguous"))


def test_lazy_module_loads_a_state_dict_before_its_first_call(tmp_path):
    path = tmp_path / "pos_norm.toml"
    path.write_text(POS_NORM)
    trained = nt.from_spec(path, dtype=torch.float64)
    trained(make_input(X4, "contiguous"))
    randomize(trained)
    fresh = nt.from_spec(path, dtype=torch.float64)
    fresh.load_state_dict(trained.state_dict())
    x = make_input(X4, "contiguous", seed=5)
    torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))


# ---- state_dicts, parametrizations, convert ----------------------------------------------------

STATE_CASES = [
    ("BatchNorm1d", (6,)), ("BatchNorm2d", (6,)), ("BatchNorm3d", (6,)),
    ("InstanceNorm1d", (6,)), ("InstanceNorm2d", (6,)), ("InstanceNorm3d", (6,)),
    ("LayerNorm", ((5, 5),)), ("GroupNorm", (3, 6)), ("RMSNorm", (5,)),
]


@pytest.mark.parametrize("name, args", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_state_dict_loads_both_ways(name, args):
    kwargs = {"affine": True, "track_running_stats": True} if name.startswith("Instance") else {}
    ref, new = getattr(nn, name)(*args, **kwargs), getattr(nt, name)(*args, **kwargs)
    assert list(new.state_dict()) == list(ref.state_dict())
    assert repr(new) == repr(ref)
    randomize(ref, seed=1)
    new.load_state_dict(ref.state_dict(), strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(new.state_dict()[key], value), key
    randomize(new, seed=2)
    ref.load_state_dict(new.state_dict(), strict=True)
    for key, value in new.state_dict().items():
        assert torch.equal(ref.state_dict()[key], value), key


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_matches_torch_parametrization(dim):
    from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3).double()
    ref = torch_weight_norm(copy.deepcopy(conv), dim=dim)
    new = nt.weight_norm(copy.deepcopy(conv), dim=dim)
    # registering splits the weight into g = ||weight|| (original0, shaped as torch's) and v
    assert list(new.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(new.state_dict()[key], value, msg=key)
    randomize(ref)
    new.load_state_dict(ref.state_dict())
    x = make_input((2, 3, 5, 5), "contiguous")
    ya, yb = ref(x), new(x)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(yb, ya)
    for (name, p), q in zip(ref.named_parameters(), new.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_weight_standardization_parametrization():
    conv = nt.weight_standardization(nn.Conv2d(3, 4, 3).double(), eps=1e-5)
    assert list(conv.state_dict()) == ["bias", "parametrizations.weight.original"]
    w = conv.parametrizations.weight.original
    v = w.detach().clone().requires_grad_()
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    ref = (v - mean) / torch.sqrt(v.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(conv.weight, ref)
    x = make_input((2, 3, 5, 5), "contiguous")
    dy = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    conv(x).backward(dy)
    F.conv2d(x, ref, conv.bias).backward(dy)
    torch.testing.assert_close(w.grad, v.grad)


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN with a residual connection."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), Block(6), nn.GroupNorm(3, 6),
        nn.LayerNorm(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double()


def test_convert_small_resnet():
    ref = small_resnet()
    randomize(ref)
    new = nt.convert(copy.deepcopy(ref))
    kinds = [type(m) for m in new.modules()]
    assert kinds.count(nt.BatchNorm2d) == 3 and nt.GroupNorm in kinds and nt.LayerNorm in kinds
    assert not any(type(m) in (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm) for m in new.modules())
    opt_a = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(new.parameters(), lr=0.1)
    for step in range(3):  # train: outputs, gradients, running statistics; then an SGD step
        assert_same_step(ref, new, make_input((4, 3, 5, 5), "contiguous", seed=step), seed=step)
        opt_a.step()
        opt_b.step()
    ref.eval()
    new.eval()
    assert_same_step(ref, new, make_input((4, 3, 5, 5), "contiguous", seed=7), seed=7)


def test_convert_shares_tensors_and_keeps_mode_and_dtype():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.LayerNorm(4, bias=False)).double().eval()
    weight, running = model[1].weight, model[1].running_mean
    out = nt.convert(model)
    assert out is model and type(model[1]) is nt.BatchNorm1d and type(model[2]) is nt.LayerNorm
    assert model[1].weight is weight and model[1].running_mean is running  # shared, not copied
    assert not model[1].training and model[2].bias is None and model[1].weight.dtype == torch.float64
    root = nt.convert(nn.GroupNorm(2, 4))
    assert type(root) is nt.GroupNorm and root.num_groups == 2


# ---- errors and the torch boundary -------------------------------------------------------------


def test_meta_tensors_get_shapes_from_the_fake_implementation():
    # meta tensors (a model built on device="meta") run the custom ops' fake implementations
    x = torch.empty(2, 6, 5, 5, device="meta").to(memory_format=torch.channels_last)
    y = nt.GroupNorm(3, 6, device="meta")(x)
    assert y.device.type == "meta" and y.shape == x.shape and y.stride() == x.stride()


def test_clear_errors():
    with pytest.raises(CallError, match="dtype torch.int64; normgen takes torch.float16, torch.bfloat16, "
                                        "torch.float32 or torch.float64"):
        nt.LayerNorm(5)(torch.arange(10).reshape(2, 5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nt.BatchNorm1d(5)(torch.randn(1, 5))
    with pytest.raises(CallError, match=r"expected 4D input \(got 3D input\)"):
        nt.SwitchableNorm2d(6)(torch.randn(2, 6, 5))


def test_in_place_change_of_the_input_before_backward_is_caught():
    x = torch.randn(4, 6, 5, requires_grad=True)
    h = x * 1
    y = nt.InstanceNorm1d(6)(h)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_import_normgen_does_not_import_torch():
    code = "import sys, normgen, normgen.ops; normgen.load('batch_norm'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
