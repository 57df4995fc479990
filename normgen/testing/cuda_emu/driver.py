"""Compile CUDA C sources with g++ against the emulator (ngemu.h) and launch their kernels on the CPU.

    >>> import numpy as np
    >>> from normgen.testing.cuda_emu import compile_source
    >>> mod = compile_source('''
    ... extern "C" __global__ void axpy(float* y, const float* x, float a, int n) {
    ...     int i = blockIdx.x * blockDim.x + threadIdx.x;
    ...     if (i < n) y[i] += a * x[i];
    ... }''', ["axpy"])
    >>> x = np.arange(100, dtype=np.float32); y = np.ones(100, np.float32)
    >>> mod.launch("axpy", grid=(4,), block=(32,), args=(y, x, np.float32(2), np.int32(100)))
    >>> float(y[3])
    7.0

Arguments follow CuPy's RawKernel convention: arrays become device pointers, scalars must be
NumPy scalars (np.int32, np.float32, ...) so that their C type is fixed. Unlike CuPy, the
driver checks them against the kernel's parameter types, which it reads from the compiled
module. Arrays are copied into guarded buffers (4 KiB of a fill pattern before and after,
the data placed at the same offset modulo 256 bytes as from a cudaMalloc base), the kernel
runs, the guards are checked, and the data is copied back. Arguments that share memory
(in-place kernels) share one buffer, so aliasing behaves as on the GPU.

Built modules are cached on disk under `cache_dir` (default: normgen's cache folder +
'/cuda_emu'), keyed by a hash of the source, names, flags, the emulator's sources and the
compiler's version; writes are atomic (temporary file, then os.replace).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...codegen import PRELUDE_DIR
from .base import HEADER, KERNEL_FLAGS, PACKAGE_DIR, PRELUDE_FILE, RUNTIME, RUNTIME_FLAGS, EmulationError, _numbered
from .module import EmuModule

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


def include_dirs() -> tuple[Path, Path]:
    """The folders of ngemu.h and of normgen's prelude.cuh: pass both as -I to nvcc / NVRTC / g++."""
    return PACKAGE_DIR, PRELUDE_DIR


def default_cache_dir() -> Path:
    from ...runtime.cache import cache_dir

    return cache_dir() / "cuda_emu"


