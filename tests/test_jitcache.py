"""Numba's disk cache under several writers (runtime/jitcache.py): asked without
compiling, and two processes that save into it at once cannot point a signature at the
other's machine code."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from numba import float64, int64

from normgen.runtime import jitcache

REPO = Path(__file__).resolve().parent.parent


def _module(tmp_path: Path, name: str = "twice"):
    path = tmp_path / "twice.py"
    if not path.exists():
        path.write_text("from numba import njit\n\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # as cache.load_module does: Numba's cache pickles the module by name
    spec.loader.exec_module(mod)
    jitcache.guard(mod)
    return mod


def test_cached_asks_the_disk_without_compiling(tmp_path):
    f = _module(tmp_path).f
    assert not jitcache.cached(f, (int64,))
    assert not f.overloads and not f.stats.cache_misses  # nothing was compiled
    assert jitcache.compile(f, (int64,)) and f(1) == 2
    assert not jitcache.compile(f, (int64,))  # in memory now
    again = _module(tmp_path, "twice_again").f  # a fresh dispatcher: from the disk
    assert jitcache.cached(again, (int64,)) and sum(again.stats.cache_hits.values()) == 1
    assert again(41) == 42 and not again.stats.cache_misses


def test_saves_of_two_signatures_at_once_keep_both(tmp_path):
    """Both writers read the index before either writes it (a pause makes it certain
    without the lock): unguarded, both pick data file 1 and one signature is lost or gets
    the other's code; guarded, the second waits for the first."""
    f = _module(tmp_path).f
    f.compile((int64,))
    f.compile((float64,))
    folder = Path(f._cache.cache_path)
    for p in list(folder.glob("twice.f-*.nb*")):  # forget what compiling saved
        p.unlink()
    index = f._cache._inner._cache_file
    load = index._load_index

    def slow_load():
        found = load()
        time.sleep(0.3)
        return found

    index._load_index = slow_load
    threads = [threading.Thread(target=f._cache.save_overload, args=(sig, f.overloads[sig]))
               for sig in ((int64,), (float64,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = load()
    assert len(saved) == 2 and len(set(saved.values())) == 2  # both signatures, two data files
    check = ("import importlib.util, sys\n"
             f"spec = importlib.util.spec_from_file_location('twice', {str(tmp_path / 'twice.py')!r})\n"
             "m = sys.modules['twice'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "print(m.f(1), m.f(1.5), sum(m.f.stats.cache_misses.values()))\n")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2.5", "0"]  # each loaded from the disk, each its own code


def test_a_save_holds_the_folder_lock(tmp_path, monkeypatch):
    import fcntl

    f = _module(tmp_path).f
    inner = f._cache._inner
    seen = []

    def probe(sig, data):
        fd = os.open(os.path.join(inner.cache_path, jitcache.LOCK_NAME), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)

    monkeypatch.setattr(inner, "save_overload", probe)
    f.compile((int64,))
    assert seen == ["held"]
