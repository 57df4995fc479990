"""A forked child can use normgen after its parent did (the parent's thread pool has no
threads in the child): plain os.fork, multiprocessing with fork, and DataLoader workers.
Each runs in a subprocess with a timeout, so a hang fails the test instead of hanging CI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PARENT_THEN_CHILD = textwrap.dedent("""
    import os, sys, time, numpy as np
    from normgen import ops
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)   # 256K elements: threads
    ops.layer_norm(x, (1024,))                       # the parent's pool has threads now
    time.sleep(0.5)                                  # ... idle ones, which the child would wait for
    pid = os.fork()
    if pid == 0:
        y = ops.layer_norm(x, (1024,))               # would wait forever on the parent's pool
        os._exit(0 if abs(float(y.mean())) < 1e-3 else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
""")

MULTIPROCESSING = textwrap.dedent("""
    import multiprocessing as mp, numpy as np
    from normgen import ops
    def work(seed):
        x = np.random.default_rng(seed).standard_normal((128, 4096)).astype(np.float32)
        return float(np.abs(ops.layer_norm(x, (4096,)).std(axis=1) - 1).max())
    if __name__ == "__main__":
        import time
        work(0)
        time.sleep(0.5)
        with mp.get_context("fork").Pool(2) as pool:
            errs = pool.map(work, range(4))
        assert max(errs) < 1e-3, errs
""")

DATALOADER = textwrap.dedent("""
    import torch, normgen.torch as nt
    from torch.utils.data import DataLoader, Dataset
    norm = nt.LayerNorm(2048)
    class Normalized(Dataset):
        def __len__(self): return 8
        def __getitem__(self, i):
            with torch.no_grad():
                return norm(torch.randn(64, 2048, generator=torch.Generator().manual_seed(i)))
    norm(torch.randn(64, 2048))                      # the parent used the pool
    import time; time.sleep(0.5)
    loader = DataLoader(Normalized(), batch_size=2, num_workers=2, multiprocessing_context="fork", timeout=60)
    batches = list(loader)
    assert len(batches) == 4 and all(b.shape == (2, 64, 2048) for b in batches)
    assert float(batches[0].std(dim=-1).sub(1).abs().max()) < 1e-3
""")


def _run(code: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), NORMGEN_NUM_THREADS="2")
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_after_the_parent_used_the_pool():
    _run(PARENT_THEN_CHILD)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_multiprocessing_fork_pool():
    _run(MULTIPROCESSING)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_dataloader_workers_with_fork():
    pytest.importorskip("torch")
    _run(DATALOADER)
