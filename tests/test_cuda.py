"""The CUDA backend without a GPU: every generated CUDA source compiles with nvcc for
sm_80 and sm_90 (warnings are errors), and the kernels run on the CPU emulator against
the oracle, in half, bfloat16, float32 and float64, on the rows and columns strategies,
fused and split. A planted synchronization bug and a planted indexing bug are caught."""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import normgen
from normgen.codegen.generate import reference_sources
from normgen.layouts import make_array
from normgen.plan.device import EMULATOR
from normgen.plan.model import Options
from normgen.runtime.cuda import _KERNEL
from normgen.spec.library import bundled_names
from normgen.testing.cuda_emu import EmulationError, compile_source, nvcc_check
from normgen.verify import oracle
from normgen.verify.check import Case, cases, run_case


def _assert_ok(results):
    bad = [r for r in results if not r.ok]
    assert not bad, "\n".join(f"{r.spec} {r.case} {r.layout} {r.dtype} {r.mode} {r.plan}: "
                              + (r.error or f"{r.worst[0]}={r.worst[1]:.2e} > {r.tol:.0e}") for r in bad)


#: the fused specs' one layout each (their kernels compile slowly on the emulator): the rows
#: strategy in place on a strided view and on channels_last, the columns strategy (group_norm_silu)
FUSED_LAYOUTS = {"add_rms_norm": ("contiguous",), "add_layer_norm": ("sliced",), "gated_rms_norm": ("channels_last",),
                 "group_norm_silu": ("channels_last",)}


# every bundled spec, both strategies (contiguous and channels_last), float32, train and eval
@pytest.mark.parametrize("name", bundled_names())
def test_emulated_kernels_match_the_oracle(name):
    op = normgen.load(name)
    modes = (True, False) if op.spec.running else (True,)
    case = cases(op.spec)[0]
    layouts = FUSED_LAYOUTS[name] if op.spec.fuse is not None else ("contiguous", "channels_last")
    _assert_ok([run_case(op, case, layout, "float32", tr, seed=3, target="cuda") for layout in layouts for tr in modes])


def test_every_bundled_fused_spec_runs_on_the_emulator():
    """None of them is left out of the test above (a new fused spec needs a layout there)."""
    assert sorted(n for n in bundled_names() if normgen.load(n).spec.fuse is not None) == sorted(FUSED_LAYOUTS)


# the half types and float64, where precision is most at stake
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "group_norm"])
def test_emulated_dtypes(name, dtype):
    op = normgen.load(name)
    case = cases(op.spec)[0]
    _assert_ok([run_case(op, case, layout, dtype, True, seed=4, target="cuda")
                for layout in ("contiguous", "sliced")])


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "instance_norm", "switchable_norm"])
def test_emulated_split_reductions(name):
    """Few groups: every group split into parts, merged by forward_merge / backward_merge (Chan)."""
    op = normgen.load(name, options=Options(parts=3))
    case = cases(op.spec)[0]
    results = [run_case(op, case, layout, "float32", True, seed=5, target="cuda")
               for layout in ("contiguous", "transposed")]
    assert all("parts" in r.plan for r in results), [r.plan for r in results]
    _assert_ok(results)


#: shapes whose rows allow 16-byte loads (the fused kernels keep groups in registers only then)
ALIGNED = {"layer_norm": Case("aligned", (6, 2, 128), (("normalized_shape", (2, 128)),)),
           "group_norm": Case("aligned", (4, 32, 8, 8), (("num_groups", 16),)),
           "instance_norm": Case("aligned", (2, 4, 16, 16))}


@pytest.mark.parametrize("options", [Options(copies=2), Options(registers=False)], ids=["two-units", "streamed"])
@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm"])
def test_emulated_fused_variants(name, options):
    """Fused groups shared by two units (each reads all of it, normalizes half), and fused
    groups read twice instead of kept in registers, forward and backward."""
    op = normgen.load(name, options=options)
    case = ALIGNED[name]
    plan = op.plan(case.shape, target="cuda", **dict(case.sizes))
    assert plan.launch.fused and (plan.launch.n_copies == 2 if options.copies else plan.kernel.cache == 0)
    _assert_ok([run_case(op, case, "contiguous", dtype, True, seed=6, target="cuda") for dtype in ("float32", "bfloat16")])


def test_emulated_unaligned_arrays_take_the_element_path():
    """Sizes and strides allow 16-byte loads, the pointer does not: the kernel checks and falls back."""
    op = normgen.load("layer_norm")
    rng = np.random.default_rng(7)
    buf = rng.standard_normal(6 * 256 + 1).astype(np.float32)
    x = buf[1:].reshape(6, 256)  # 4 bytes past a 16-byte boundary
    assert x.ctypes.data % 16 == 4 and op.plan(x, target="cuda", normalized_shape=(256,)).launch.vec_ok
    w, b = rng.standard_normal(256).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    fwd = op.forward(x, w, b, normalized_shape=(256,), target="cuda")
    ref = oracle.forward(op.spec, x.astype(np.float64), {"weight": w, "bias": b}, sizes={"normalized_shape": (256,)})
    np.testing.assert_allclose(fwd.y, ref.y, atol=2e-5)
    # and rows whose length is no multiple of the vector width
    odd = rng.standard_normal((6, 255)).astype(np.float32)
    y = op(odd, normalized_shape=(255,), target="cuda")
    np.testing.assert_allclose(y, oracle.forward(op.spec, odd.astype(np.float64), {},
                                                 sizes={"normalized_shape": (255,)}).y, atol=2e-5)


