"""The reliability campaign behind docs/RELIABILITY.md.

    python -m normgen.testing.reliability --update-docs       # full counts, rewrites docs/RELIABILITY.md
    python -m normgen.testing.reliability --quick --out F     # small counts (what CI runs)
    python -m normgen.testing.reliability                     # full counts, report in the temporary folder

It fuzzes spec files, makes hostile calls, checks hard numerics against the float64
oracle (and PyTorch's float32 error on the same data, when PyTorch is installed), and
injects cache faults (torn and garbage modules, an unwritable cache folder, many
processes building the same kernel at once, `cache clear` while another process runs).
Every check reports what happened; the command exits 1 if any check did not end as it
should.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..bench.cpu import machine
from ..errors import CallError, SpecError
from ..layouts import make_array
from ..op import load
from ..paths import repo_root
from ..spec import parse_spec
from ..verify import oracle


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)


# ---- spec fuzzing ---------------------------------------------------------------------


def fuzz_specs(examples: int, seed: int = 0) -> list[Outcome]:
    """Random text, random TOML with the spec's keys, mutated bundled specs, random bytes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from . import hostile as strategies  # the strategies the test suite uses (needs hypothesis, a test extra)

    out = []
    for label, strategy in (("random text", st.text(max_size=400)),
                            ("random TOML with spec keys", strategies.toml_specs()),
                            ("mutated bundled specs", strategies.mutated_bundled()),
                            ("random bytes (decoded as UTF-8 with replacement)",
                             st.binary(max_size=400).map(lambda b: b.decode("utf-8", "replace")))):
        counts = {"loaded": 0, "rejected with a location": 0, "other exception": 0}
        worst = [0.0]
        failures: list[str] = []

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(text: str) -> None:
            t0 = time.perf_counter()
            try:
                parse_spec(text, "fuzz.toml", default_name="fuzz")
                counts["loaded"] += 1
            except SpecError as e:
                if e.location is not None and e.location.file == "fuzz.toml":
                    counts["rejected with a location"] += 1
                else:
                    counts["other exception"] += 1
                    failures.append(f"SpecError without location: {e}")
            except Exception as e:  # noqa: BLE001 - this is what the campaign looks for
                counts["other exception"] += 1
                failures.append(f"{type(e).__name__}: {e}")
            worst[0] = max(worst[0], time.perf_counter() - t0)

        run()
        n = sum(counts.values())
        out.append(Outcome(f"spec fuzzing: {label}", counts["other exception"] == 0,
                           f"{n} specs: {counts['loaded']} loaded, {counts['rejected with a location']} rejected "
                           f"with a location, {counts['other exception']} other exceptions; slowest "
                           f"{worst[0] * 1e3:.1f} ms" + (f"; first failure: {failures[0]}" if failures else ""),
                           dict(counts, slowest_ms=worst[0] * 1e3)))
    return out


# ---- hostile calls ----------------------------------------------------------------------


def hostile_calls() -> list[Outcome]:
    """Every bad call of normgen.testing.hostile.BAD_CALLS: the error it gets."""
    import re

    from .hostile import BAD_CALLS

    out = []
    for name, (call, pattern) in BAD_CALLS.items():
        try:
            call()
            out.append(Outcome(f"bad call: {name}", False, "no error"))
        except CallError as e:
            ok = re.search(pattern, str(e)) is not None
            out.append(Outcome(f"bad call: {name}", ok, f"CallError: {e}"))
        except Exception as e:  # noqa: BLE001
            out.append(Outcome(f"bad call: {name}", False, f"{type(e).__name__}: {e}"))
    return out


# ---- numerics -----------------------------------------------------------------------------


