"""Ports: what the core needs from the outside world, as Protocols that adapters implement.

Fakes for them live in ``testrigs.fakes``; the composition root (``auditor.app``) chooses the
real adapters.
"""

from __future__ import annotations

from typing import Protocol

from auditor.core.probeplan import RunPlan
from auditor.core.probereport import RunReport
from auditor.core.snapshot import Snapshot


class SnapshotSource(Protocol):
    """Produces the current snapshot: from manifest files, a one-shot cluster read, or a watch."""

    def snapshot(self) -> Snapshot: ...


class SecretReader(Protocol):
    """Reads one key of one Secret (a required header's value); ``None`` when absent."""

    def secret_value(self, namespace: str, name: str, key: str) -> str | None: ...


class ProbeRunner(Protocol):
    """Sends a plan's batches (one probe pod per batch) and reports what each one observed.

    Must not raise for anything the cluster does (refusals, capacity, deadlines): those become
    ``BatchProblem``s in the report, so that the verdicts can say what was not proven.
    """

    def run(self, plan: RunPlan) -> RunReport: ...


class StateConflict(Exception):  # noqa: N818 - a condition to act on (stop writing), not a bug
    """A state store's write was refused: someone else wrote the state since it was read."""


class CorruptState(Exception):  # noqa: N818 - a condition to act on (set it aside), not a bug
    """A stored state cannot be decoded (not base64, not gzip, not JSON, wrong shape or version)."""
