"""Fits a run's result into the Kubernetes termination message and writes it.

The kubelet keeps at most 4096 bytes of a container's termination message, which is how the
auditor reads results without log access. The full result always goes to stdout (``__main__``);
here it is written whole when it fits, else in the compact form of ``wire.CompactRunResult``
(id, outcome, status), else as many compact entries as fit with ``complete: false``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from probes.wire import CompactResult, CompactRunResult, RunResult

__all__ = ["TERMINATION_MESSAGE_LIMIT", "fit_termination_message", "write_termination_message"]

TERMINATION_MESSAGE_LIMIT = 4096


def fit_termination_message(result: RunResult, limit: int = TERMINATION_MESSAGE_LIMIT) -> bytes:
    """The largest faithful encoding of ``result`` that is at most ``limit`` bytes."""
    full = result.model_dump_json().encode()
    if len(full) <= limit:
        return full
    entries = tuple(CompactResult(id=r.id, outcome=r.outcome, status=r.evidence.status) for r in result.results)
    compact = _compact(result.run_id, entries, complete=True)
    if len(compact) <= limit:
        return compact
    return _compact(result.run_id, entries[: _most_that_fit(result.run_id, entries, limit)])


def write_termination_message(path: Path, result: RunResult, stderr: TextIO = sys.stderr) -> bool:
    """Write the fitted message to ``path``; on failure say so on ``stderr`` and return False."""
    try:
        path.write_bytes(fit_termination_message(result))
    except OSError as exc:
        print(
            f"probes: cannot write the termination message to {path} ({exc}); the full result is on stdout only",
            file=stderr,
        )
        return False
    return True


def _compact(run_id: str, entries: tuple[CompactResult, ...], complete: bool = False) -> bytes:
    message = CompactRunResult(run_id=run_id, truncated=True, complete=complete, results=entries)
    return message.model_dump_json().encode()


def _most_that_fit(run_id: str, entries: tuple[CompactResult, ...], limit: int) -> int:
    # The size grows with the count, so bisect for the largest prefix that fits. The plan caps
    # ids and run_id at 128 characters, so zero entries always fit.
    low, high = 0, len(entries)
    while low < high:
        middle = (low + high + 1) // 2
        if len(_compact(run_id, entries[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return low
