"""What nvcc makes of the CUDA kernels (issue 14), statically: no GPU needed. The reference
plans for the H100 of contiguous float32 and bfloat16 layer_norm, rms_norm and group_norm,
forward and backward: the kernels a call launches move their data in 128-bit loads, and no
kernel of those sources spills or uses more than 64 registers at the block size it is
compiled for. Results are cached by source hash (normgen/testing/ptxas.py)."""

from __future__ import annotations

import re

import pytest

from normgen.codegen.generate import reference_sources
from normgen.plan.device import profile
from normgen.plan.launch_cuda import MAX_REGS
from normgen.testing.cuda_emu import nvcc_path
from normgen.testing.ptxas import compile_report, entry_ptx

pytestmark = pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed")

SPECS = ("layer_norm", "rms_norm", "group_norm")
ARCH = profile("h100").arch  # the reference plans are the H100's
DTYPES = ("float32", "bfloat16")
#: a 128-bit global load: four 32-bit lanes (float4, or uint4 of half types) or two 64-bit ones
WIDE_LOAD = re.compile(r"ld\.global(?:\.nc)?\.v4\.(?:f32|b32|u32)|ld\.global(?:\.nc)?\.v2\.(?:f64|b64|u64)")
#: the kernels a training call launches, per source (the steps of the reference plans)
LAUNCHED = {"forward": ("forward_fused",), "backward": ("backward_fused", "backward_partial", "backward_apply")}


def _sources():
    every = reference_sources("cuda", DTYPES)
    return sorted((path, src) for path, src in every.items()
                  if path.split("/")[1].split(".")[0] in SPECS and ".contiguous." in path
                  and path.rsplit(".", 2)[-2] in ("forward", "backward"))


SOURCES = _sources()


def test_the_reference_sources_are_the_ones_the_issue_names():
    assert len(SOURCES) == len(SPECS) * len(DTYPES) * 2


@pytest.mark.parametrize("path,source", SOURCES, ids=[p for p, _ in SOURCES])
def test_launched_kernels_load_128_bits(path, source):
    ptx, _ = compile_report(source, ARCH, name=path.rsplit("/", 1)[1])
    direction = path.rsplit(".", 2)[-2]
    entries = [e for e in LAUNCHED[direction] if f".entry {e}(" in ptx]
    assert entries
    for entry in entries:
        body = entry_ptx(ptx, entry)
        assert WIDE_LOAD.search(body), f"{entry}: no 128-bit global load in its PTX"


@pytest.mark.parametrize("path,source", SOURCES, ids=[p for p, _ in SOURCES])
def test_no_spills_and_at_most_64_registers(path, source):
    _, usage = compile_report(source, ARCH, name=path.rsplit("/", 1)[1])
    assert {"forward_merge", "backward_merge"} & set(usage)
    for kernel, u in usage.items():
        assert u.registers <= MAX_REGS, (kernel, u)
        assert u.spill_stores == 0 and u.spill_loads == 0, (kernel, u)
        assert u.stack == 0, (kernel, u)  # nothing in local memory either
