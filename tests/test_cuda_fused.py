"""Fused specs through the CUDA kernels (templates/cuda/*_fused.cu.j2) on the CPU emulator,
against the oracle: the half types and float64, a user-written spec whose extra inputs reach
both the prologue and the epilogue, groups split into parts, save="y", and quantized output
(int8, and float8 e4m3, which only the CUDA backend writes). The bundled fused specs in
float32 are in test_cuda.py. Shapes are tiny: each new kernel structure costs a g++ compile."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import normgen
from normgen.codegen.generate import sources
from normgen.plan.model import Options
from normgen.testing.cuda_emu import nvcc_check, nvcc_path
from normgen.verify import oracle
from normgen.verify.check import Case, cases, run_case

#: a user-written spec: extras in the prologue (a, b) and the epilogue (b, f), a kept prologue,
#: a weight offset, and most of the expression language's functions
USER = normgen.parse_spec(textwrap.dedent("""
    name = "gated_act_norm"
    input = "N C *spatial"
    kept = "N"
    [affine]
    axes = "C"
    weight_offset = 0.5
    [fuse]
    prologue = "tanh(x) * a - b / 2 + gelu(x) * 0.1"
    keep_prologue = true
    epilogue = "gelu_tanh(y) * sigmoid(b) + abs(y) * 0.25 + square(f) * y - relu(-y) * exp(f * 0.1)"
    """), "gated_act_norm.toml")

QUANT = textwrap.dedent("""
    name = "add_rms_norm_q"
    input = "*batch *normalized"
    kept = "*batch"
    center = "none"
    scale = "rms"
    [sizes]
    normalized = "normalized_shape"
    [affine]
    axes = "*normalized"
    bias = false
    [fuse]
    prologue = "x + residual"
    keep_prologue = true
    epilogue = "silu(y)"
    quantize = "{kind}"
    """)


def _assert_ok(results):
    bad = [r for r in results if not r.ok]
    assert not bad, "\n".join(f"{r.spec} {r.case} {r.layout} {r.dtype} {r.plan}: "
                              + (r.error or f"{r.worst[0]}={r.worst[1]:.2e} > {r.tol:.0e}") for r in bad)


def test_columns_in_float64():
    """group_norm_silu in channels_last: the columns strategy (partial moments, merge, apply)."""
    op = normgen.load("group_norm_silu")
    _assert_ok([run_case(op, cases(op.spec)[0], "channels_last", "float64", True, seed=21, target="cuda")])


def test_a_user_spec_with_extras_in_prologue_and_epilogue_in_bfloat16():
    """Each extra's gradient gathers both chains (prologue, epilogue); dprologue adds to dh."""
    op = normgen.load(USER)
    r = run_case(op, Case("user", (3, 4, 5, 6)), "channels_last", "bfloat16", True, seed=22, target="cuda")
    _assert_ok([r])
    assert {"prologue", "dx", "da", "db", "df", "dweight", "dbias"} <= set(r.errors)


def test_fused_groups_split_into_parts_in_float16():
    """Few groups: partial moments merged by forward_merge, then apply (h written there);
    partial sums, backward_merge, apply; the parameter gradients' own reduction."""
    op = normgen.load("add_layer_norm", options=Options(parts=3))
    case = Case("split", (2, 3, 40), (("normalized_shape", (3, 40)),))
    plan = op.plan(case.shape, target="cuda", normalized_shape=(3, 40))
    assert not plan.launch.fused and plan.launch.n_parts == 3
    r = run_case(op, case, "sliced", "float16", True, seed=23, target="cuda")
    _assert_ok([r])
    assert "parts" in r.plan


