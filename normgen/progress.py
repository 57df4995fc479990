"""A live status line for long commands (check, generate, bench), on stderr.

On a terminal the line is rewritten in place (at most ten times a second, and once a
second by a background thread so that the elapsed time moves while one step takes long)
and cleared before any other output, so tables printed meanwhile stay intact; otherwise (a pipe, a CI
log) it is printed as plain lines, at most one every few seconds plus the ones marked
`force`. `Progress(enabled=False)` (`--quiet`) prints nothing. The elapsed time since the
command started ends every line.

    progress = Progress()
    progress.update("check: batch_norm · kernels 3/40 compiled")   # "... · 2s"
    progress.print("a table row")                                     # to stdout, line kept
    progress.close()
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import TextIO


def elapsed(seconds: float) -> str:
    """12s, 3m05s."""
    s = int(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """One status line: in place on a terminal, plain lines otherwise, nothing when disabled."""

    #: seconds between redraws on a terminal, and between plain lines otherwise
    TTY_INTERVAL = 0.1
    LINE_INTERVAL = 5.0

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, start: float | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and _isatty(self.stream)
        self.start = time.perf_counter() if start is None else start
        self._text = ""
        self._shown = False  # a live line is on the screen (terminal)
        self._last = -1e9  # when the last line was drawn or printed
        self._lock = threading.RLock()  # the ticker and the command's thread both draw
        self._stop = threading.Event()
        if self.tty:
            threading.Thread(target=self._tick, name="normgen-progress", daemon=True).start()

    def update(self, text: str, force: bool = False) -> None:
        """Show `text` (with the elapsed time); `force`: now, even between intervals."""
        if not self.enabled:
            return
        with self._lock:
            now = time.perf_counter()
            changed = text != self._text
            self._text = text
            if self.tty:
                if force or now - self._last >= self.TTY_INTERVAL:
                    self._draw(now)
            elif (force and changed) or now - self._last >= self.LINE_INTERVAL:
                self.stream.write(f"{text} · {elapsed(now - self.start)}\n")
                self.stream.flush()
                self._last = now

    def print(self, line: str = "", file: TextIO | None = None) -> None:
        """Print a line of the command's own output without tearing the live line."""
        with self._lock:
            shown = self._shown
            self._clear()
            print(line, file=file or sys.stdout, flush=True)
            if shown:
                self._draw(time.perf_counter())

    def close(self) -> None:
        """Clear the live line (a terminal keeps the command's output only) and stop the ticker."""
        self._stop.set()
        with self._lock:
            self._clear()
            self._text = ""

    # ---- terminal -----------------------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._text and not self._stop.is_set():
                    self._draw(time.perf_counter())

    def _draw(self, now: float) -> None:
        line = f"{self._text} · {elapsed(now - self.start)}"
        width = shutil.get_terminal_size((100, 24)).columns - 1
        if len(line) > width:
            line = line[: max(0, width - 1)] + "…"
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self._shown = True
        self._last = now

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