def numerics() -> list[Outcome]:
    """Large offsets in float32: normgen and PyTorch against the float64 oracle."""

    try:
        import torch
    except ImportError:
        torch = None
    out = []
    cases = [("layer_norm", (64, 4096), "contiguous", {"normalized_shape": (4096,)}),
             ("batch_norm", (16, 8, 32, 32), "contiguous", {}),
             ("batch_norm", (16, 8, 32, 32), "channels_last", {}),
             ("group_norm", (8, 32, 16, 16), "channels_last", {"num_groups": 8})]
    for mean, std in ((1e4, 1e-2), (1e6, 1.0)):
        for name, shape, layout, sizes in cases:
            x = make_array(np.random.default_rng(0).standard_normal(shape) * std + mean, layout, "float32")
            op = load(name)
            y = op(x, **sizes, **({"training": True} if op.spec.running else {}))
            ref = oracle.forward(op.spec, x, {}, sizes=sizes).y
            err = float(np.abs(y - ref).max())
            terr = None
            if torch is not None:
                tx = torch.from_numpy(x)
                if name == "layer_norm":
                    ty = torch.nn.functional.layer_norm(tx, sizes["normalized_shape"])
                elif name == "batch_norm":
                    ty = torch.nn.functional.batch_norm(tx, None, None, training=True)
                else:
                    ty = torch.nn.functional.group_norm(tx, sizes["num_groups"])
                terr = float(np.abs(ty.numpy() - ref).max())
            out.append(Outcome(f"float32 mean {mean:g} std {std:g}: {name} {layout}", err <= 5e-3,
                               f"max |y - y64| normgen {err:.1e}" + (f", PyTorch {terr:.1e}" if terr is not None else ""),
                               {"normgen": err, "torch": terr}))
    return out


# ---- cache faults -------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, sys, numpy as np, normgen
    x = np.random.default_rng(0).standard_normal((6, 10, 7)).astype(np.float32)
    op = normgen.load("group_norm")
    fwd = op.forward(x, num_groups=5)
    dx = op.backward(np.cos(x), fwd).dx
    print(json.dumps({"y": float(np.abs(fwd.y).sum()), "dx": float(np.abs(dx).sum())}))
