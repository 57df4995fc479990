"""The disk cache: keys change when (and only when) something that matters changes,
modules are written only when their bytes change, corrupt entries are rebuilt, and a new
process that uses an op built earlier compiles nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import normgen
from normgen.codegen import render as render_module
from normgen.codegen.render import render
from normgen.runtime import cache, cpu

REPO = Path(__file__).resolve().parent.parent


def _key(op, shape, **kw):
    plan = op.plan(shape, **kw)
    return cache.module_key(render(plan.kernel).key, cpu.target_id())


def test_same_structure_same_key_other_structure_other_key():
    op = normgen.load("layer_norm")
    a = _key(op, (64, 256), normalized_shape=(256,))
    b = _key(op, (4096, 1000), normalized_shape=(1000,))  # other sizes, same loop structure
    assert a == b
    assert _key(op, (64, 256), normalized_shape=(256,), dtype="float64") != a
    assert _key(op, (64, 256), normalized_shape=(256,), params=False) != a
    assert _key(op, (64, 256), normalized_shape=(256,), direction="backward") != a


def test_identical_code_of_two_specs_is_one_module():
    """instance_norm and switchable_norm plan the same kernels (N C kept over *spatial): one key."""
    shape = (2, 3, 4, 5)
    a, b = normgen.load("instance_norm").plan(shape), normgen.load("switchable_norm").plan(shape)
    ra, rb = render(a.kernel), render(b.kernel)
    assert ra.text != rb.text  # headers name their own spec
    assert ra.key == rb.key and _key(normgen.load("instance_norm"), shape) == _key(normgen.load("switchable_norm"), shape)


def test_the_key_follows_the_generated_code(tmp_path, monkeypatch):
    """A template change that changes the generated code is a new key; one that does not
    (a template comment) is not."""
    op = normgen.load("group_norm")
    kernel = op.plan((2, 4, 3, 3), num_groups=2).kernel
    before = render(kernel).key
    copy = tmp_path / "templates"
    shutil.copytree(REPO / "templates", copy)
    monkeypatch.setattr(render_module, "templates_dir", lambda: copy)
    render_module.environment.cache_clear()
    try:
        assert render(kernel).key == before  # same templates, same key
        rows = copy / "cpu" / "rows.py.j2"
        rows.write_text(rows.read_text() + "{# a template comment: no change in the code #}\n")
        render_module.environment.cache_clear()
        assert render(kernel).key == before
        rows.write_text(rows.read_text() + "\n# a comment in the generated code\n")
        render_module.environment.cache_clear()
        assert render(kernel).key != before
    finally:
        render_module.environment.cache_clear()


def test_write_if_changed_keeps_mtime(tmp_path):
    path = tmp_path / "m.py"
    assert cache.write_if_changed(path, b"a = 1\n")
    os.utime(path, (1_000_000, 1_000_000))
    assert not cache.write_if_changed(path, b"a = 1\n")
    assert path.stat().st_mtime == 1_000_000
    assert cache.write_if_changed(path, b"a = 2\n")
    assert path.read_bytes() == b"a = 2\n"


SCRIPT = textwrap.dedent("""
    import json, numpy as np, normgen
    from normgen.runtime import cache
    x = np.random.default_rng(0).standard_normal((6, 8, 5)).astype(np.float32)
    op = normgen.load("group_norm")
    fwd = op.forward(x, np.ones(8, np.float32), np.zeros(8, np.float32), num_groups=4)
    grads = op.backward(np.cos(x), fwd)
    stats = {}
    for key, mod in cache._loaded.items():
        for name, fn in vars(mod).items():
            own = getattr(getattr(fn, "py_func", None), "__module__", None) == mod.__name__
            used = own and (fn.stats.cache_hits or fn.stats.cache_misses)
            if used:
                stats[key[:8] + "." + name] = {"hits": sum(fn.stats.cache_hits.values()),
                                               "misses": sum(fn.stats.cache_misses.values())}
    print(json.dumps({"stats": stats, "y": float(np.abs(fwd.y).sum()), "dx": float(np.abs(grads.dx).sum())}))
""")


def _run(env):
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_compiles_nothing(tmp_path):
    env = dict(os.environ, NORMGEN_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    first = _run(env)
    assert all(s["misses"] == 1 and s["hits"] == 0 for s in first["stats"].values()), first
    modules = sorted((tmp_path / "cache").rglob("kernels.py"))
    mtimes = [p.stat().st_mtime_ns for p in modules]
    second = _run(env)
    assert second["stats"] and all(s["misses"] == 0 and s["hits"] == 1 for s in second["stats"].values()), second
    assert [p.stat().st_mtime_ns for p in modules] == mtimes  # modules not rewritten
    assert second["y"] == first["y"] and second["dx"] == first["dx"]


def test_a_corrupt_entry_is_rebuilt_not_trusted(tmp_path):
    env = dict(os.environ, NORMGEN_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    first = _run(env)
    modules = sorted((tmp_path / "cache").rglob("kernels.py"))
    good = [p.read_bytes() for p in modules]
    modules[0].write_bytes(good[0][: len(good[0]) // 2])  # torn write
    modules[1].write_bytes(b"raise SystemExit('garbage')\n")
    again = _run(env)
    assert again["y"] == first["y"] and again["dx"] == first["dx"]
    assert [p.read_bytes() for p in modules] == good


def test_importing_normgen_compiles_nothing():
    code = ("import sys, normgen, normgen.ops; "
            "print('numba' in sys.modules, any(m.startswith('normgen_kernels_') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.split() == ["False", "False"]


def test_cache_info_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMGEN_CACHE_DIR", str(tmp_path / "c"))
    cache.clear()  # modules loaded by earlier tests in this process are not in the new folder
    cpu.module.cache_clear()
    x = np.ones((3, 4), np.float64) * np.arange(4)
    normgen.load("standardize")(x)
    assert cache.info()["modules"] >= 1
    assert cache.clear() >= 1
    assert cache.info()["modules"] == 0
    assert np.all(normgen.load("standardize")(x) == 0)  # rebuilt after clear; constant features -> 0
