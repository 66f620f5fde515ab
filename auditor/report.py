"""What every renderer and every report sink takes: an ``AuditReport`` (findings, the inputs that
produced them, and, for the daemon's audits, the ``RunRecord`` saying which run it was).

``auditor check`` builds one from its audit; the daemon from each evaluated audit; ``auditor
report`` from a stored JSON document (``auditor.render.document.report_from_document``). The
renderers (``auditor.render``) turn one into a table, Markdown, JUnit, JSON, HTML or
PolicyReports, so every output of one audit says the same. Values only: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auditor.core.model import Finding


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One audit run of the daemon.

    ``id``: unique per run (``<UTC time>-<kind>``); ``kind``: ``static``, ``probe`` or
    ``daily-report``; ``at``: when the run was evaluated (timezone-aware, UTC); ``replica``: the
    daemon replica (its identity) that ran it; ``duration_s``: seconds from the start of the
    audit cycle to the evaluated audit, None for a publication that is no cycle (the daily
    report). Stored in audit documents as ``run`` (``as_dict``; ``at`` as ISO 8601).
    """

    id: str
    kind: str
    at: dt.datetime
    replica: str
    duration_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``id``, ``kind``, ``at`` (ISO 8601), ``replica`` and, for a cycle,
        ``duration_s``, in that order."""
        stored: dict[str, Any] = {"id": self.id, "kind": self.kind, "at": self.at.isoformat(), "replica": self.replica}
        if self.duration_s is not None:
            stored["duration_s"] = self.duration_s
        return stored

    @staticmethod
    def from_dict(stored: Mapping[str, Any]) -> RunRecord:
        """The inverse of ``as_dict``. Raises ``KeyError`` (a field missing), ``ValueError`` (``at``
        not ISO 8601, ``duration_s`` not a number) or ``TypeError`` (a field of the wrong type)."""
        if not isinstance(stored, Mapping):
            raise TypeError(f"run is a {type(stored).__name__}, not an object")
        duration = stored.get("duration_s")
        return RunRecord(
            id=str(stored["id"]),
            kind=str(stored["kind"]),
            at=dt.datetime.fromisoformat(str(stored["at"])),
            replica=str(stored["replica"]),
            duration_s=None if duration is None else float(duration),
        )


@dataclass(frozen=True, slots=True)
class AuditReport:
    """One audit as every renderer takes it.

    ``findings``: sorted (``Finding.sort_key``); ``inputs``: JSON-like description of what was
    audited (``mode``: offline, live or daemon; files, kubeconfig, rules, posture names ...),
    shown in the JSON summary; ``run``: the daemon's run, None for ``auditor check``.
    """

    findings: tuple[Finding, ...]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    run: RunRecord | None = None

    @property
    def semantics_line(self) -> str:
        """The line saying which Istio version's semantics the audit applied and which istiod
        versions it found (``inputs["istio_semantics"]["line"]``, written by
        ``auditor.core.istioversion.Semantics.as_dict``); empty when the inputs do not say."""
        semantics = self.inputs.get("istio_semantics")
        return str(semantics.get("line", "")) if isinstance(semantics, Mapping) else ""
