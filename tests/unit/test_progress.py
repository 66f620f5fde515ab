"""The progress line of long audits (#16): on a terminal after the delay, nothing otherwise."""

from __future__ import annotations

import io
import threading

from auditor.cli import PROGRESS_AFTER_S, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_audit_on_a_terminal_shows_progress_then_erases_it() -> None:
    stream = _Terminal()
    with progress(stream, "auditing", after_s=0.0):
        threading.Event().wait(0.2)
    text = stream.getvalue()
    assert text.startswith("\rauditor: auditing... 0 s")
    assert text.endswith("\r\033[K")  # erased before the report or warnings are written


def test_a_short_audit_shows_nothing() -> None:
    stream = _Terminal()
    with progress(stream, "auditing", after_s=5.0):
        pass
    assert stream.getvalue() == ""


def test_a_pipe_never_gets_progress() -> None:
    stream = io.StringIO()  # not a terminal: CI logs and redirected stderr stay clean
    with progress(stream, "auditing", after_s=0.0):
        threading.Event().wait(0.2)
    assert stream.getvalue() == ""
    assert PROGRESS_AFTER_S == 2.0
