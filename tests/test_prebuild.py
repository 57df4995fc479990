"""Compiling ahead in worker processes: the parent then compiles nothing, a warm cache
starts no worker, and one core compiles in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Plans the representative checks of some specs, compiles them ahead, runs them, and
# reports what the parent process compiled itself (nothing, if prebuild named everything).
SCRIPT = textwrap.dedent("""
    import json, sys
    from numba.core.dispatcher import Dispatcher
    from normgen.op import load
    from normgen.runtime import cache, prebuild
    from normgen.codegen import cpu_prelude
    from normgen.verify import session
    from normgen.verify.check import run_case

    def compiled_here():
        modules = list(cache._loaded.values()) + [cpu_prelude]
        return [f"{m.__name__}.{n}{tuple(sig)}" for m in modules for n, d in vars(m).items()
                if isinstance(d, Dispatcher) for sig in d.stats.cache_misses]

    def main(workers, names, layouts, dtypes, each):
        build = prebuild.Prebuild(workers)
        have, planned = set(), []
        for name in names:
            p = session.plan(load(name), layouts, dtypes, whole=False, have=have)
            if each:  # one need at a time: a module asked again for other entry points
                p.keys = [k for n in p.needs for k in build.add([n])]
            else:
                p.keys = build.add(p.needs)
            planned.append(p)
        for p in planned:
            build.wait(p.keys)
        started_pool = build._pool is not None
        build.close()
        before = compiled_here()
        results = [run_case(p.op, c.case, c.layout, c.dtype, c.training, c.seed) for p in planned for c in p.checks]
        misses = sorted(set(compiled_here()) - set(before))  # compiled by the checks themselves
        c = build.counts
        print(json.dumps({"compiled": c.compiled, "cached": c.cached, "failed": c.failed, "errors": c.errors,
                          "needed": len(have), "checks": len(results), "ok": all(r.ok for r in results),
                          "misses": misses, "compiled_here": len(before), "pool": started_pool}))

    if __name__ == "__main__":
        main(int(sys.argv[1]), sys.argv[2].split(","), tuple(sys.argv[3].split(",")), tuple(sys.argv[4].split(",")),
             sys.argv[5:] == ["each"])
""")


def _run(tmp_path: Path, cache: Path, workers: int, names: str, layouts: str, dtypes: str, *more: str) -> dict:
    script = tmp_path / "prebuild_and_check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), NORMGEN_CACHE_DIR=str(cache / "normgen"),
               NUMBA_CACHE_DIR=str(cache / "numba"))
    out = subprocess.run([sys.executable, str(script), str(workers), names, layouts, dtypes, *more], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_workers_compile_what_the_checks_run_and_a_warm_cache_starts_none(tmp_path):
    # batch_norm: rows and columns, train and eval; switchable_norm: a mixture (split path)
    args = ("batch_norm,switchable_norm", "contiguous,channels_last", "float64")
    cold = _run(tmp_path, tmp_path / "c", 2, *args)
    assert cold["errors"] == [] and cold["failed"] == 0
    assert cold["compiled"] == cold["needed"] > 0 and cold["cached"] == 0 and cold["pool"]
    assert cold["ok"] and cold["checks"] > 0
    assert cold["compiled_here"] == 0 and cold["misses"] == []  # every kernel came from the workers
    warm = _run(tmp_path, tmp_path / "c", 2, *args)
    assert warm["compiled"] == 0 and warm["cached"] == cold["needed"] and not warm["pool"]
    assert warm["misses"] == [] and warm["ok"]


def test_one_core_compiles_in_this_process(tmp_path):
    one = _run(tmp_path, tmp_path / "c", 1, "layer_norm", "contiguous", "float64")
    assert not one["pool"] and one["compiled"] == one["needed"] > 0 and one["compiled_here"] > 0
    assert one["misses"] == [] and one["ok"]  # compiled ahead, all of it: the checks compiled nothing more


def test_a_module_asked_again_for_other_entry_points_compiles_them_after_the_first_task(tmp_path):
    # instance_norm runs forward_fused of a module whose forward_partial switchable_norm runs
    run = _run(tmp_path, tmp_path / "c", 2, "instance_norm,switchable_norm", "contiguous", "float64", "each")
    assert run["errors"] == [] and run["compiled"] == run["needed"] > 0 and run["cached"] == 0
    assert run["compiled_here"] == 0 and run["misses"] == [] and run["ok"]


def test_a_fused_spec_compiles_ahead_what_its_checks_run(tmp_path):
    # the extras (residual), the kept prologue h and its gradient dh are arrays of the plan, each
    # with the strides run_case gives it: sliced, dh (laid out like x) is strided where h is not
    one = _run(tmp_path, tmp_path / "c", 1, "add_rms_norm", "sliced", "float64")
    assert one["errors"] == [] and one["compiled"] == one["needed"] > 0
    assert one["misses"] == [] and one["ok"] and one["checks"] > 0
