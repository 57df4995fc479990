"""float16 and bfloat16 on the CPU backend: the bit converters, every bundled spec (fused ones
too) against the float64 oracle, normgen.torch against torch.nn's own CPU half-type layers, edge
values, and the custom ops (opcheck, one graph under torch.compile).

Tolerances. The kernels compute exactly as the float32 kernels do on the input's values and
round y and dx once to the input dtype (parameter gradients and statistics stay float32), and
the oracle runs in float64 on the same (already rounded) inputs. So an output is off by at
most half a unit in the last place of the dtype, plus float32 error (~1e-6): errors are
measured as verify/check.py does, |kernel - oracle| / max(1, max |oracle|), and one unit in the
last place at 1 (the dtype's machine epsilon: 2^-10 for float16, 2^-7 for bfloat16) leaves a
factor of two. PyTorch rounds its own float32 result once too, and the two float32 results may
straddle a rounding boundary: against torch the bound is one unit in the last place at the
largest magnitude of each output.

The shapes are small and shared between the tests (and with the torch tests' kernels where
they coincide), so Numba compiles each module once.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import normgen
from normgen import CallError
from normgen.codegen import cpu_prelude
from normgen.codegen.cpu_prelude import ld_bf16, ld_f16, st_bf16, st_f16
from normgen.plan.model import Options
from normgen.runtime.arrays import BF16, from_bits, to_bits
from normgen.spec.library import bundled_names
from normgen.verify import oracle
from normgen.verify.check import cases, run_case

torch = pytest.importorskip("torch")
nt = pytest.importorskip("normgen.torch")
nn = torch.nn

HALF = ("float16", "bfloat16")
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}  # one unit in the last place at 1
TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}
ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


# ---- converters: every bit pattern --------------------------------------------------------------


def _same_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit-equal float32 values, or both NaN."""
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


@njit
def _ld_f16_bits(src, dst):
    """ld_f16 with the bit arithmetic (what runs where the CPU has no conversion instructions)."""
    for i in range(src.shape[0]):
        dst[i] = cpu_prelude.f16_to_f32_bits(src[i])


@njit
def _st_f16_bits(src, dst):
    for i in range(src.shape[0]):
        dst[i] = cpu_prelude.f32_to_f16_bits(src[i])


def test_half_to_float_is_exact_for_every_bit_pattern():
    out = np.empty(ALL_BITS.size, np.float32)
    want = ALL_BITS.view(np.float16).astype(np.float32)
    assert _same_f32(ld_f16(ALL_BITS, out).copy(), want).all()  # (the CPU's instructions, where it has them)
    _ld_f16_bits(ALL_BITS, out)
    assert _same_f32(out, want).all()
    got = ld_bf16(ALL_BITS, out).copy()
    want = torch.from_numpy(ALL_BITS.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert _same_f32(got, want).all()
    assert np.isnan(got[0x7FC0]) and got[0x7F80] == np.inf and got[0x0001] == np.float32(2.0 ** -133)


def _float_cases() -> np.ndarray:
    """Every finite float16 value and bfloat16 value, the midpoints between neighbours (ties)
    and the float32 values either side of each, the specials, and random bit patterns."""
    with np.errstate(invalid="ignore"):  # (signaling NaN patterns)
        halves = ALL_BITS.view(np.float16).astype(np.float64)
        brains = from_bits(ALL_BITS).astype(np.float64)
    out = [np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 65504, 65519.996, 65520, 1e30, 3.4e38])]
    for values in (halves, brains):
        v = np.unique(values[np.isfinite(values)])
        mids = ((v[1:] + v[:-1]) / 2).astype(np.float32)  # exact in float32: one more bit
        out += [v, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))]
    rand = np.random.default_rng(0).integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    out.append(rand.view(np.float32))
    return np.concatenate([np.asarray(a, np.float32) for a in out])


def test_float_to_half_rounds_to_nearest_even_like_numpy_and_torch():
    f = _float_cases()
    got = np.empty(f.size, np.uint16)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16)
    for convert in (st_f16, _st_f16_bits):
        convert(f, got)
        g16 = got.view(np.float16)
        assert ((got == want.view(np.uint16)) | (np.isnan(g16) & np.isnan(want))).all()
    st_bf16(f, got)
    want_b = torch.from_numpy(f).bfloat16().view(torch.int16).numpy().view(np.uint16)
    gotv = from_bits(got)
    assert ((got == want_b) | (np.isnan(gotv) & np.isnan(f))).all()
    assert (np.signbit(gotv) == np.signbit(f)).all()  # NaN keeps its sign too


# ---- every bundled non-fused spec against the float64 oracle ------------------------------------


