"""CUDA plans for GPUs that are not here (issue 14): the device profiles, `normgen plan
--target cuda --json`, and the launch rules pinned on the H100 profile for the shapes
`normgen bench --target cuda` measures. Planning only: no GPU, no compiler."""

from __future__ import annotations

import json

import pytest

import normgen
from normgen.bench.cuda import gpu_cases
from normgen.cli import main
from normgen.errors import NormgenError
from normgen.layouts import layout_strides
from normgen.plan.device import EMULATOR, PROFILES, profile
from normgen.plan.model import Options
from normgen.plan.traffic import plan_json
from normgen.runtime.cuda import cupy_device

H100 = profile("h100")
TWO_WAVES = 2 * 132 * 1024
#: forward plans whose statistics allow one pass over x (the issue's list)
ONE_PASS = ("layer_norm", "rms_norm", "group_norm", "instance_norm")


def _plan(case, direction: str, device: str = "h100", dtype: str = "float32"):
    op = normgen.load(case.spec)
    return op.plan(case.shape, strides=layout_strides(case.shape, case.layout), dtype=dtype, direction=direction,
                   target="cuda", device=device, **dict(case.sizes))


def _threads(k: dict) -> int:
    return k["grid"][0] * k["grid"][1] * k["grid"][2] * k["block"][0] * k["block"][1] * k["block"][2]


BENCH = [(c, d) for c in gpu_cases() for d in ("forward", "backward") if not (d == "backward" and c.mode == "eval")]


def test_profiles_hold_the_numbers_the_rules_read():
    assert H100.sms == 132 and H100.full_waves == TWO_WAVES and H100.fp64_rate == 0.5
    assert profile("h200").bandwidth_gbs > H100.bandwidth_gbs
    assert profile("a100").sms == 108 and profile("a100").arch == "sm_80"
    assert profile("l40s").fp64_rate < 0.05 and profile("rtx4090").threads_per_sm == 1536
    assert set(PROFILES) == {"h100", "h200", "a100", "l40s", "rtx4090"}
    with pytest.raises(NormgenError, match="unknown device profile 'b200'") as e:
        profile("b200")
    assert "h100, h200, a100, l40s, rtx4090" in str(e.value)


@pytest.mark.parametrize("case,direction", BENCH, ids=[f"{c.name}-{d}" for c, d in BENCH])
def test_kernels_that_move_4mb_launch_two_waves_on_h100(case, direction):
    js = plan_json(_plan(case, direction), evaluation=case.mode == "eval")
    assert js["device"] == "h100" and js["kernels"]
    for k in js["kernels"]:
        if k["bytes_read"] + k["bytes_written"] >= 4_000_000:
            assert _threads(k) >= TWO_WAVES, (k["name"], _threads(k))


ONE_PASS_CASES = [c for c in gpu_cases() if c.spec in ONE_PASS and c.layout == "contiguous"]


@pytest.mark.parametrize("case", ONE_PASS_CASES, ids=[c.name for c in ONE_PASS_CASES])
def test_one_pass_forward_traffic_is_near_the_minimum_on_h100(case):
    js = plan_json(_plan(case, "forward"))
    moved = sum(k["bytes_read"] + k["bytes_written"] for k in js["kernels"])
    assert moved <= 1.25 * js["min_bytes"], (moved, js["min_bytes"])


def test_the_model_counts_a_second_pass_over_x():
    """Streaming a group twice (too large to keep) costs a read of x: the model says so."""
    case = next(c for c in gpu_cases() if c.spec == "layer_norm")
    kept = plan_json(_plan(case, "forward"))
    op = normgen.load("layer_norm", options=Options(registers=False))
    streamed = plan_json(op.plan(case.shape, target="cuda", device="h100", **dict(case.sizes)))
    (k1,), (k2,) = kept["kernels"], streamed["kernels"]
    x = 16384 * 1024 * 4 if "16384" in case.name else 8192 * 1024 * 4
    assert k2["bytes_read"] - k1["bytes_read"] == x
    assert kept["min_bytes"] == streamed["min_bytes"]