def test_save_y_on_cuda():
    """The backward rebuilds x_hat from y (the plan's fused kernels read y, never x)."""
    op = normgen.load("layer_norm")
    rng = np.random.default_rng(24)
    x = rng.standard_normal((6, 40)).astype(np.float32) * 2 + 1
    w = (rng.standard_normal(40) * 0.5 + 1).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    dy = rng.standard_normal((6, 40)).astype(np.float32)
    fwd = op.forward(x, w, b, normalized_shape=(40,), save="y", target="cuda")
    grads = op.backward(dy, fwd)
    used = [p for p in op._plans.values() if p.kernel.direction.value == "backward"][-1]
    assert used.kernel.target == "cuda" and used.kernel.fusion.h_from.value == "from y"
    ref = oracle.backward(op.spec, dy.astype(np.float64), x.astype(np.float64),
                          {"weight": w.astype(np.float64), "bias": b.astype(np.float64)}, sizes={"normalized_shape": (40,)})
    np.testing.assert_allclose(grads.dx, ref["x"], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(grads["weight"], ref["weight"], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(grads["bias"], ref["bias"], atol=2e-4, rtol=1e-4)


def test_int8_output_on_cuda():
    op = normgen.load(normgen.parse_spec(QUANT.format(kind="int8"), "q8.toml"))
    case = Case("q", (4, 3, 48), (("normalized_shape", (48,)),))
    r = run_case(op, case, "sliced", "float32", True, seed=25, target="cuda")
    _assert_ok([r])
    assert {"scale", "q", "prologue"} <= set(r.errors)


def test_int8_output_with_running_statistics():
    """Training (forward_fused), then evaluation: forward_apply with the running statistics finds
    each group's absmax and writes the codes too (a channel's group, strided in channels_last)."""
    spec = normgen.parse_spec(textwrap.dedent("""
        name = "bn_relu_q"
        input = "N C *spatial"
        kept = "C"
        [affine]
        axes = "C"
        [running]
        axes = "C"
        momentum = 0.1
        [fuse]
        epilogue = "relu(y)"
        quantize = "int8"
        """), "bn_relu_q.toml")
    op = normgen.load(spec)
    results = [run_case(op, Case("q", (4, 6, 5, 3)), "channels_last", "float32", tr, seed=27, target="cuda")
               for tr in (True, False)]
    _assert_ok(results)
    assert all({"scale", "q"} <= set(r.errors) for r in results)


def _e4m3_value(codes: np.ndarray) -> np.ndarray:
    """The value of float8 e4m3 codes (sign, 4 exponent bits of bias 7, 3 mantissa bits), from the format."""
    c = codes.astype(np.int64)
    sign = np.where(c & 0x80, -1.0, 1.0)
    exp, man = (c >> 3) & 0xF, c & 0x7
    mag = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp - 7.0))
    return np.where((c & 0x7F) == 0x7F, np.nan, sign * mag)


def test_float8_e4m3_output_on_cuda():
    """Codes within one e4m3 step of the oracle's rounding (float32 vs float64 near a tie),
    the scale per row, a row of zeros gives scale 0 and codes 0, the largest code is ±448."""
    op = normgen.load(normgen.parse_spec(QUANT.format(kind="float8_e4m3"), "q8.toml"))
    rng = np.random.default_rng(26)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    r = rng.standard_normal((5, 64)).astype(np.float32)
    x[2] = -r[2]  # h = 0: a row of zeros
    w = (rng.standard_normal(64) * 0.3 + 1).astype(np.float32)
    fwd = op.forward(x, w, residual=r, normalized_shape=(64,), target="cuda")
    assert fwd.y.dtype == np.uint8 and fwd.scale.dtype == np.float32 and fwd.scale.shape == (5,)
    ref = oracle.forward(op.spec, x.astype(np.float64), {"weight": w.astype(np.float64)},
                         sizes={"normalized_shape": (64,)}, extras={"residual": r.astype(np.float64)})
    np.testing.assert_allclose(fwd.scale, ref.scale, rtol=1e-5)
    got = _e4m3_value(fwd.y)
    assert not np.isnan(got).any()
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref.q), 2.0 ** -6))) - 3)
    assert np.all(np.abs(got - ref.q) <= step * 1.0001), np.abs(got - ref.q).max()
    assert np.mean(got == ref.q) > 0.95  # most codes are exactly the oracle's
    assert fwd.scale[2] == 0 and not fwd.y[2].any()
    assert np.abs(got).max() == 448.0
    with pytest.raises(normgen.CallError, match="quantized .* has no gradient"):
        op.backward(np.ones((5, 64), np.float32), fwd)


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed")
@pytest.mark.parametrize("kind,dtype", [("int8", "float32"), ("float8_e4m3", "bfloat16")])
def test_quantized_sources_compile_with_nvcc(kind, dtype):
    """The quantized specs are not bundled (generated/ has no reference for them): sm_90, warnings
    as errors (the forward source holds the fused kernel and the split path's)."""
    op = normgen.load(normgen.parse_spec(QUANT.format(kind=kind), f"q_{kind}.toml"))
    for name, src in sources(op, (8, 256), dtype=dtype, sizes={"normalized_shape": (256,)}, directions=("forward",),
                             target="cuda").items():
        assert "forward_apply(" in src and "qscale" in src
        nvcc_check(src, archs=("sm_90",), name=name)


