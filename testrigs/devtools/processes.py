"""Detached server processes tracked by pid *and* start time, for the control plane and the lab.

A process started here gets its own session (a Ctrl-C meant for a test run does not kill it
before teardown) and is recorded as (name, pid, start ticks): field 22 of ``/proc/<pid>/stat``
tells it apart from a later process that reuses the pid, so stopping never signals an unrelated
program. Stopping is SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrackedProcess:
    name: str
    pid: int
    start_ticks: int

    def running(self) -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # reap it if it was our child, or it stays a zombie
        stat = proc_stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[1] == self.start_ticks

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrackedProcess:
        return cls(str(data["name"]), int(data["pid"]), int(data["start_ticks"]))


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces; the fields after it do not.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def spawn(
    name: str, argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None, log_mode: int = 0o600
) -> TrackedProcess:
    """Start ``argv`` detached, stdin from /dev/null, stdout and stderr appended to ``log_path``."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, log_mode),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # posix_spawn rather than Popen: the servers outlive a Popen object, which would warn.
    pid = os.posix_spawn(argv[0], list(argv), dict(env or os.environ), file_actions=actions, setsid=True)
    stat = proc_stat(pid)
    return TrackedProcess(name, pid, stat[1] if stat else 0)


def stop(process: TrackedProcess, timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; True once it is gone (already gone is fine)."""
    if not process.running():
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    if wait_gone(process, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    return wait_gone(process, 5.0)


def stop_all(processes: Sequence[TrackedProcess], timeout: float) -> None:
    """Signal every process first, then wait: N slow stoppers cost one timeout, not N."""
    alive = [p for p in processes if p.running()]
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.running() for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in alive:
        stop(process, 0.5)


def wait_gone(process: TrackedProcess, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
