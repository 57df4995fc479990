"""Compile the CPU kernels a command needs before it runs them: on every core, in processes.

Numba compiles on the first call of a kernel, holding the GIL, so a command that runs many
new kernels compiles them one after another on one core. `Prebuild` takes the kernel
entry points a command will run, asks the disk cache which are there (loading those into
this process), and compiles the others in spawned worker processes, one task per
generated module, in the order asked:

    build = Prebuild(progress=...)   # the workers start with the first kernel to compile
    keys = build.add(needs)          # (kernel, entry points) pairs; their modules' keys
    build.wait(keys)                 # then the kernels load from the disk cache on first call
    build.close()

Why it is safe with the disk cache: a module's entry points are compiled by one task, or
by tasks that run one after another (a module asked again for more), never by two
processes at once. What processes do share, the prelude every module imports and any
normgen process running at the same time, goes through Numba's cache under the folder's
lock (jitcache.py); the module files are written atomically and create-if-absent, by this
process, before any worker imports them (cache.py). A worker compiles with
`Dispatcher.compile(signature)` for the types `cpu.run` passes, so the parent's first
call finds the machine code on disk. When a worker fails (a compile error, a killed
process) nothing is lost: the parent compiles that kernel on first call, where a check
reports the error. With one core, or no file locks, everything compiles in this process.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from numba import typeof

from ..codegen.abi import arguments
from ..plan.model import Kernel
from . import cpu, jitcache
from .threads import threads

#: the dtype of an array argument of each ABI kind on the CPU (None: x's; statistics are in x's dtype)
_KIND_DTYPE = {"in": None, "out": None, "stat_in": None, "stat_out": None, "f64_in": np.float64,
               "f64_out": np.float64, "geometry": np.int64}
_SCALARS = {"f64": 0.0, "i64": 0}


#: half-type kernels take these arrays as uint16 bits (x-like: x, y, dy, dx, h, dh, extra inputs
#: e_* and their gradients d_*); parameters, statistics and scratch in float32 (runtime/cpu.py)
_HALF_BITS = ("x", "y", "dy", "dx", "h", "dh")


def _array_dtype(kernel: Kernel, name: str, kind: str):
    fixed = _KIND_DTYPE[kind]
    if fixed is not None:
        return fixed
    if kernel.dtype in cpu.HALF:
        return np.uint16 if name in _HALF_BITS or name.startswith(("e_", "d_")) else np.float32
    return kernel.dtype


def signature(kernel: Kernel, entry: str) -> tuple:
    """The Numba types of `entry`'s arguments as cpu.run passes them (flat 1-D arrays)."""
    values = []
    for arg in arguments(kernel, entry):
        if arg.kind in _SCALARS:
            values.append(_SCALARS[arg.kind])
        else:
            values.append(np.zeros(1, _array_dtype(kernel, arg.name, arg.kind)))
    return tuple(typeof(v) for v in values)


def compile_module(kernel: Kernel, entries: tuple[str, ...]) -> tuple[int, int]:
    """Compile a module's entry points into the disk cache: (compiled, found cached)."""
    mod = cpu.module(kernel)
    done = [jitcache.compile(getattr(mod, e), signature(kernel, e)) for e in entries]
    return sum(done), len(done) - sum(done)


@dataclass
class Counts:
    """Entry points: compiled (by a worker, or here), found in the disk cache, still to
    compile, and failed (then compiled on first call, where a check reports the error)."""

    compiled: int = 0
    cached: int = 0
    pending: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Task:
    future: Future
    entries: int
    counted: bool = False