def test_the_fused_gpu_benchmark_stops_cleanly_without_a_gpu(capsys):
    """`normgen bench --target cuda --fused` (bench/gpu.sh runs it on a GPU machine): here, where
    CuPy sees no GPU, exit status 2 and one line saying why, before anything is allocated."""
    from normgen.cli import main
    from normgen.runtime.cuda import cupy_device

    if cupy_device() is not None:
        pytest.skip("a GPU is visible: the benchmark would run")
    assert main(["bench", "--target", "cuda", "--fused", "--forward"]) == 2
    assert "needs a CUDA GPU visible to CuPy" in capsys.readouterr().err


def test_the_traffic_model_counts_the_fused_arrays():
    """add_rms_norm [8192, 4096] float32 on the H100: the forward reads x and the residual, then h
    back, and writes y and h; the backward reads h and dy (sums), then h, dy and dh again and writes
    dx (the residual's gradient is dx itself); the parameter reduction reads h and dy."""
    op = normgen.load("add_rms_norm")
    X = 8192 * 4096 * 4
    fwd = op.plan((8192, 4096), target="cuda", normalized_shape=(4096,))
    (step,) = fwd.steps
    assert step.entry == "forward_fused"
    assert step.bytes_read == 3 * X + 4096 * 4  # + the weight
    assert step.bytes_written == 2 * X + 8192 * (3 * 8 + 3 * 4)  # + moments (float64) and kstats
    bwd = op.plan((8192, 4096), target="cuda", direction="backward", normalized_shape=(4096,))
    kernels = {s.entry: s for s in bwd.steps if s.entry != "host"}
    assert set(kernels) == {"backward_fused", "param_partial"}
    assert kernels["backward_fused"].bytes_read == 5 * X + 4096 * 4 + 8192 * 3 * 4
    assert kernels["backward_fused"].bytes_written == X + 8192 * 4 * 8
    assert kernels["param_partial"].bytes_read == 2 * X + 8192 * 3 * 4 + 4096 * 4


def test_a_fused_spec_across_ranks_takes_the_host_way():
    """cuda_ranks.py's device path passes no fused arrays: a fused call with a process group
    merges its moments and sums through the host (op/distributed.py `on_device`), with the
    fused kernels' extra inputs, and matches the oracle."""
    from normgen.testing.devicesync import RecordingDevice, RecordingGroup

    op, dev = normgen.load("add_rms_norm"), RecordingDevice()
    rng = np.random.default_rng(28)
    x, r, dy, dh = (rng.standard_normal((6, 16)) for _ in range(4))
    w = rng.standard_normal(16)
    fwd = op.forward(dev.put(x), dev.put(w), residual=dev.put(r), normalized_shape=(16,),
                     process_group=RecordingGroup(dev))
    grads = op.backward(dev.put(dy), fwd, dprologue=dev.put(dh))
    assert not any(k.startswith("ranks_") for k in dev.kernels())
    sizes, extras = {"normalized_shape": (16,)}, {"residual": r}
    ref = oracle.forward(op.spec, x, {"weight": w}, sizes=sizes, extras=extras)
    rgrads = oracle.backward(op.spec, dy, x, {"weight": w}, sizes=sizes, extras=extras, dprologue=dh)
    np.testing.assert_allclose(dev.to_host(fwd.y), ref.y, atol=1e-12)
    np.testing.assert_allclose(dev.to_host(fwd.prologue), ref.prologue, atol=1e-12)
    np.testing.assert_allclose(dev.to_host(grads.dx), rgrads["x"], atol=1e-10)
    np.testing.assert_allclose(dev.to_host(grads["residual"]), rgrads["residual"], atol=1e-10)
    np.testing.assert_allclose(dev.to_host(grads["weight"]), rgrads["weight"], atol=1e-10)
