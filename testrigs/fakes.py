"""Fakes for the auditor's own seams (the ports of ``auditor.ports``), for tests of the
core and the daemon; mypy checks each against its port (the block at the end).

Each fake does the smallest honest thing and records what it was asked; the ones that must
not be used by a test raise (the "must not be called" default), so a test cannot pass by
accident through a path it did not mean to take.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from auditor.core.alerting.outbox import Delivery, Entry, EntryKind
from auditor.core.snapshot import Snapshot
from auditor.ports import Elector, Notifier, ReportSink, StateStore, WatchedSnapshot
from auditor.report import AuditReport


@dataclass
class FakeSnapshots:
    """A snapshot source whose snapshot the test sets; ``changed`` tells the daemon about it."""

    current: Snapshot = field(default_factory=Snapshot)
    on_change: Callable[[], None] | None = None
    started: bool = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 2.0) -> None:
        self.started = False

    def snapshot(self) -> Snapshot:
        return self.current

    def wait_synced(self, timeout: float) -> bool:
        return True

    def replace(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        if self.on_change is not None:
            self.on_change()


@dataclass
class FakeElector:
    leading: bool = True
    released: int = 0
    duration_s: float = 15.0
    last_error: str | None = None

    def try_acquire_or_renew(self) -> bool:
        return self.leading

    def release(self) -> None:
        self.released += 1


@dataclass
class MemoryStateStore:
    """Keeps the last saved document, as JSON-like data (so nothing is shared by reference)."""

    document: dict[str, Any] = field(default_factory=dict)
    saves: int = 0

    set_aside_as: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    raw: Any = None  # when set, what ``load`` finds instead of a document (a corrupt state)

    def load(self) -> dict[str, Any]:
        if isinstance(self.raw, Exception):
            raise self.raw
        return _copy(self.document if self.raw is None else self.raw)

    def save(self, document: dict[str, Any]) -> None:
        self.document = _copy(document)
        self.raw = None
        self.saves += 1

    def set_aside(self, reason: str, now: dt.datetime) -> str:
        self.set_aside_as.append((reason, self.raw))
        return f"state-corrupt-{len(self.set_aside_as)}"


def _copy(document: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(document))
    return copied


@dataclass
class RecordingNotifier:
    """Answers every entry "sent" and records ``kind: text``, like a healthy Slack; ``failures``
    maps an entry kind to the ``Delivery`` to answer instead (e.g. a permanent Slack error)."""

    sent: list[str] = field(default_factory=list)
    failures: dict[EntryKind, Delivery] = field(default_factory=dict)
    attempts: int = 0

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        self.attempts += 1
        if entry.kind in self.failures:
            return self.failures[entry.kind]
        self.sent.append(f"{entry.kind.value}: {entry.payload['text']}")
        return Delivery("sent", ts=f"{len(self.sent)}.0")


@dataclass
class RecordingSink:
    runs: list[AuditReport] = field(default_factory=list)

    def publish(self, report: AuditReport) -> None:
        self.runs.append(report)


class MustNotBeCalled:
    """A stand-in for a dependency the code under test must not touch."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        raise AssertionError(f"{self._name}.{attribute} must not be used here")


if TYPE_CHECKING:  # each fake has its port's shape (checked by mypy, never run)
    _snapshots: WatchedSnapshot = FakeSnapshots()
    _elector: Elector = FakeElector()
    _state: StateStore = MemoryStateStore()
    _notifier: Notifier = RecordingNotifier()
    _sink: ReportSink = RecordingSink()
