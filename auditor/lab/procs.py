"""Processes the lab starts inside its network namespaces, recorded so any later command can stop them.

Role: ``lab.py`` starts each pod's app and proxy through ``ip netns exec`` (which also bind-mounts
the pod's ``/etc/netns/<ns>/hosts`` and ``resolv.conf``), detached in their own session so a
``lab up`` command can exit and leave them running, and records ``Proc`` (pid plus the kernel's
start time, so a recycled pid is never signalled). ``stop`` is TERM, then KILL, bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

IP = "/usr/sbin/ip"
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Proc:
    """A process the lab started: identified by pid and start time (field 22 of /proc/pid/stat)."""

    name: str
    pid: int
    start_ticks: int

    def running(self) -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # reap if it was our child
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[1] == self.start_ticks

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Proc:
        return cls(str(data["name"]), int(data["pid"]), int(data["start_ticks"]))


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def spawn_in_netns(
    name: str, netns: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Proc:
    """Start ``argv`` inside ``netns`` (via ip netns exec), output appended to ``log_path``."""
    command = [IP, "netns", "exec", netns, *argv]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # setsid: the process must survive the command that started it (lab up) and ignore its Ctrl-C.
    pid = os.posix_spawn(IP, command, dict(env or os.environ), file_actions=actions, setsid=True)
    stat = _stat(pid)
    return Proc(name, pid, stat[1] if stat else 0)


def spawn(name: str, argv: Sequence[str], log_path: Path) -> Proc:
    """Start ``argv`` in the caller's namespaces, detached (the translator daemon)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawn(argv[0], list(argv), dict(os.environ), file_actions=actions, setsid=True)
    stat = _stat(pid)
    return Proc(name, pid, stat[1] if stat else 0)


def stop(proc: Proc, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; a process already gone is fine."""
    if not proc.running():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    if _wait_gone(proc, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    _wait_gone(proc, 5.0)


def stop_all(procs: Sequence[Proc], timeout: float = STOP_TIMEOUT_S) -> None:
    """Signal every process first, then wait: N slow stoppers cost one timeout, not N."""
    alive = [p for p in procs if p.running()]
    for proc in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.running() for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in alive:
        stop(proc, 0.5)


def _wait_gone(proc: Proc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc.running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def netns_pids(netns: str) -> list[int]:
    """Pids of every process inside a namespace the lab created (ip netns pids)."""
    result = subprocess.run([IP, "netns", "pids", netns], capture_output=True, text=True, check=False, timeout=10)
    return [int(word) for word in result.stdout.split() if word.isdigit()]
