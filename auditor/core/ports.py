"""Ports: what the core needs from the outside world, as Protocols that adapters implement.

Fakes for them live in ``auditor.testing``; the composition root (``auditor.app``) chooses the
real adapters.
"""

from __future__ import annotations

from typing import Protocol

from auditor.core.snapshot import Snapshot


class SnapshotSource(Protocol):
    """Produces the current snapshot: from manifest files, a one-shot cluster read, or a watch."""

    def snapshot(self) -> Snapshot: ...


class SecretReader(Protocol):
    """Reads one key of one Secret (a required header's value); ``None`` when absent."""

    def secret_value(self, namespace: str, name: str, key: str) -> str | None: ...