# Contiguous: channels_last runs in test_layers_match_torch_cpu_half (GroupNorm and BatchNorm, the
# layers that see NHWC activations: the columns strategy and strided channel groups), and
# `normgen check --dtype float16 --dtype bfloat16` runs every layout. Each layout compiles kernels
# of its own, and this file must stay quick.
TABLE = [(n, "contiguous", dt) for n in bundled_names() for dt in HALF]


@pytest.mark.parametrize("name, layout, dtype", TABLE, ids=[f"{n}-{lay}-{dt}" for n, lay, dt in TABLE])
def test_every_spec_matches_the_oracle(name, layout, dtype):
    """Forward (y, statistics, running statistics, a fused spec's kept h) and backward (dx,
    parameter gradients, the extra inputs' gradients). A fused prologue's h is rounded to the
    dtype where it is computed (as PyTorch stores x + residual) and the oracle takes the exact
    h: half an ulp of h more, inside the bound."""
    op = normgen.load(name)
    r = run_case(op, cases(op.spec)[0], layout, dtype, True, seed=3)
    assert r.error is None, r.error
    assert {"y", "rstd", "dx"} <= set(r.errors)
    worst = max(r.errors, key=r.errors.get)
    assert r.errors[worst] <= EPS[dtype], f"{name} {layout} {dtype}: {worst} error {r.errors[worst]:.2e}"


@pytest.mark.parametrize("name", ["add_rms_norm", "layer_norm"])
def test_groups_of_many_chunks_match_the_oracle(name):
    """The large case: a group spans many chunks, so a kept h is written chunk by chunk and
    read back for the normalization (fused), and nothing reuses a stale chunk copy."""
    op = normgen.load(name)
    large = next(c for c in cases(op.spec) if c.label == "large")
    for dtype in HALF:
        r = run_case(op, large, "contiguous", dtype, True, seed=5)
        assert r.error is None, r.error
        worst = max(r.errors, key=r.errors.get)
        assert r.errors[worst] <= EPS[dtype], f"{name} {dtype}: {worst} error {r.errors[worst]:.2e}"


PHASED = [("layer_norm", "contiguous", True), ("batch_norm", "channels_last", True),
          ("batch_norm", "channels_last", False), ("add_rms_norm", "contiguous", True)]


@pytest.mark.parametrize("name, layout, training", PHASED, ids=[f"{n}-{lay}-{'train' if t else 'eval'}"
                                                                  for n, lay, t in PHASED])
def test_phased_path_matches_the_oracle(name, layout, training):
    """Groups split into parts (partial moments and sums, host merge, apply): the kernels that
    large inputs run, rows and columns, and evaluation with the running statistics."""
    op = normgen.load(name, options=Options(parts=3))
    for dtype in HALF:
        r = run_case(op, cases(op.spec)[0], layout, dtype, training, seed=7)
        assert r.error is None and "parts" in r.plan, (r.error, r.plan)
        worst = max(r.errors, key=r.errors.get)
        assert r.errors[worst] <= EPS[dtype], f"{name} {layout} {dtype}: {worst} error {r.errors[worst]:.2e}"


@pytest.mark.parametrize("dtype", HALF)
def test_results_are_the_float32_kernels_rounded_once(dtype):
    """The half-type kernels run the float32 code on the same values: y and dx are the
    float32 path's rounded to nearest even, bit for bit; the statistics are the same."""
    rng = np.random.default_rng(5)
    x32 = (rng.standard_normal((6, 40)) * 3 + 2).astype(np.float32)
    dy32 = rng.standard_normal((6, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    if dtype == "float16":
        x, dy = x32.astype(np.float16), dy32.astype(np.float16)
        values, rounded = (lambda a: a.astype(np.float32)), (lambda a: a.astype(np.float16).view(np.uint16))
        bits = (lambda a: a.view(np.uint16))
    else:
        x, dy = BF16(to_bits(x32)), BF16(to_bits(dy32))
        values, rounded, bits = (lambda a: from_bits(a.bits)), to_bits, (lambda a: a.bits)
    op = normgen.load("layer_norm")
    fh = op.forward(x, w, normalized_shape=(40,))
    f32 = op.forward(values(x), w, normalized_shape=(40,))
    assert fh.kstats.dtype == np.float32
    np.testing.assert_array_equal(fh.kstats, f32.kstats)
    np.testing.assert_array_equal(bits(fh.y), rounded(f32.y))
    gh, g32 = op.backward(dy, fh), op.backward(values(dy), f32)
    np.testing.assert_array_equal(bits(gh.dx), rounded(g32.dx))
    assert gh.params["weight"].dtype == np.float32
    np.testing.assert_array_equal(gh.params["weight"], g32.params["weight"])


def test_parameters_of_the_input_dtype_or_float32():
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float16)
    op = normgen.load("layer_norm")
    w16 = np.linspace(0.5, 2, 8).astype(np.float16)
    y_a = op(x, w16, normalized_shape=(8,))
    y_b = op(x, w16.astype(np.float32), normalized_shape=(8,))
    np.testing.assert_array_equal(y_a, y_b)  # float16 weights are exact in float32
    with pytest.raises(CallError, match="weight has dtype float64, expected float16 \\(the dtype of x\\) or float32"):
        op(x, w16.astype(np.float64), normalized_shape=(8,))


def test_fused_columns_and_save_y_refuse_half_types_clearly():
    x = np.ones((2, 4, 3, 3), np.float16).transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)  # channels_last
    with pytest.raises(CallError, match="group_norm_silu: x has dtype float16; a fused spec whose kept axis is "
                                        "innermost .* takes float32 or float64"):
        normgen.load("group_norm_silu")(x, num_groups=2)
    op = normgen.load("layer_norm")
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float16)
    fwd = op.forward(x, np.ones(8, np.float16), normalized_shape=(8,), save="y")
    with pytest.raises(CallError, match="layer_norm: x has dtype float16; save='y' takes float32 or float64"):
        op.backward(x, fwd)


