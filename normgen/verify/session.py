"""A check of several specs, as `normgen check` runs it: plan, compile ahead, check.

    1. plan     each spec's matrix of checks (matrix.full), the kernel entry points each
                check runs (matrix.needs), and the part of the matrix to run: all of it
                (full=True) or a representative cover (matrix.representative)
    2. compile  what the checks need and the disk cache lacks, on every core
                (runtime/prebuild.py): each module once, with every entry point any
                spec needs from it, the first spec's modules first
    3. check    spec by spec, as soon as its kernels are compiled (check.run_case)

The CUDA target (GPU or emulator) has no ahead-of-time step and runs the full matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..op import Op
from ..runtime import cpu
from ..runtime.prebuild import Counts, Prebuild
from .check import Result, run_case
from .matrix import Check, Need, body, features, full, needs, representative


@dataclass
class Planned:
    """The checks of one spec that will run, and what they need compiled."""

    op: Op
    checks: list[Check]
    of: int  # checks in the spec's full matrix
    needs: list[Need] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # their modules


def plan(op: Op, layouts: tuple[str, ...], dtypes: tuple[str, ...], *, whole: bool, have: set) -> Planned:
    """The checks of `op` to run; `have`: the (kernel body, entry point) pairs needed already."""
    matrix = full(op.spec, layouts, dtypes)
    rows = []
    for check in matrix:
        need = needs(op, check)
        keys = frozenset((body(n.kernel), e) for n in need for e in n.entries)
        rows.append((check, need, features(check, need), keys))
    if whole:
        chosen = matrix
        for *_, keys in rows:
            have.update(keys)
    else:
        chosen = representative([(c, f, k) for c, _, f, k in rows], have)
    picked = set(chosen)
    return Planned(op, chosen, len(matrix), [n for c, need, *_ in rows if c in picked for n in need])


class Status:
    """The live line of a check: the spec, kernels compiled / from the cache, checks done."""

    def __init__(self, show: Callable[[str, bool], None]):
        self.show = show
        self.spec = ""
        self.counts = Counts()
        self.done = 0
        self.total: int | None = None

    def update(self, force: bool = False) -> None:
        c = self.counts
        parts = [f"check {self.spec}" if self.spec else "check"]
        to_compile = c.compiled + c.pending + c.failed
        if to_compile:
            parts.append(f"kernels {c.compiled}/{to_compile} compiled" + (f", {c.cached} from cache" if c.cached else "")
                         + (f", {c.failed} failed" if c.failed else ""))
        elif c.cached:
            parts.append(f"kernels {c.cached} from cache")
        parts.append(f"checks {self.done}/{self.total}" if self.total is not None else "planning")
        self.show(" · ".join(parts), force)

    def kernels(self, counts: Counts) -> None:
        self.counts = counts
        self.update()


def run(ops: list[Op], *, layouts: tuple[str, ...], dtypes: tuple[str, ...], whole: bool = False,
        target: str = "cpu", jobs: int | None = None,
        show: Callable[[str, bool], None] = lambda text, force: None,
        on_result: Callable[[Result], None] = lambda r: None,
        on_spec: Callable[[Planned, list[Result], float], None] = lambda p, results, seconds: None) -> None:
    """Check `ops`: the representative checks of each (all of them when `whole`), kernels
    compiled ahead on `jobs` processes (default: every core). `show(text, force)` gets
    the status line; `on_result` each result; `on_spec` each spec's results and seconds."""
    status = Status(show)
    status.update(force=True)
    build = Prebuild(jobs, progress=status.kernels) if target == "cpu" else None
    try:
        planned: list[Planned] = []
        have: set = set()
        for op in ops:
            status.spec = op.name
            status.update()
            if target == "cpu":
                planned.append(plan(op, layouts, dtypes, whole=whole, have=have))
            else:
                matrix = full(op.spec, layouts, dtypes)
                planned.append(Planned(op, matrix, len(matrix)))
        if build is not None:  # all at once: each module's entry points in one task, in spec order
            build.add(n for p in planned for n in p.needs)
            for p in planned:
                p.keys = list(dict.fromkeys(cpu.module_key(n.kernel) for n in p.needs))
        status.total = sum(len(p.checks) for p in planned)
        for p in planned:
            t0 = time.perf_counter()
            status.spec = p.op.name
            status.update(force=True)
            if build is not None:
                build.wait(p.keys)
            results = []
            for check in p.checks:
                r = run_case(p.op, check.case, check.layout, check.dtype, check.training, check.seed, target)
                results.append(r)
                status.done += 1
                if build is not None:
                    build.poll()  # reports the kernels compiled meanwhile, and the checks
                else:
                    status.update()
                on_result(r)
            on_spec(p, results, time.perf_counter() - t0)
    finally:
        if build is not None:
            build.close()
