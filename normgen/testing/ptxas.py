"""What nvcc and ptxas make of a generated CUDA source, without a GPU: its PTX, and each
kernel's registers, spills and stack frame (`ptxas -v`). For static checks in tests (every
kernel keeps its bytes in 16-byte loads, in registers), cached by source hash under
$NORMGEN_CACHE_DIR so the suite stays fast.

    >>> ptx, usage = compile_report(source, "sm_90")
    >>> usage["forward_fused"].registers
    40
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runtime.cache import cache_dir, write_if_changed
from .cuda_emu import EmulationError, include_dirs, nvcc_path


@dataclass(frozen=True)
class Usage:
    """ptxas's resource report for one kernel."""

    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack: int  # bytes of stack frame (local memory)


_USAGE = re.compile(r"Function properties for (\w+)\n\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
                    r"(\d+) bytes spill loads\n(?:.*\n)*?ptxas info\s+: Used (\d+) registers")


def parse_usage(text: str) -> dict[str, Usage]:
    """Per kernel, from the output of `nvcc -Xptxas -v`."""
    return {m.group(1): Usage(int(m.group(5)), int(m.group(3)), int(m.group(4)), int(m.group(2)))
            for m in _USAGE.finditer(text)}


def entry_ptx(ptx: str, entry: str) -> str:
    """The PTX of one `.entry` (device functions are inlined into it)."""
    m = re.search(rf"\.entry {re.escape(entry)}\(", ptx)
    if m is None:
        raise KeyError(entry)
    end = ptx.find("\n}\n", m.end())
    return ptx[m.start():end]


def compile_report(source: str, arch: str = "sm_90", name: str = "kernel.cu") -> tuple[str, dict[str, Usage]]:
    """(PTX, per-kernel Usage) of `source` for `arch`; remembered by source hash."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise EmulationError("nvcc not found (set $NVCC or $CUDA_HOME, or put it on PATH)", kind="nvcc")
    key = hashlib.sha256(f"{arch}\0{nvcc}\0{source}".encode()).hexdigest()[:32]
    where = cache_dir() / "ptxas" / key
    if (where / "usage.json").exists() and (where / "kernel.ptx").exists():
        usage = {k: Usage(**v) for k, v in json.loads((where / "usage.json").read_text()).items()}
        return (where / "kernel.ptx").read_text(), usage
    with tempfile.TemporaryDirectory(prefix="normgen-ptxas-") as tmp:
        src = Path(tmp) / name
        src.write_text(source)
        flags = [f"-arch={arch}", "-std=c++17", *(f"-I{d}" for d in include_dirs())]
        ptx = _run([nvcc, *flags, "-ptx", "-o", str(Path(tmp) / "k.ptx"), name], tmp)
        ptx = (Path(tmp) / "k.ptx").read_text()
        report = _run([nvcc, *flags, "-cubin", "-Xptxas", "-v", "-o", str(Path(tmp) / "k.cubin"), name], tmp)
    usage = parse_usage(report)
    write_if_changed(where / "kernel.ptx", ptx.encode())
    write_if_changed(where / "usage.json", json.dumps({k: asdict(v) for k, v in usage.items()}).encode())
    return ptx, usage


def _run(cmd: list[str], cwd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise EmulationError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}", kind="nvcc")
    return proc.stdout + proc.stderr