@pytest.mark.parametrize("dtype", HALF)
def test_add_rms_norm_matches_torch_in_the_dtype(dtype):
    """nt.AddRMSNorm against torch's own h = x + residual (rounded to the dtype) then RMSNorm."""
    tdt = TORCH[dtype]
    g = torch.Generator().manual_seed(3)
    x, r = (torch.randn(6, 40, generator=g).to(tdt) for _ in range(2))
    dy, dh = (torch.randn(6, 40, generator=g).to(tdt) for _ in range(2))
    ref, new = nn.RMSNorm(40).to(tdt), nt.AddRMSNorm(40).to(tdt)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(40, generator=g))
        new.weight.copy_(ref.weight)
    xa, ra, xb, rb = (t.clone().requires_grad_() for t in (x, r, x, r))
    ha = xa + ra
    ya = ref(ha)
    yb, hb = new(xb, rb)
    assert yb.dtype == hb.dtype == tdt
    assert torch.equal(hb, ha)  # h is x + residual rounded once, as torch rounds it
    torch.autograd.backward([ya, ha], [dy, dh])
    torch.autograd.backward([yb, hb], [dy, dh])
    _assert_ulps(yb, ya, dtype, "y")
    _assert_ulps(xb.grad, xa.grad, dtype, "dx")
    _assert_ulps(rb.grad, ra.grad, dtype, "dresidual")
    _assert_ulps(new.weight.grad, ref.weight.grad, dtype, "dweight")


# ---- normgen.torch against torch.nn on CPU half tensors ----------------------------------------


def _assert_ulps(got, want, dtype: str, what: str, ulps: int = 1) -> None:
    """|got - want| within `ulps` units in the last place of the dtype at want's largest magnitude."""
    got, want = got.detach().double(), want.detach().double()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(torch.isnan(got), torch.isnan(want)), what
    scale = max(1.0, float(want.nan_to_num().abs().max()))
    err = float((got - want).nan_to_num().abs().max()) / scale
    assert err <= ulps * EPS[dtype], f"{what}: {err:.2e} > {ulps} * {EPS[dtype]:.2e}"


LAYERS = {
    "LayerNorm": (lambda: nn.LayerNorm(40), (6, 40)),
    "RMSNorm": (lambda: nn.RMSNorm(40), (6, 40)),
    "GroupNorm": (lambda: nn.GroupNorm(3, 6), (4, 6, 5, 5)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(6), (4, 6, 5, 5)),
}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layers_match_torch_cpu_half(kind, dtype):
    """y, dx, parameter gradients (in the parameters' dtype) and running statistics, two
    training steps, then evaluation; GroupNorm and BatchNorm also channels_last."""
    make, shape = LAYERS[kind]
    tdt = TORCH[dtype]
    torch.manual_seed(0)
    ref = make().to(tdt)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1)
    new = nt.convert(make().to(tdt))
    new.load_state_dict(ref.state_dict())
    formats = [torch.contiguous_format] + ([torch.channels_last] if len(shape) == 4 else [])
    for step, fmt in enumerate(formats * 2):
        g = torch.Generator().manual_seed(step)
        x = (torch.randn(shape, generator=g) * 2 + 1).to(tdt).to(memory_format=fmt)
        dy = torch.randn(shape, generator=g).to(tdt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ref(xa), new(xb)
        assert yb.dtype == tdt and yb.stride() == ya.stride()
        ref.zero_grad()
        new.zero_grad()
        ya.backward(dy)
        yb.backward(dy)
        _assert_ulps(yb, ya, dtype, "y")
        _assert_ulps(xb.grad, xa.grad, dtype, "dx")
        for (name, p), q in zip(ref.named_parameters(), new.parameters()):
            assert q.grad.dtype == p.dtype
            _assert_ulps(q.grad, p.grad, dtype, "d" + name)
        for (name, b), c in zip(ref.named_buffers(), new.buffers()):
            assert c.dtype == b.dtype
            if b.is_floating_point():  # half-type buffers round at every update (torch's less exactly:
                # it rounds 0.9 * old before adding), so the two drift apart by up to an ulp in 2 updates
                _assert_ulps(c, b, dtype, name, ulps=1 + step // 2)
    ref.eval()
    new.eval()
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(9)) * 2 + 1).to(tdt)
    _assert_ulps(new(x), ref(x), dtype, "y (eval)")


