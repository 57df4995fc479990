"""normgen's CPU threads respect the process's budget: NORMGEN_NUM_THREADS, OMP_NUM_THREADS,
and torch.set_num_threads in a process that uses PyTorch; a bad setting is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _threads(code: str, **env: str) -> str:
    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    for name in ("NORMGEN_NUM_THREADS", "OMP_NUM_THREADS"):
        if name not in env:
            full.pop(name, None)
    out = subprocess.run([sys.executable, "-c", "from normgen.runtime.threads import threads\n" + code], env=full,
                         cwd=REPO, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip()


def test_the_budget_follows_the_environment_and_torch():
    cpus = len(os.sched_getaffinity(0))
    assert _threads("print(threads())") == str(cpus)
    assert _threads("print(threads())", OMP_NUM_THREADS="1") == "1"
    assert _threads("print(threads())", NORMGEN_NUM_THREADS="3", OMP_NUM_THREADS="1") == "3"  # explicit wins
    assert _threads("import torch; torch.set_num_threads(1); print(threads())") == "1"
    assert _threads("import torch; torch.set_num_threads(1); print(threads()); torch.set_num_threads(2); "
                    "print(threads())").split() == ["1", str(min(cpus, 2))]


def test_a_bad_thread_setting_is_a_clear_error():
    out = _threads("threads()", NORMGEN_NUM_THREADS="abc")
    assert "NormgenError: NORMGEN_NUM_THREADS='abc' is not a number of threads" in out and "allowed: a positive" in out
    assert "is not a number of threads" in _threads("threads()", OMP_NUM_THREADS="0")


def test_a_one_thread_budget_runs_one_kernel_thread():
    """With torch limited to one thread, a large op runs its blocks on the calling thread."""
    code = ("import torch, numpy as np, threading; torch.set_num_threads(1)\n"
            "from normgen.ops import layer_norm\n"
            "x = np.ones((512, 1024), np.float32)\n"
            "layer_norm(x, (1024,)); print(sum(t.name.startswith('normgen') for t in threading.enumerate()))")
    assert _threads(code) == "0"