""")


def _child(env: dict[str, str], code: str = _CHILD) -> subprocess.CompletedProcess:
    full = dict(os.environ, **env, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=600)


def cache_faults(processes: int = 8) -> list[Outcome]:
    out = []
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "cache"
        env = {"NORMGEN_CACHE_DIR": str(cache)}
        # many processes build the same uncached op at once
        full = dict(os.environ, **env, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        procs = [subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=full) for _ in range(processes)]
        results = [p.communicate(timeout=900) for p in procs]
        codes = [p.returncode for p in procs]
        values = {r[0].strip().splitlines()[-1] if r[0].strip() else r[1][-200:] for r in results}
        modules = sorted(cache.rglob("kernels.py"))
        leftovers = [p for p in cache.rglob("*.tmp")]
        ok = all(c == 0 for c in codes) and len(values) == 1 and len(modules) == 2 and not leftovers
        out.append(Outcome(f"{processes} processes build the same op at once", ok,
                           f"exit codes {sorted(set(codes))}, {len(values)} distinct result(s), {len(modules)} "
                           f"module files (forward, backward), {len(leftovers)} temporary files left"))
        reference = values.pop() if len(values) == 1 else None
        # torn and garbage modules are rebuilt
        good = [p.read_bytes() for p in modules]
        modules[0].write_bytes(good[0][: len(good[0]) // 3])
        modules[1].write_bytes(b"raise SystemExit('garbage')\n")
        r = _child(env)
        rebuilt = [p.read_bytes() for p in modules] == good
        out.append(Outcome("torn and garbage modules in the cache", r.returncode == 0 and rebuilt and
                           r.stdout.strip().splitlines()[-1] == reference,
                           "detected by their hash, rebuilt; same results" if rebuilt else r.stderr[-300:]))
        # an unwritable cache folder: a path below a plain file
        blocker = Path(d) / "file"
        blocker.write_text("not a folder")
        r = _child({"NORMGEN_CACHE_DIR": str(blocker / "cache")})
        warned = "cannot write the kernel cache" in r.stderr
        out.append(Outcome("unwritable cache folder", r.returncode == 0 and warned and
                           r.stdout.strip().splitlines()[-1] == reference,
                           "warns and builds in a private temporary folder; same results" if warned else r.stderr[-300:]))
        # cache clear while another process uses an op
        flag = Path(d) / "go"
        code = textwrap.dedent(f"""
            import json, time, pathlib, numpy as np, normgen
            x = np.random.default_rng(0).standard_normal((6, 10, 7)).astype(np.float32)
            op = normgen.load("group_norm")
            op.forward(x, num_groups=5)
            print("ready", flush=True)
            while not pathlib.Path({str(flag)!r}).exists():
                time.sleep(0.05)
            y1 = op.forward(x, num_groups=5).y          # kernels already in memory
            y2 = op.forward(x.astype(np.float64), num_groups=5).y   # a new kernel after the clear
            print(json.dumps({{"ok": bool(np.allclose(y1, y2, atol=1e-5))}}))
        """)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=full)
        line = p.stdout.readline()
        cleared = subprocess.run([sys.executable, "-m", "normgen", "cache", "clear"], capture_output=True, text=True,
                                 env=full)
        flag.write_text("go")
        rest, err = p.communicate(timeout=600)
        ok = line.strip() == "ready" and cleared.returncode == 0 and p.returncode == 0 and '"ok": true' in rest
        out.append(Outcome("`normgen cache clear` while another process uses an op", ok,
                           "the running process keeps its kernels and rebuilds new ones" if ok else err[-300:]))
    return out


# ---- the report -----------------------------------------------------------------------------


def report(sections: dict[str, list[Outcome]], command: str) -> str:

    m = machine()
    lines = ["# Reliability", "",
             f"Generated by `{command}` on {m.get('date')} (normgen {__version__}, commit {m.get('commit', '?')}, "
             f"{m.get('cpu', m.get('platform'))}). CI runs the same command with smaller counts "
             "(tests/test_reliability.py).", ""]
    total = sum(len(v) for v in sections.values())
    bad = [o for v in sections.values() for o in v if not o.ok]
    lines.append(f"**{total - len(bad)} of {total} checks ended as they should.**")
    lines.append("")
    for title, outcomes in sections.items():
        lines += [f"## {title}", "", "| check | result | what happened |", "|---|---|---|"]
        for o in outcomes:
            detail = o.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {o.name} | {'ok' if o.ok else '**FAILED**'} | {detail} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m normgen.testing.reliability", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (CI)")
    ap.add_argument("--examples", type=int, help="fuzzed specs per strategy (default 2000, quick 100)")
    ap.add_argument("--processes", type=int, help="concurrent builders (default 8, quick 3)")
    ap.add_argument("--out", help="where to write the report (default: a file in the temporary folder)")
    ap.add_argument("--update-docs", action="store_true", help="write the report to the checkout's docs/RELIABILITY.md")
    args = ap.parse_args(argv)
    examples = args.examples or (100 if args.quick else 2000)
    processes = args.processes or (3 if args.quick else 8)
    steps: list[tuple[str, Callable[[], list[Outcome]]]] = [
        ("Spec fuzzing", lambda: fuzz_specs(examples)),
        ("Hostile calls", hostile_calls),
        ("Hard numerics (float32 against the float64 oracle)", numerics),
        ("Cache faults", lambda: cache_faults(processes)),
    ]
    sections = {}
    for title, step in steps:
        t0 = time.perf_counter()
        print(f"reliability: {title} ...", flush=True)
        sections[title] = step()
        for o in sections[title]:
            print(f"  {'ok  ' if o.ok else 'FAIL'} {o.name}: {o.detail}", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    cmd = "python -m normgen.testing.reliability" + (" --quick" if args.quick else "")
    text = report(sections, cmd)
    if args.update_docs:
        root = repo_root()
        if root is None:
            ap.error("--update-docs needs a source checkout (docs/RELIABILITY.md beside the normgen package)")
        path = root / "docs" / "RELIABILITY.md"
    else:
        path = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "normgen-reliability.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"wrote {path}")
    return 0 if all(o.ok for v in sections.values() for o in v) else 1


if __name__ == "__main__":
    sys.exit(main())