@pytest.mark.parametrize("dtype", HALF)
def test_float32_parameters_with_half_input_as_torch_allows(dtype):
    tdt = TORCH[dtype]
    ref, new = nn.LayerNorm(40), nt.LayerNorm(40)  # float32 parameters
    x = torch.randn(6, 40).to(tdt)
    ya, yb = ref(x), new(x)
    assert yb.dtype == ya.dtype == tdt
    _assert_ulps(yb, ya, dtype, "y")


# ---- edge values --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
def test_inf_and_nan_propagate_as_in_torch(dtype):
    """A row with inf or NaN is NaN (its mean or variance is); the other rows are untouched."""
    tdt = TORCH[dtype]
    x = torch.randn(6, 40).to(tdt)
    x[1, 3] = float("inf")
    x[2, 0] = float("-inf")
    x[3, 39] = float("nan")
    for ref, new in ((nn.LayerNorm(40), nt.LayerNorm(40)), (nn.RMSNorm(40), nt.RMSNorm(40))):
        ref, new = ref.to(tdt), new.to(tdt)
        ya, yb = ref(x), new(x)
        assert torch.equal(torch.isnan(yb), torch.isnan(ya))
        assert torch.isnan(yb[1:4]).any(dim=1).all() and not torch.isnan(yb[[0, 4, 5]]).any()
        _assert_ulps(yb, ya, dtype, "y")


def test_values_near_the_float16_max():
    """Inputs up to 65504 (the largest float16) normalize without overflow (the statistics are
    float32/float64), and an output beyond it is inf, as in torch."""
    rng = np.random.default_rng(2)
    x = (rng.uniform(-1, 1, (4, 40)) * 65504).astype(np.float16)
    x[0, :2] = [65504, -65504]
    xt = torch.from_numpy(x)
    ya, yb = nn.functional.layer_norm(xt, (40,)), nt.functional.layer_norm(xt, (40,))
    _assert_ulps(yb, ya, "float16", "y")
    ref = oracle.forward(normgen.load("layer_norm").spec, x.astype(np.float64), {}, sizes={"normalized_shape": (40,)})
    assert np.max(np.abs(yb.numpy().astype(np.float64) - ref.y)) <= EPS["float16"] * np.max(np.abs(ref.y))
    w = torch.full((40,), 60000.0, dtype=torch.float16)
    ya, yb = nn.functional.layer_norm(xt, (40,), w), nt.functional.layer_norm(xt, (40,), w)
    assert torch.isinf(ya).any() and torch.equal(torch.isinf(yb), torch.isinf(ya)) and torch.equal(yb, ya)


# ---- the custom ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
def test_opcheck_with_a_half_sample(dtype):
    from normgen.torch import library
    from normgen.torch.registry import sizes_key

    tdt = TORCH[dtype]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 40, generator=g) * 2 + 1).to(tdt).requires_grad_()
    w = torch.randn(40, generator=g).to(tdt).requires_grad_()
    args = (x, w, None, [], None, None, None, None, "layer_norm", sizes_key({"normalized_shape": (40,)}), None,
            True, "")
    result = torch.library.opcheck(library.forward, args)
    assert set(result.values()) == {"SUCCESS"}, result
    y, stats, moments, _ = library.forward(*args)
    assert y.dtype == tdt and stats.dtype == torch.float32 and moments.dtype == torch.float64
    dy = torch.randn(6, 40, generator=g).to(tdt)
    result = torch.library.opcheck(library.backward_op, (dy, [], x.detach(), w.detach(), None, [], None, None,
                                                         None, None, stats, moments, *args[8:]))
    assert set(result.values()) == {"SUCCESS"}, result


def test_a_bfloat16_block_is_one_graph():
    """Dynamo traces bfloat16 CPU layers without a graph break (fake outputs of x's dtype)."""
    model = nn.Sequential(nt.LayerNorm(40), nn.Linear(40, 40), nt.RMSNorm(40)).to(torch.bfloat16)
    x = torch.randn(6, 40).to(torch.bfloat16)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()
