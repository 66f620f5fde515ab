"""Ports: every seam between the auditor's logic and the outside world, in one place.

Each port is a ``typing.Protocol`` (or, for a single function, a ``Callable`` alias) that an
adapter implements; the composition root (``auditor.app``) chooses the adapters and injects
them; fakes for unit tests live in ``testrigs.fakes`` and are checked against these Protocols
by mypy. Times are ``datetime`` values in UTC or epoch seconds, durations are seconds (the
``_s`` suffix), and each port says what it raises: a port that talks to a remote service says
which failures it turns into values rather than raising. The ports import only the core's
types (and ``datetime``, which the pure core itself never imports): they sit between the core
and the adapters.

Who uses which:

- ``auditor check``: ``SecretLookup`` (header values), ``ProbeRunner`` (``--active``).
- ``auditor daemon`` (``auditor.daemon.service``): ``WatchedSnapshot``, ``Elector``,
  ``StateStore``, ``Notifier``, ``ReportSink``, ``ProbeCycle``, ``ExtraFindings``; its sinks
  (``auditor.daemon.sinks``) write through ``PolicyReportWriter``, ``EvidenceArchive``,
  ``FindingsHub`` and ``CycleMetrics``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from auditor.core.alerting.outbox import Delivery, Entry
from auditor.core.model import Finding
from auditor.core.posture import Posture
from auditor.core.probing.probeplan import RunPlan
from auditor.core.probing.probereport import RunReport
from auditor.core.snapshot import Snapshot
from auditor.report import AuditReport

# --- reading the cluster -----------------------------------------------------------------------


class WatchedSnapshot(Protocol):
    """The cluster's objects, kept current by watches (``auditor.adapters.k8s.watcher``).

    ``snapshot`` returns the current ``Snapshot`` at once, never blocking on the API; while a
    watch is not in sync (not yet listed, or relisting after an error) the snapshot carries a
    ``ReadProblem`` per such resource in ``Snapshot.problems``, and the daemon audits nothing
    from it. ``wait_synced`` blocks up to ``timeout`` seconds; True once every watch has listed.
    ``stop`` waits up to ``timeout`` seconds for the watch threads. Nothing here raises for
    what the API server does: its errors become ``problems``.
    """

    def start(self) -> None:
        """Starts the watch threads (one list-then-watch per resource); returns at once."""

    def stop(self, timeout: float = 2.0) -> None:
        """Stops the watches, waiting up to ``timeout`` seconds for their threads. Never raises."""

    def snapshot(self) -> Snapshot:
        """The current ``Snapshot``, at once; unsynced resources are ``ReadProblem``s. Never raises."""

    def wait_synced(self, timeout: float) -> bool:
        """Blocks up to ``timeout`` seconds; True once every watch has listed, False on timeout. Never raises."""


SecretLookup = Callable[[str, str, str], str | None]
"""``(namespace, name, key) -> value``: one key of one Secret (a required header's value from a
``secretRef``), decoded as UTF-8; ``None`` when the Secret or key is absent or unreadable (the
finding is then INCONCLUSIVE and ``unresolved_sources`` names the Secret). Never raises."""


# --- active probing ----------------------------------------------------------------------------


class ProbeRunner(Protocol):
    """Sends a plan's batches (one probe pod per batch) and reports what each one observed.

    Takes a ``RunPlan`` (``auditor.core.probing.probeplan``); returns a ``RunReport`` with one
    ``BatchReport`` or ``BatchProblem`` per batch. Must not raise for anything the cluster does
    (refusals, capacity, deadlines): those become ``BatchProblem``s in the report, so that the
    verdicts can say what was not proven.
    """

    def run(self, plan: RunPlan) -> RunReport:
        """Runs every batch of ``plan``; returns one ``BatchReport`` or ``BatchProblem`` per batch. Never raises for
        what the cluster does.
        """


ProbeCycle = Callable[
    [Snapshot, Posture, Mapping[tuple[str, str], str | None], tuple[Finding, ...]], tuple[Finding, ...]
]
"""``(snapshot, posture, header values, static findings) -> findings``: one active-probing cycle
of the daemon; returns the static findings plus the probe verdicts (``method: probe``), sorted.
Header values are keyed by ``(target, header name)``. Never raises for the cluster's answers
(see ``ProbeRunner``)."""

ExtraFindings = Callable[[], tuple[Finding, ...]]
"""Findings that come from outside the snapshot (the EKS Auto Mode check), added to every static
audit. Never raises: a failed look-up is an ERROR finding."""


# --- the daemon's leadership and state ---------------------------------------------------------


class Elector(Protocol):
    """Leader election through a Lease (``auditor.adapters.k8s.lease``).

    ``try_acquire_or_renew``: True while this replica holds the Lease (acquired or renewed now);
    False when another holder's Lease is still valid or the API could not be reached (then
    ``last_error`` says why; None when the API answered). ``release`` gives the Lease up (best
    effort, never raises). ``duration_s``: the Lease duration in seconds; a standby may take
    over that long after the last successful renewal.
    """

    @property
    def duration_s(self) -> float:
        """The Lease duration, in seconds."""

    @property
    def last_error(self) -> str | None:
        """Why the last attempt could not reach the API; None when the API answered."""

    def try_acquire_or_renew(self) -> bool:
        """True while this replica holds the Lease (acquired or renewed now); False otherwise. Never raises."""

    def release(self) -> None:
        """Gives the Lease up, best effort. Never raises."""


class StateConflict(Exception):  # noqa: N818 - a condition to act on (stop writing), not a bug
    """A state store's write was refused: someone else wrote the state since it was read."""


