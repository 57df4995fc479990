"""normgen.torch for fused specs: AddRMSNorm, AddLayerNorm and GroupNormSiLU against the torch.nn
lines they replace (outputs, the residual stream h, every gradient, state_dict), fused specs
through from_spec with extra inputs, save="y" (x is not kept), and the errors."""

from __future__ import annotations

import gc
import textwrap
import weakref

import pytest

import normgen
from normgen import CallError

torch = pytest.importorskip("torch")
import normgen.torch as nt

nn, F = torch.nn, torch.nn.functional


def _like(t, layout):
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" and t.dim() == 4 else t


def _inputs(shape, layout, dtype, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [_like(torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5, layout).requires_grad_() for _ in range(n)]


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_add_norm_modules_are_the_two_torch_lines(kind, layout, dtype):
    """h = x + residual; y = norm(h): y, h, and the gradients of x, residual and the parameters
    (a loss on both outputs: h is the next block's residual stream)."""
    ref = (nn.RMSNorm(16, dtype=dtype) if kind == "rms" else nn.LayerNorm(16, dtype=dtype))
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1)
    new = (nt.AddRMSNorm(16, dtype=dtype) if kind == "rms" else nt.AddLayerNorm(16, dtype=dtype))
    new.load_state_dict(ref.state_dict())
    assert isinstance(new, type(ref)) and new.state_dict().keys() == ref.state_dict().keys()
    x, r = _inputs((2, 3, 5, 16), layout, dtype, 2)
    x2, r2 = (t.detach().clone().requires_grad_() for t in (x, r))
    y, h = new(x, r)
    h2 = x2 + r2
    y2 = ref(h2)
    g = torch.Generator().manual_seed(5)
    dy, dh = torch.randn(y.shape, generator=g, dtype=dtype), torch.randn(y.shape, generator=g, dtype=dtype)
    torch.autograd.backward([y, h], [dy, dh])
    torch.autograd.backward([y2, h2], [dy, dh])
    torch.testing.assert_close(y, y2, **_tol(dtype))
    torch.testing.assert_close(h, h2, **_tol(dtype))
    torch.testing.assert_close(x.grad, x2.grad, **_tol(dtype))
    torch.testing.assert_close(r.grad, r2.grad, **_tol(dtype))
    for p, p2 in zip(new.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p2.grad, **_tol(dtype))
    assert y.stride() == x.stride() and h.stride() == x.stride()  # the input's memory order, no copy
    # the residual's gradient is dx (x + residual): one tensor, as torch's add returns, stored apart
    assert x.grad.data_ptr() != r.grad.data_ptr()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_group_norm_silu_module(layout):
    ref = nn.GroupNorm(4, 16, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    new = nt.GroupNormSiLU(4, 16, dtype=torch.float64)
    new.load_state_dict(ref.state_dict())
    (x,) = _inputs((3, 16, 6, 7), layout, torch.float64, 1, seed=2)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = new(x), F.silu(ref(x2))
    dy = torch.randn_like(y)
    y.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(y, y2, **_tol(torch.float64))
    torch.testing.assert_close(x.grad, x2.grad, **_tol(torch.float64))
    torch.testing.assert_close(new.weight.grad, ref.weight.grad, **_tol(torch.float64))
    torch.testing.assert_close(new.bias.grad, ref.bias.grad, **_tol(torch.float64))


def test_from_spec_fused_modules_take_extras_by_name():
    gated = nt.from_spec("gated_rms_norm", normalized_shape=(8,), dtype=torch.float64)
    x, z = _inputs((5, 8), "contiguous", torch.float64, 2, seed=7)
    y = gated(x, z=z)
    torch.testing.assert_close(y, F.rms_norm(x * F.silu(z), (8,), gated.weight, eps=1e-5))
    gemma = nt.from_spec("gemma_rms_norm", normalized_shape=(8,), dtype=torch.float64)
    torch.testing.assert_close(gemma.weight, torch.zeros(8, dtype=torch.float64))  # effective weight 1
    torch.testing.assert_close(gemma(x), F.rms_norm(x, (8,), torch.ones(8, dtype=torch.float64), eps=1e-6))
    lazy = nt.from_spec("add_rms_norm", dtype=torch.float64, normalized_shape=(8,))
    y, h = lazy(x, residual=z)
    torch.testing.assert_close(h, x + z)
    with pytest.raises(CallError, match="missing extra input z="):
        gated(x)
    with pytest.raises(CallError, match="unknown extra input"):
        nt.normalize("gated_rms_norm", x, {"weight": gated.weight}, extras={"q": z}, normalized_shape=(8,))


def test_a_lazy_fused_module_takes_extras_on_its_first_call():
    spec = normgen.parse_spec(textwrap.dedent("""
        name = "gated_pos_norm"
        input = "N C H W"
        kept = "H W"
        [affine]
        axes = "C"
        [fuse]
        prologue = "x * sigmoid(gate)"
        """), "gated_pos_norm.toml")
    m = nt.from_spec(spec, dtype=torch.float64)
    x, gate = _inputs((4, 3, 2, 5), "contiguous", torch.float64, 2, seed=9)
    y = m(x, gate=gate)
    assert type(m) is nt.SpecNorm and m.weight.shape == (3,)
    h = x * torch.sigmoid(gate)
    mean = h.mean(dim=(0, 1), keepdim=True)
    var = h.var(dim=(0, 1), keepdim=True, unbiased=False)
    torch.testing.assert_close(y, (h - mean) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize("save", ["x", "y"])
def test_save_y_keeps_y_instead_of_x(save):
    """With save="y" the autograd graph does not keep the normalization's input alive: per layer,
    the bytes of x are free between forward and backward (x_hat is rebuilt from y)."""
    m = nt.from_spec("layer_norm", normalized_shape=(64,), dtype=torch.float64, save=save)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    a = torch.randn(32, 64, dtype=torch.float64, requires_grad=True)
    t = a * 2.0  # the norm's input: nothing but the norm would keep it (mul by a number saves nothing)
    alive = weakref.ref(t)
    y = m(t)
    del t
    gc.collect()
    assert (alive() is None) == (save == "y")
    y.pow(2).sum().backward()
    a2 = a.detach().clone().requires_grad_()
    F.layer_norm(a2 * 2.0, (64,), m.weight, m.bias).pow(2).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)


def test_quantized_spec_in_torch_is_forward_only():
    spec = normgen.parse_spec(textwrap.dedent("""
        input = "N D"
        kept = "N"
        center = "none"
        scale = "rms"
        [fuse]
        quantize = "int8"
        """), "q.toml", default_name="rms_int8")
    x = torch.randn(4, 32, requires_grad=True)
    q, scale = nt.normalize(spec, x)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and scale.shape == (4,) and scale.dtype == torch.float32
    ref = F.rms_norm(x.detach().double(), (32,), eps=float(torch.finfo(torch.float32).eps))
    torch.testing.assert_close(q.double() * scale.double()[:, None], ref, rtol=0, atol=float(scale.max()) * 0.51)
    assert not q.requires_grad and q.grad_fn is None  # inference: no graph (torch.quantize_per_tensor's way)


def test_fused_modules_under_torch_compile():
    """The custom ops carry a fused spec's extras in and its kept prologue out: torch.compile
    (fullgraph, AOTAutograd with the ops' fake implementations and registered autograd) gives
    eager's outputs and gradients."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nt.AddRMSNorm(16, dtype=torch.float64)
            self.act = nt.GroupNormSiLU(2, 4, dtype=torch.float64)

        def forward(self, x, r):
            y, h = self.norm(x, r)
            return self.act(y.reshape(2, 4, 5, 16)).sum() + (h * h).sum()

    block = Block()
    x, r = _inputs((2, 4, 5, 16), "contiguous", torch.float64, 2, seed=11)
    eager = block(x, r)
    eager.backward()
    gx, gr = x.grad.clone(), r.grad.clone()
    x.grad = r.grad = None
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(x, r)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(r.grad, gr)


def test_save_y_frees_one_activation_per_layer():
    from normgen.bench.fused import save_y_bytes

    assert save_y_bytes((64, 32), layers=3) == {"x": 3 * 64 * 32 * 4, "y": 0}