class Prebuild:
    """Kernel entry points compiled ahead, each module in one task (see the module doc)."""

    def __init__(self, workers: int | None = None, progress: Callable[[Counts], None] | None = None):
        self.workers = max(1, workers or threads())
        if not jitcache.LOCKS:
            self.workers = 1
        self.counts = Counts()
        self._progress = progress or (lambda counts: None)
        self._asked: dict[str, set[str]] = {}  # module key -> entry points asked for
        self._tasks: dict[str, list[_Task]] = {}  # module key -> its tasks, each after the one before
        self._pool: ProcessPoolExecutor | None = None
        self._broken = False
        self._closed = False

    def add(self, needs: Iterable) -> list[str]:
        """Start compiling what `needs` (objects with .kernel and .entries) name and the disk
        cache lacks; returns the module keys to `wait` for. Entry points of a module that
        is compiling already are compiled after it, never beside it."""
        by_key: dict[str, tuple[Kernel, set[str]]] = {}
        for need in needs:
            by_key.setdefault(cpu.module_key(need.kernel), (need.kernel, set()))[1].update(need.entries)
        for key, (kernel, names) in by_key.items():
            asked = self._asked.setdefault(key, set())
            new = sorted(names - asked)
            asked.update(new)
            missing = self._missing(kernel, new) if new else ()
            if missing:
                tasks = self._tasks.setdefault(key, [])
                before = tasks[-1].future if tasks else None
                tasks.append(_Task(self._after(before, kernel, missing), len(missing)))
                self.counts.pending += len(missing)
        self._sweep()
        return list(by_key)

    def _after(self, before: Future | None, kernel: Kernel, entries: tuple[str, ...]) -> Future:
        """A task that starts when `before` (the module's previous task) has ended."""
        if before is None or before.done():
            return self._submit(kernel, entries)
        chained: Future = Future()

        def start(_: Future) -> None:  # in the pool's thread
            if self._closed:
                chained.set_exception(CancelledError())
                return
            self._submit(kernel, entries).add_done_callback(lambda done: _copy(done, chained))

        before.add_done_callback(start)
        return chained

    def _missing(self, kernel: Kernel, names: list[str]) -> tuple[str, ...]:
        """The entry points not in the disk cache (those that are, loaded into this process)."""
        mod = cpu.module(kernel)
        missing = tuple(e for e in names if not jitcache.cached(getattr(mod, e), signature(kernel, e)))
        self.counts.cached += len(names) - len(missing)
        return missing

    def _submit(self, kernel: Kernel, entries: tuple[str, ...]) -> Future:
        if self.workers > 1 and not self._broken:
            if self._pool is None:  # started by the first kernel to compile: a warm cache needs none
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            try:
                return self._pool.submit(compile_module, kernel, entries)
            except RuntimeError:  # the pool broke (a worker was killed): compile here from now on
                self._broken = True
        done: Future = Future()
        try:
            done.set_result(compile_module(kernel, entries))
        except Exception as e:
            done.set_exception(e)
        return done

    def wait(self, keys: Iterable[str]) -> None:
        """Until the tasks of these modules are done, reporting progress as any task ends."""
        for key in keys:
            for task in self._tasks.get(key, ()):
                while not task.future.done():
                    self._sweep()
                    try:
                        task.future.exception(timeout=0.2)
                    except (TimeoutError, CancelledError):
                        pass
        self._sweep()

    def poll(self) -> None:
        """Count the tasks that ended since the last call, then report (to call between other work)."""
        self._sweep()

    def _sweep(self) -> None:
        """Count the tasks that ended since the last sweep, then report."""
        for task in (t for tasks in self._tasks.values() for t in tasks):
            if task.counted or not task.future.done():
                continue
            task.counted = True
            self.counts.pending -= task.entries
            error = CancelledError() if task.future.cancelled() else task.future.exception()
            if error is None:
                compiled, cached = task.future.result()
                self.counts.compiled += compiled
                self.counts.cached += cached  # compiled meanwhile by another normgen process
            else:
                self.counts.failed += task.entries
                self.counts.errors.append(f"{type(error).__name__}: {error}")
        self._progress(self.counts)

    def close(self) -> None:
        """Stop the workers at once, busy or not: the command is done (then they are idle) or
        interrupted. A kernel left unfinished is compiled on first call; the disk cache stays
        whole (a killed writer leaves at most a stray temporary file, and its lock is freed)."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:  # no public way to stop busy workers before Python 3.14
            proc.terminate()
        for proc in workers:
            proc.join(timeout=10)

    def __enter__(self) -> Prebuild:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy(done: Future, to: Future) -> None:
    """The outcome of `done` (ended) into `to`."""
    if done.cancelled():
        to.set_exception(CancelledError())
    elif done.exception() is not None:
        to.set_exception(done.exception())
    else:
        to.set_result(done.result())
