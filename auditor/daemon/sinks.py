"""Report sinks the daemon publishes every evaluated audit to.

``DirectorySink`` keeps the JSON audit documents (the archive ``auditor report`` renders) and a
rolling history for the HTML report's per-target strips. AWS sinks wrap the adapters in
``auditor.adapters.aws`` (enabled only when configured).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from auditor.core.model import Finding
from auditor.render.document import audit_document
from auditor.render.html import HistoryPoint, render_html
from auditor.render.policyreport import policy_reports


class DirectorySink:
    def __init__(self, directory: Path, *, keep: int = 500) -> None:
        self._directory = directory
        self._keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def publish(self, findings: Sequence[Finding], run: Mapping[str, Any]) -> None:
        document = audit_document(tuple(findings), inputs={"mode": "daemon"})
        document["run"] = dict(run)
        name = re.sub(r"[^0-9A-Za-z]+", "-", str(run["at"])).strip("-") + f"-{run['kind']}.json"
        _atomic_write(self._directory / name, json.dumps(document, sort_keys=True))
        self._prune()

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self._directory.glob("*.json"))]

    def render_latest_html(self) -> str:
        documents = self.documents()
        history = [HistoryPoint(str(d["run"]["at"]), d["summary"]["by_target"]) for d in documents]
        return render_html(documents[-1], history)

    def _prune(self) -> None:
        files = sorted(self._directory.glob("*.json"))
        for old in files[: max(0, len(files) - self._keep)]:
            old.unlink()


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # atomic on POSIX: readers never see half a report


class PolicyReportSink:
    """PolicyReports per namespace, so policy dashboards show the promises beside admission results."""

    def __init__(self, writer: PolicyReportWriterLike) -> None:
        self._writer = writer

    def publish(self, findings: Sequence[Finding], run: Mapping[str, Any]) -> None:
        at = dt.datetime.fromisoformat(str(run["at"]))
        self._writer.write(
            policy_reports(findings, run_id=str(run.get("id", run["at"])), timestamp=int(at.timestamp()))
        )


class PolicyReportWriterLike(Protocol):
    def write(self, reports: Sequence[Mapping[str, Any]]) -> int: ...


class AwsSink:
    """S3 archive, Security Hub and CloudWatch, each only when configured (None = off)."""

    def __init__(
        self, *, archive: Any = None, hub: Any = None, metrics: Any = None, alerts_open: Callable[[], int] = lambda: 0
    ) -> None:
        self._archive, self._hub, self._metrics, self._alerts_open = archive, hub, metrics, alerts_open

    def became_leader(self) -> None:
        """Security Hub's sink reloads first-seen times another leader may have written."""
        if self._hub is not None:
            self._hub.forget()

    def publish(self, findings: Sequence[Finding], run: Mapping[str, Any]) -> None:
        at = dt.datetime.fromisoformat(str(run["at"]))
        if self._archive is not None:
            document = audit_document(tuple(findings), inputs={"mode": "daemon"})
            document["run"] = dict(run)
            self._archive.put_run(document, str(run.get("id", at.strftime("%H%M%S"))), at)
        refused = 0
        if self._hub is not None:
            refused = len(self._hub.publish(findings, at))  # each one is logged with its reason by the hub sink
        if self._metrics is not None:
            self._metrics.put_cycle(
                findings,
                alerts_open=self._alerts_open(),
                duration_s=float(run.get("duration_s", 0.0)),
                hub_refused=refused,
            )
