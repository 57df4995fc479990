"""Numba's on-disk cache made safe for several processes, and asked without compiling.

Numba writes each compiled signature of a `cache=True` function as a data file named in
an index file (numba/core/caching.py, `IndexDataCacheFile.save`): it reads the index,
picks the first free data file name, rewrites the index, then writes the data file. The
files are replaced atomically, but the read-pick-write is not: two processes that save
different signatures of one function at once (the shared prelude compiled for float32 in
one process and float64 in another) can pick the same data file name, so the index may
point one signature at the other's machine code. `guard(module)` serializes every load
and save of a module's Numba functions with an advisory lock (flock) on a file in the
cache folder; loads take it shared, saves exclusive, and nothing is compiled while the
lock is held, so processes only wait for each other's file I/O.

`cached(dispatcher, signature)` loads a signature's machine code from the disk cache
into the dispatcher and says whether it was there, compiling nothing when it was not;
`compile(dispatcher, signature)` compiles (and saves) it unless it was cached.

These reach into two attributes of Numba's `Dispatcher` (`_cache`, whose `load_overload`
and `save_overload` the dispatcher calls around compiling), stable from Numba 0.50 to
0.68; tests/test_prebuild.py fails if that changes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; prebuild.py then compiles in one process
    fcntl = None  # type: ignore[assignment]

#: can several processes share the Numba cache safely (is there a lock to take)?
LOCKS = fcntl is not None
LOCK_NAME = ".normgen-numba.lock"


class _NotCached(Exception):
    """Raised by a probing load that found nothing (so that Numba does not compile)."""


class GuardedCache:
    """A Numba function cache whose loads and saves hold the cache folder's lock."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._probe = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load_overload(self, sig, target_context):
        with _locked(self._inner.cache_path, exclusive=False):
            found = self._inner.load_overload(sig, target_context)
        if found is None and getattr(self._probe, "on", False):
            raise _NotCached
        return found

    def save_overload(self, sig, data) -> None:
        with contextlib.suppress(OSError):  # as Numba does: an unwritable cache is not an error
            os.makedirs(self._inner.cache_path, exist_ok=True)
        with _locked(self._inner.cache_path, exclusive=True):
            self._inner.save_overload(sig, data)

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        self._probe.on = True
        try:
            yield
        finally:
            self._probe.on = False


@contextlib.contextmanager
def _locked(folder: str | None, exclusive: bool) -> Iterator[None]:
    """Hold `folder`'s lock file; without a folder or a lock file there is nothing to share."""
    if fcntl is None or not folder:
        yield
        return
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # no folder yet (nothing to read) or read-only (nobody writes here)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _dispatchers(module: types.ModuleType) -> list[Any]:
    from numba.core.dispatcher import Dispatcher  # here: importing normgen does not import Numba

    return [v for v in vars(module).values() if isinstance(v, Dispatcher)]


def guard(module: types.ModuleType) -> None:
    """Lock the disk cache of every cached Numba function in `module`, and in the modules
    those functions come from (the prelude a generated module imports). Idempotent."""
    from numba.core.caching import NullCache

    seen = {module.__name__}
    todo = [module]
    while todo:
        for d in _dispatchers(todo.pop()):
            if not isinstance(d._cache, (NullCache, GuardedCache)):
                d._cache = GuardedCache(d._cache)
            home = sys.modules.get(d.py_func.__module__)
            if home is not None and home.__name__ not in seen:
                seen.add(home.__name__)
                todo.append(home)


def cached(dispatcher: Any, signature: tuple) -> bool:
    """Load `signature`'s machine code from the disk cache; False (and no compiling) if absent.

    The dispatcher's module must be guarded."""
    if tuple(signature) in dispatcher.overloads:
        return True
    cache = dispatcher._cache
    if not isinstance(cache, GuardedCache):
        raise TypeError(f"{dispatcher.py_func.__qualname__}: guard() its module before asking its cache")
    with cache.probing():
        try:
            dispatcher.compile(signature)
        except _NotCached:
            return False
    return True


def compile(dispatcher: Any, signature: tuple) -> bool:
    """Compile `signature` and save it in the disk cache, unless it is cached. True if compiled."""
    if cached(dispatcher, signature):
        return False
    dispatcher.compile(signature)
    return True