class CorruptState(Exception):  # noqa: N818 - a condition to act on (set it aside), not a bug
    """A stored state cannot be decoded (not base64, not gzip, not JSON, wrong shape or version)."""


class StateStore(Protocol):
    """The leader's persisted drift book and outbox (``auditor.adapters.k8s.state``: a ConfigMap).

    ``load`` returns the stored JSON document (``{}`` when none is stored yet) and raises
    ``CorruptState`` for one that cannot be decoded, any other exception when it cannot be read.
    ``save`` stores a JSON-serialisable document conditionally on what was last read or written
    and raises ``StateConflict`` when another writer changed it since (this replica is fenced
    off), any other exception when it cannot be written. ``set_aside`` keeps the undecodable
    state under a new name for an operator (``reason``: why; ``now``: UTC) and returns that name.
    """

    def load(self) -> dict[str, Any]:
        """The stored JSON document (``{}`` when none yet); raises ``CorruptState`` when it cannot be decoded."""

    def save(self, document: dict[str, Any]) -> None:
        """Stores ``document`` if nobody wrote since the last read or write; raises ``StateConflict`` otherwise."""

    def set_aside(self, reason: str, now: dt.datetime) -> str:
        """Keeps the undecodable state under a new name (``reason``: why; ``now``: UTC); returns that name."""


# --- alerting ----------------------------------------------------------------------------------


class Notifier(Protocol):
    """Sends one outbox ``Entry`` to Slack (``auditor.adapters.slack.notifier``).

    ``threads`` maps an incident key to the ``ts`` of its alert message (the thread to reply in
    or the message to update). One call is one attempt: the answer is a ``Delivery`` saying what
    it came to (sent, retry, repost, text_only, drop; see ``auditor.core.alerting.outbox``). Never raises
    for what Slack or the network does: those are ``Delivery`` values.
    """

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        """Makes one attempt to send ``entry`` (``threads``: incident key -> message ``ts``); returns the
        ``Delivery``. Never raises for what Slack or the network does.
        """


# --- publishing every evaluated audit ----------------------------------------------------------


class ReportSink(Protocol):
    """Receives every evaluated audit of the daemon: an ``AuditReport`` whose ``run`` is always
    set (``RunRecord``: id, kind, UTC time, replica, cycle duration in seconds). May raise: the
    daemon logs a sink's error and goes on with the others."""

    def publish(self, report: AuditReport) -> None:
        """Publishes one evaluated audit (``report.run`` is set). May raise; the daemon logs it and goes on."""


class PolicyReportWriter(Protocol):
    """Applies wgpolicyk8s.io PolicyReports (dicts, one per namespace) and deletes the auditor's
    reports not among them; returns how many were written. Refusals are logged, never raised."""

    def write(self, reports: Sequence[Mapping[str, Any]]) -> int:
        """Applies ``reports`` (one PolicyReport dict per namespace), deletes stale ones; returns how many were
        written.
        """


class EvidenceArchive(Protocol):
    """Keeps one audit document (the JSON of ``auditor check --output json``) as evidence, under
    ``run_id`` and its UTC time ``at``; returns where it was stored (an S3 key). Raises on any
    failed write (the sink counts it)."""

    def put_run(self, document: Mapping[str, Any], run_id: str, at: dt.datetime) -> str:
        """Stores ``document`` under ``run_id`` and UTC time ``at``; returns its S3 key. Raises on a failed write."""


class FindingsHub(Protocol):
    """Imports findings into AWS Security Hub at UTC time ``now``; returns the ids it refused
    (each logged with its reason). Raises when the service cannot be reached. ``forget`` drops
    cached first-seen times (a new leader reloads the ones another leader wrote)."""

    def publish(self, findings: Sequence[Finding], now: dt.datetime) -> list[str]:
        """Imports ``findings`` at UTC time ``now``; returns the refused finding ids. Raises when unreachable."""

    def forget(self) -> None:
        """Drops the cached first-seen times. Never raises."""


class CycleMetrics(Protocol):
    """Puts one audit cycle's figures to CloudWatch: findings by property and status,
    ``alerts_open`` (count), ``duration_s`` (seconds; None for a publication that is no cycle),
    ``hub_refused`` (count). Raises on a failed write."""

    def put_cycle(
        self, findings: Sequence[Finding], *, alerts_open: int, duration_s: float | None, hub_refused: int = 0
    ) -> None:
        """Puts one cycle's figures (counts; ``duration_s`` in seconds or None). Raises on a failed write."""