@functools.lru_cache(maxsize=None)
def _compiler_id(cxx: str) -> str:
    try:
        version = subprocess.run([cxx, "-dumpfullversion"], capture_output=True, text=True, check=True).stdout
        machine = subprocess.run([cxx, "-dumpmachine"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise EmulationError(f"the CUDA emulator needs a C++17 compiler: cannot run '{cxx}' ({e})",
                             kind="compile") from e
    return f"{cxx}|{version.strip()}|{machine.strip()}|{platform.machine()}"


def _cxx() -> str:
    return os.environ.get("NORMGEN_CXX", "g++")


@functools.lru_cache(maxsize=None)
def compiler_id() -> str:
    """The C++ compiler the emulator builds with ($NORMGEN_CXX, default g++) and its version."""
    return _compiler_id(_cxx())


def _hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:40]


def _run_compiler(cmd: list[str], cwd: Path, source: str, name: str, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    diag = proc.stderr.strip() or proc.stdout.strip()
    lines = sorted({int(m) for m in re.findall(rf"(?:^|/){re.escape(name)}:(\d+):", diag, re.M)})
    listing = _numbered(source) if len(source.splitlines()) <= 300 or not lines else _numbered(source, lines)
    hint = ""
    if "wrappers.cpp" in diag:
        hint = ("\n(the errors in wrappers.cpp are in the launch wrappers: is every kernel name defined in the "
                "source as a non-overloaded __global__ function, and written as the source spells it?)")
    raise EmulationError(f"{what} failed: {' '.join(cmd)}\n{diag}{hint}\n\n{name}:\n{listing}", kind="compile")


def _atomic_build(target: Path, build: Any) -> None:
    """Runs build(tmp_path) and renames the result to `target`: readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _runtime_object(root: Path) -> Path:
    """ngemu_rt.cpp compiled once per cache, emulator version and compiler."""
    cxx = _cxx()
    key = _hash(HEADER.read_bytes(), RUNTIME.read_bytes(), " ".join(RUNTIME_FLAGS), _compiler_id(cxx))
    obj = root / "runtime" / key / "ngemu_rt.o"
    if not obj.exists():
        def build(tmp: Path) -> None:
            _run_compiler([cxx, *RUNTIME_FLAGS, f"-I{PACKAGE_DIR}", "-c", str(RUNTIME), "-o", str(tmp)],
                          PACKAGE_DIR, RUNTIME.read_text(), RUNTIME.name, "compiling the emulator runtime")
        _atomic_build(obj, build)
    return obj


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrappers(names: Sequence[str], source_name: str) -> str:
    lines = [f'#include "{source_name}"', '#define NGEMU_EXPORT extern "C" __attribute__((visibility("default")))']
    for i, name in enumerate(names):
        lines += [
            f"NGEMU_EXPORT int ngemu_launch_{i}(const NgLaunchConfig* c, void** a, NgErrorOut* e) {{",
            f"  return ::ngemu::detail::launch(&{name}, c, a, {_c_string(name)}, e);",
            "}",
            f"NGEMU_EXPORT const char* ngemu_signature_{i}() {{ return ::ngemu::detail::signature(&{name}); }}",
        ]
    return "\n".join(lines) + "\n"


def _define_flags(defines: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if not defines:
        return []
    if isinstance(defines, Mapping):
        return [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defines.items())]
    return [f"-D{d}" for d in defines]


def compile_source(cuda_source: str, kernel_names: Sequence[str], *,
                   defines: Mapping[str, Any] | Sequence[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, name: str = "kernel.cu",
                   extra_flags: Sequence[str] = ()) -> EmuModule:
    """Compiles `cuda_source` for the CPU emulator and loads it.

    `kernel_names` are the __global__ functions to launch (a template instance may be named as
    the source spells it: "norm_fwd<float, 256>"). `defines` become -D flags ({"BLOCK": 256} or
    ["BLOCK=256"]). `name` is the file name that error messages and __FILE__ show. The source
    should include prelude.cuh (it is force-included as well, so plain CUDA works too).

    >>> mod = compile_source(src, ["layer_norm_fwd"], defines={"BLOCK": 256})
    >>> mod.launch("layer_norm_fwd", grid=(rows,), block=(256,), args=(y, x, np.int32(cols)))

    Raises EmulationError(kind='compile') with the compiler's messages and the numbered source.
    """
    names = [str(n).strip() for n in kernel_names]
    if not names or any(not n for n in names):
        raise EmulationError("compile_source needs the names of the kernels to launch", kind="compile")
    if os.path.basename(name) != name or not name:
        raise EmulationError(f"name must be a plain file name, got {name!r}", kind="compile")
    cxx = _cxx()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    flags = [*KERNEL_FLAGS, *_define_flags(defines), *extra_flags]
    wrappers = _wrappers(names, name)
    key = _hash(HEADER.read_bytes(), PRELUDE_FILE.read_bytes(), RUNTIME.read_bytes(), cuda_source, name, wrappers,
                " ".join(flags), _compiler_id(cxx))
    so = root / key[:2] / key / "module.so"
    with _lock:
        lib = _loaded.get(str(so))
        if lib is None:
            if not so.exists():
                runtime = _runtime_object(root)
                (root / "tmp").mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=root / "tmp") as tmpdir:
                    build_dir = Path(tmpdir)
                    (build_dir / name).write_text(cuda_source)
                    (build_dir / "wrappers.cpp").write_text(wrappers)

                    def build(tmp: Path) -> None:
                        cmd = [cxx, *flags, f"-I{PACKAGE_DIR}", f"-I{PRELUDE_DIR}", "-include", "prelude.cuh", "-shared",
                               "wrappers.cpp", str(runtime), "-o", str(tmp)]
                        _run_compiler(cmd, build_dir, cuda_source, name, "compiling for the CUDA emulator")

                    _atomic_build(so, build)
            lib = ctypes.CDLL(str(so))
            _loaded[str(so)] = lib
    return EmuModule(lib, names, cuda_source, name, so)


# -- nvcc ------------------------------------------------------------------------------------------------------------


def nvcc_path() -> str | None:
    """The nvcc to check sources with: $NVCC, nvcc on PATH, or $CUDA_HOME/bin/nvcc."""
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def nvcc_check(cuda_source: str, *, archs: Sequence[str] = ("sm_80", "sm_90"),
               defines: Mapping[str, Any] | Sequence[str] | None = None, name: str = "kernel.cu",
               timeout: float = 300.0) -> None:
    """Compiles the source with the real nvcc for each arch (-cubin, warnings are errors), in parallel.

    The emulator accepts more than nvcc (host C++), so every source that runs in the emulator
    should also pass this. Needs no GPU.

    >>> nvcc_check(src, archs=("sm_80", "sm_90"), defines={"BLOCK": 256})

    Raises EmulationError(kind='nvcc') with nvcc's messages and the numbered source, or when
    nvcc is missing (see nvcc_path()).
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise EmulationError("nvcc not found (set $NVCC or $CUDA_HOME, or put it on PATH)", kind="nvcc")
    with tempfile.TemporaryDirectory(prefix="ngemu-nvcc-") as tmpdir:
        src = Path(tmpdir) / name
        src.write_text(cuda_source)
        procs = []
        for arch in archs:
            cmd = [nvcc, f"-arch={arch}", "-cubin", "-std=c++17", "--Werror", "all-warnings", f"-I{PACKAGE_DIR}", f"-I{PRELUDE_DIR}",
                   *_define_flags(defines), "-o", str(Path(tmpdir) / f"{arch}.cubin"), name]
            procs.append((cmd, subprocess.Popen(cmd, cwd=tmpdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True)))
        failures = []
        for cmd, proc in procs:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                failures.append(f"{' '.join(cmd)}: timed out after {timeout} s")
                continue
            if proc.returncode != 0:
                failures.append(f"{' '.join(cmd)}\n{out.strip()}")
        if failures:
            lines = sorted({int(m) for m in re.findall(rf"{re.escape(name)}\((\d+)\)", "\n".join(failures))})
            listing = _numbered(cuda_source, lines or None)
            raise EmulationError("nvcc rejected the source:\n" + "\n".join(failures) + f"\n\n{name}:\n{listing}",
                                 kind="nvcc")
