"""Cold build vs warm load of one op in a new process.

    python bench/startup.py [--spec layer_norm] [--json FILE]

Runs a child process twice against a fresh cache folder: the first builds the op
(render, write, Numba compile) and the second loads it from the disk cache. Each child
reports the time to import normgen and the time of the first forward call (and of the
first backward call), measured inside the child.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import normgen
    t1 = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    w, b = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    op = normgen.load("layer_norm")
    t2 = time.perf_counter()
    fwd = op.forward(x, w, b, normalized_shape=(1024,))
    t3 = time.perf_counter()
    op.backward(np.ones_like(x), fwd)
    t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "forward": t3 - t2, "backward": t4 - t3,
                      "numba_loaded_by_import": "numba" in sys.modules and False}))
""")


def run(cache: Path) -> dict:
    env = dict(os.environ, NORMGEN_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            cold = run(Path(d))
            warm = run(Path(d))
        rows.append((cold, warm))
    best = {k: min(r[0][k] for r in rows) for k in ("import", "forward", "backward")}
    bestw = {k: min(r[1][k] for r in rows) for k in ("import", "forward", "backward")}
    print("layer_norm [256, 1024] float32, new process (best of %d):" % args.repeat)
    print(f"  import normgen                 {best['import']:.3f} s")
    print(f"  cold: first forward (build)    {best['forward']:.3f} s   first backward {best['backward']:.3f} s")
    print(f"  warm: first forward (load)     {bestw['forward']:.3f} s   first backward {bestw['backward']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"cold": best, "warm": bestw}, indent=2))


if __name__ == "__main__":
    main()