LARGE_OFFSETS = [("layer_norm", Options(), "contiguous"), ("layer_norm", Options(parts=3), "contiguous"),
                 ("layer_norm", Options(registers=False), "contiguous"), ("group_norm", Options(copies=2), "contiguous"),
                 ("batch_norm", Options(), "channels_last"), ("batch_norm", Options(parts=3), "contiguous")]


@pytest.mark.parametrize("name,options,layout", LARGE_OFFSETS,
                         ids=[f"{n}-{o.parts or o.copies or o.registers}-{lay}" for n, o, lay in LARGE_OFFSETS])
def test_emulated_large_offsets(name, options, layout):
    """Mean 1e4, std 1e-2 in float32: the per-thread sums in float32 must still give unit
    variance (kept in registers, partial moments merged, streamed, shared, columns)."""
    op = normgen.load(name, options=options)
    shape, sizes = {"layer_norm": ((8, 512), {"normalized_shape": (512,)}), "group_norm": ((2, 8, 16, 16), {"num_groups": 2}),
                    "batch_norm": ((8, 8, 16, 16), {})}[name]
    x64 = np.random.default_rng(0).standard_normal(shape) * 1e-2 + 1e4
    x = make_array(x64, layout, np.float32)
    y = op(x, target="cuda", **sizes)
    ref = oracle.forward(op.spec, x.astype(np.float64), {}, sizes=sizes).y
    assert np.abs(y - ref).max() < 5e-3


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_reference_source_compiles_with_nvcc(tmp_path):
    """sm_90 for every dtype, sm_80 too for float32 and bfloat16 (the vector and half-type paths
    that differ by arch), warnings as errors. Results are cached by source hash."""
    sources = reference_sources("cuda", ("float16", "bfloat16", "float32", "float64"))
    assert len(sources) >= 100
    done = Path(os.environ["NORMGEN_CACHE_DIR"]) / "nvcc-ok"
    done.mkdir(parents=True, exist_ok=True)

    def check(item):
        name, src = item
        stamp = done / hashlib.sha256(src.encode()).hexdigest()
        if not stamp.exists():
            both = ".float32." in name or ".bfloat16." in name
            nvcc_check(src, archs=("sm_80", "sm_90") if both else ("sm_90",), name=name.rsplit("/", 1)[-1])
            stamp.touch()
        return name

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        assert len(list(pool.map(check, sorted(sources.items())))) == len(sources)


def _ln_source():
    name, src = next((k, v) for k, v in reference_sources("cuda").items() if "layer_norm" in k and "forward" in k)
    return src


def _run_ln(src: str, tag: str):
    """Compile `src` (a layer_norm forward) and run forward_partial on 4 rows of 5000
    (a block of threads per row: the block-wide reduction through shared memory)."""
    from normgen.plan.bind import bind
    from normgen.plan.geometry import geometry_values
    from normgen.plan.planner import Direction, make_plan
    from normgen.runtime.emulated import EmuDevice

    op = normgen.load("layer_norm")
    x = np.random.default_rng(1).standard_normal((4, 5000)).astype(np.float32)
    plan = make_plan(bind(op.spec, x.shape, {"normalized_shape": (5000,)}), {"x": (5000, 1), "y": (5000, 1)},
                     direction=Direction.FORWARD, dtype="float32", has_weight=True, has_bias=True, target="cuda",
                     device=replace(EMULATOR, sms=1))
    assert plan.launch.threads_per_unit > 32 and plan.launch.pieces == 1
    mod = compile_source(src, _KERNEL.findall(src), name=f"{tag}.cu")
    moments = np.zeros((4, 3))
    mod.launch("forward_partial", grid=(plan.launch.grid,), block=plan.launch.block, order=EmuDevice().order,
               args=(x.reshape(-1), moments, np.asarray(geometry_values(plan), np.int64)))
    return x, moments


def test_the_emulator_catches_a_planted_synchronization_bug():
    src = _ln_source()
    x, moments = _run_ln(src, "ln_ok")
    assert moments.shape == (4, 3)
    np.testing.assert_allclose(moments[:, 1], x.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(moments[:, 2], x.var(axis=1) * 5000, rtol=1e-6)
    # the barrier that separates the warps' shared writes from everyone's reads
    write = "        for (int n = 0; n < N; ++n) scratch[N * warp + n] = v[n];\n    }\n"
    buggy = src.replace(write + "    __syncthreads();\n", write, 1)
    assert buggy != src
    with pytest.raises(EmulationError, match="race"):
        _run_ln(buggy, "ln_race")


def test_the_emulator_catches_a_planted_indexing_bug():
    src = _ln_source()
    buggy = src.replace("moments[o + 2] = m2;", "moments[o + 3] = m2;", 1)  # one past the entry
    assert buggy != src
    with pytest.raises(EmulationError, match="guard|out of bounds|outside"):
        _run_ln(buggy, "ln_oob")