def test_plan_json_has_exactly_the_documented_shape(capsys):
    assert main(["plan", "group_norm", "--shape", "1,512,64,64", "--size", "num_groups=32", "--target", "cuda",
                 "--device", "h100", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert set(js) == {"device", "kernels", "min_bytes"}
    assert js["device"] == "h100" and isinstance(js["min_bytes"], int) and js["min_bytes"] > 0
    for k in js["kernels"]:
        assert set(k) == {"name", "grid", "block", "shared_bytes", "bytes_read", "bytes_written"}
        assert isinstance(k["name"], str)
        assert len(k["grid"]) == 3 and len(k["block"]) == 3 and all(isinstance(v, int) for v in k["grid"] + k["block"])
        assert all(isinstance(k[f], int) for f in ("shared_bytes", "bytes_read", "bytes_written"))
    # GroupNorm at batch 1: 32 groups of 256 KiB, split into parts that fill the device
    names = [k["name"] for k in js["kernels"]]
    assert names == ["forward_partial", "forward_merge", "forward_apply"]
    assert _threads(js["kernels"][0]) >= TWO_WAVES


def test_plan_json_needs_cuda(capsys):
    assert main(["plan", "layer_norm", "--shape", "4,8", "--json"]) == 2
    assert "--json describes CUDA plans" in capsys.readouterr().err


@pytest.mark.skipif(cupy_device() is not None, reason="plans for the GPU present")
def test_normgen_plan_uses_the_h100_profile_without_a_gpu(capsys):
    assert main(["plan", "batch_norm", "--shape", "32,128,56,56", "--layout", "channels_last", "--target", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "device   h100 (132 SMs x 2048 threads" in out
    assert "270,336 threads" in out and "traffic " in out


def test_the_emulator_plans_for_its_own_small_device():
    plan = normgen.load("layer_norm").plan((8, 512), target="cuda", normalized_shape=(512,))
    assert plan.device is EMULATOR and plan.device.sms == 4
    big = normgen.load("layer_norm").plan((8, 512), target="cuda", device="h100", normalized_shape=(512,))
    assert big.device is H100


@pytest.mark.parametrize("dtype,vec", [("float32", 4), ("bfloat16", 8), ("float16", 8), ("float64", 2)])
def test_contiguous_inner_dims_load_16_bytes(dtype, vec):
    plan = normgen.load("layer_norm").plan((8192, 1024), dtype=dtype, target="cuda", device="h100",
                                           normalized_shape=(1024,))
    assert plan.kernel.vec == vec and plan.launch.vec_ok
    assert plan.kernel.stride_class("x", plan.kernel.inner) == "1"


def test_strided_and_odd_rows_load_element_by_element():
    op = normgen.load("layer_norm")
    shape = (64, 1024)
    transposed = op.plan(shape, strides=layout_strides(shape, "transposed"), target="cuda", device="h100",
                         normalized_shape=(1024,))
    assert transposed.kernel.vec == 1 and not transposed.launch.vec_ok
    odd = op.plan((64, 1001), target="cuda", device="h100", normalized_shape=(1001,))
    assert odd.kernel.vec == 4 and not odd.launch.vec_ok  # compiled for vectors, rows of 1001 cannot use them
    assert odd.kernel.cache == 0  # nothing is kept in registers on the element-by-element path


def test_small_groups_share_a_block_and_large_ones_split():
    ln = _plan(next(c for c in gpu_cases() if c.name == "layer_norm [8192,1024]"), "forward")
    assert ln.launch.fused and ln.kernel.cache and ln.launch.threads_per_unit == 64 and ln.launch.block == (256, 1)
    gn1 = normgen.load("group_norm").plan((1, 512, 64, 64), target="cuda", device="h100", num_groups=32)
    assert not gn1.launch.fused and gn1.launch.n_parts * 32 * gn1.launch.threads_per_unit >= TWO_WAVES
    gn8 = normgen.load("group_norm").plan((8, 256, 64, 64), target="cuda", device="h100", num_groups=32)
    assert gn8.launch.fused and gn8.launch.n_copies == 2 and gn8.kernel.copies == 2  # 256 groups x 2 x 1024 threads


def test_a_slower_fp64_profile_changes_nothing_that_needs_fp64():
    """float32 inputs accumulate in float32 on every profile: the kernels do not depend on FP64 speed."""
    case = next(c for c in gpu_cases() if c.spec == "layer_norm")
    assert _plan(case, "forward", "h100").kernel == _plan(case, "forward", "l40s").kernel
