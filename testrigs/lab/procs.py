"""Processes the lab starts inside its network namespaces, recorded so any later command can stop them.

Role: ``lab.py`` starts each pod's app and proxy through ``ip netns exec`` (which also bind-mounts
the pod's ``/etc/netns/<ns>/hosts`` and ``resolv.conf``), detached in their own session so a
``lab up`` command can exit and leave them running, and records ``Proc`` (pid plus the kernel's
start time, so a recycled pid is never signalled). ``stop`` is TERM, then KILL, bounded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from testrigs.devtools import processes
from testrigs.devtools.processes import TrackedProcess

IP = "/usr/sbin/ip"
STOP_TIMEOUT_S = 5.0


# The lab's processes are the shared tracked processes (testrigs/devtools/processes.py).
Proc = TrackedProcess


def spawn_in_netns(
    name: str, netns: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Proc:
    """Start ``argv`` inside ``netns`` (via ip netns exec), output appended to ``log_path``."""
    return processes.spawn(name, [IP, "netns", "exec", netns, *argv], log_path, env=env, log_mode=0o644)


def spawn(name: str, argv: Sequence[str], log_path: Path) -> Proc:
    """Start ``argv`` in the caller's namespaces, detached (the translator daemon)."""
    return processes.spawn(name, argv, log_path, log_mode=0o644)


def stop(proc: Proc, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; a process already gone is fine."""
    processes.stop(proc, timeout)


def stop_all(procs: Sequence[Proc], timeout: float = STOP_TIMEOUT_S) -> None:
    processes.stop_all(procs, timeout)


def netns_pids(netns: str) -> list[int]:
    """Pids of every process inside a namespace the lab created (ip netns pids)."""
    result = subprocess.run([IP, "netns", "pids", netns], capture_output=True, text=True, check=False, timeout=10)
    return [int(word) for word in result.stdout.split() if word.isdigit()]
