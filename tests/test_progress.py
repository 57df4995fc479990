"""The status line of long commands: in place on a terminal, plain lines otherwise, silent
when quiet; the command's own output is never torn."""

from __future__ import annotations

import io

from normgen.progress import Progress, elapsed


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_elapsed_reads_like_a_clock():
    assert [elapsed(s) for s in (0, 5.9, 59, 60, 125)] == ["0s", "5s", "59s", "1m00s", "2m05s"]


def test_plain_lines_when_not_a_terminal(monkeypatch):
    err, out = io.StringIO(), io.StringIO()
    clock = iter([100.0, 100.5, 101.0, 107.0])
    monkeypatch.setattr("normgen.progress.time.perf_counter", lambda: next(clock))
    p = Progress(stream=err, start=100.0)
    p.update("check · planning", force=True)  # 100.0: forced, shown
    p.update("check · planning", force=True)  # 100.5: same text, not repeated
    p.update("check a · checks 1/9")  # 101.0: within the interval, held back
    p.print("a row", file=out)
    p.update("check a · checks 2/9")  # 107.0: the interval passed
    p.close()
    assert err.getvalue() == "check · planning · 0s\ncheck a · checks 2/9 · 7s\n"
    assert out.getvalue() == "a row\n"


def test_a_terminal_line_is_rewritten_in_place_and_cleared_around_output():
    err, out = Terminal(), io.StringIO()
    p = Progress(stream=err)
    p.update("check a", force=True)
    p.print("a row", file=out)
    p.close()
    text = err.getvalue()
    assert text.startswith("\rcheck a · 0s\x1b[K")
    # cleared before the row, drawn again after it, cleared at the end
    assert text.count("\r\x1b[K") == 2 and text.endswith("\r\x1b[K")
    assert text.count("check a · ") >= 2
    assert out.getvalue() == "a row\n"


def test_quiet_prints_nothing_but_the_output():
    err, out = Terminal(), io.StringIO()
    p = Progress(enabled=False, stream=err)
    p.update("check a", force=True)
    p.print("a row", file=out)
    p.close()
    assert err.getvalue() == "" and out.getvalue() == "a row\n"


def test_a_long_line_is_cut_to_the_terminal_width(monkeypatch):
    import os

    monkeypatch.setattr("normgen.progress.shutil.get_terminal_size", lambda fallback: os.terminal_size((20, 5)))
    err = Terminal()
    p = Progress(stream=err)
    p.update("x" * 50, force=True)
    p.close()
    line = err.getvalue().split("\x1b[K")[0].lstrip("\r")
    assert line == "x" * 18 + "…"
