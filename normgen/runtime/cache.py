"""The disk cache of generated kernel modules.

A compiled kernel is keyed by what it is made of: `module_key(source key, target id)`,
where the source key is the hash of the generated code (below its header; see
codegen/render.py), so any change to the templates, the codegen or the plan that changes
the code is a new key, and kernels of different specs whose code is identical share one
module; the target id names what the compiled code depends on besides its source
(backend, compiler versions, CPU, the helpers a module imports), given by the backend.
The module for a key lives at

    $NORMGEN_CACHE_DIR/<target>/<key[:2]>/<key>/kernels.py      (+ kernels.sha256)

and Numba keeps its compiled machine code beside it in __pycache__ (`cache=True`). Numba
keys that cache on the source file's mtime, so a module is written only when it is
missing or its bytes differ from what it should be; writes go to a temporary file that is
then linked or renamed into place, so readers never see half a file and concurrent
builders agree. A file whose hash does not match its sidecar (torn, truncated, edited) is
rebuilt, never trusted.

`NORMGEN_CACHE_DIR` chooses the folder (default: the platform's user cache directory);
`NORMGEN_REBUILD=1` rewrites every module this process loads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import types
import warnings
from collections.abc import Callable
from pathlib import Path

from .. import __version__

_lock = threading.Lock()
_loaded: dict[str, types.ModuleType] = {}


def cache_dir() -> Path:
    """$NORMGEN_CACHE_DIR, else the platform user cache directory + '/normgen'."""
    env = os.environ.get("NORMGEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "normgen"


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def module_key(source_key: str, target_id: str) -> str:
    """The key of a compiled kernel: the key of its source and the target it is compiled for."""
    return _hash(f"normgen={__version__}", source_key, target_id)


def module_path(key: str, target: str) -> Path:
    return cache_dir() / target / key[:2] / key / "kernels.py"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask (mkstemp's temp files are 0600,
    which would make generated sources private to their writer). Linux shows the umask in
    /proc; elsewhere it can only be read by setting it, so it is read once."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # create-if-absent: a racing writer keeps its file (and mtime)
        except FileExistsError:
            if path.read_bytes() != data:
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it already holds exactly that. True if written."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return True


def _valid(path: Path) -> bool:
    try:
        return _sha(path.read_bytes()) == path.with_suffix(".sha256").read_text().strip()
    except OSError:
        return False


def load_module(key: str, target: str, render: Callable[[], str]) -> types.ModuleType:
    """The generated module for `key`: from memory, from disk, or rendered and written now."""
    with _lock:
        mod = _loaded.get(key)
        if mod is not None:
            return mod
        path = module_path(key, target)
        fallback = False
        if os.environ.get("NORMGEN_REBUILD") == "1" or not _valid(path):
            source = render().encode()
            try:
                write_if_changed(path, source)
                write_if_changed(path.with_suffix(".sha256"), (_sha(source) + "\n").encode())
            except OSError as e:
                fallback = True
                path = _fallback_path(key, target, source, e)
        name = f"normgen_kernels_{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception:
            sys.modules.pop(name, None)
            raise
        mod.__normgen_fallback__ = fallback
        _loaded[key] = mod
        return mod


def _fallback_path(key: str, target: str, source: bytes, error: OSError) -> Path:
    """The cache folder is not writable: build in a private temporary folder instead."""
    warnings.warn(f"normgen: cannot write the kernel cache at {cache_dir()} ({error.strerror or error}); "
                  "building in a temporary folder for this process (set NORMGEN_CACHE_DIR to a writable "
                  "folder to keep compiled kernels)", RuntimeWarning, stacklevel=4)
    base = Path(tempfile.gettempdir()) / f"normgen-fallback-{os.getuid() if hasattr(os, 'getuid') else 'u'}"
    path = base / target / key[:2] / key / "kernels.py"
    write_if_changed(path, source)
    write_if_changed(path.with_suffix(".sha256"), (_sha(source) + "\n").encode())
    return path


def info() -> dict[str, object]:
    """What the cache holds: folder, number of modules, bytes."""
    root = cache_dir()
    modules = list(root.rglob("kernels.py")) if root.is_dir() else []
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
    return {"dir": str(root), "modules": len(modules), "bytes": size}


def clear() -> int:
    """Delete the cache folder's contents; returns the number of modules removed."""
    root = cache_dir()
    with _lock:
        _loaded.clear()  # modules this process loaded (from this or another folder) are built again
    if not root.is_dir():
        return 0
    n = len(list(root.rglob("kernels.py")))
    for child in root.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    with _lock:
        _loaded.clear()
    return n
