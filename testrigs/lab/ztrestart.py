"""The ``ztunnel-restart`` fault: ztunnel restarted every PERIOD seconds, as a rollout or a crash would.

Role: on the real-ztunnel node (``realnode``) this supervisor is the recorded ``ztunnel``
process when the fault is on. It runs ztunnel as its child in the node's namespace, and every
``--period`` seconds stops it (SIGTERM, ztunnel's graceful shutdown, then SIGKILL after 5 s) and
starts a new one, which connects to the CNI agent again and is handed every pod (ZDS snapshot).
An audit running meanwhile sees connections refused or reset for the restart window. The child's
pid and the restart count go to ``--status`` (JSON) for ``real-status``. SIGTERM to the supervisor
stops the child and exits. ``python -m testrigs.lab.ztrestart --period S --status F -- ARGV...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

STOP_TIMEOUT_S = 5.0


def _write_status(path: Path, pid: int, restarts: int) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": pid, "restarts": restarts}))
    temporary.replace(path)


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def supervise(argv: Sequence[str], period: float, status: Path) -> int:
    """Run ``argv``, restart it every ``period`` seconds until SIGTERM; returns 0."""
    stopping = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    restarts = 0
    while not stopping.is_set():
        child = subprocess.Popen(list(argv))
        _write_status(status, child.pid, restarts)
        # Event.wait returns early on SIGTERM (the handler sets it); a child that dies is restarted too.
        waited = 0.0
        while not stopping.is_set() and waited < period and child.poll() is None:
            stopping.wait(0.2)
            waited += 0.2
        _stop(child)
        restarts += 1
        print(f"ztrestart: stopped ztunnel pid {child.pid} (restart {restarts})", flush=True)
    with contextlib.suppress(OSError):
        status.unlink()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testrigs.lab.ztrestart", description=__doc__)
    parser.add_argument("--period", type=float, required=True, help="seconds between restarts")
    parser.add_argument("--status", type=Path, required=True, help="JSON file: the child's pid, restarts")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.period <= 0:
        parser.error("a positive --period and a command after -- are required")
    return supervise(command, args.period, args.status)


if __name__ == "__main__":
    sys.exit(main())
