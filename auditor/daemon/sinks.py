"""Report sinks the daemon publishes every evaluated audit to.

``DirectorySink`` keeps the JSON audit documents (the archive ``auditor report`` renders) and a
rolling history for the HTML report's per-target strips. AWS sinks wrap the adapters in
``auditor.adapters.aws`` (enabled only when configured).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from auditor.core.alerting.outbox import Delivery, Entry
from auditor.ports import CycleMetrics, EvidenceArchive, FindingsHub, Notifier, PolicyReportWriter
from auditor.render.document import audit_document, report_from_document
from auditor.render.html import HistoryPoint, render_html
from auditor.render.policyreport import policy_reports
from auditor.report import AuditReport, RunRecord


class DirectorySink:
    def __init__(self, directory: Path, *, keep: int = 500) -> None:
        self._directory = directory
        self._keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def publish(self, report: AuditReport) -> None:
        run = _run_of(report)
        document = audit_document(report)
        name = re.sub(r"[^0-9A-Za-z]+", "-", run.at.isoformat()).strip("-") + f"-{run.kind}.json"
        _atomic_write(self._directory / name, json.dumps(document, sort_keys=True))
        self._prune()

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self._directory.glob("*.json"))]

    def render_latest_html(self) -> str:
        documents = self.documents()
        history = [HistoryPoint(str(d["run"]["at"]), d["summary"]["by_target"]) for d in documents]
        return render_html(report_from_document(documents[-1]), history)

    def _prune(self) -> None:
        files = sorted(self._directory.glob("*.json"))
        for old in files[: max(0, len(files) - self._keep)]:
            old.unlink()


def _run_of(report: AuditReport) -> RunRecord:
    if report.run is None:
        raise ValueError("a daemon sink publishes runs: the report has no RunRecord")
    return report.run


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # atomic on POSIX: readers never see half a report


# Called with a sink's name (auditor.daemon.metrics.SINKS) when a write to it raised.
OnFailure = Callable[[str], None]


def _ignore(_sink: str) -> None:
    return None


@contextlib.contextmanager
def _counted(sink: str, on_failure: OnFailure) -> Iterator[None]:
    """Report a write that raised to ``on_failure``, then let the error go on as before."""
    try:
        yield
    except Exception:
        on_failure(sink)
        raise


class PolicyReportSink:
    """PolicyReports per namespace, so policy dashboards show the promises beside admission results."""

    def __init__(self, writer: PolicyReportWriter, *, on_failure: OnFailure = _ignore) -> None:
        self._writer = writer
        self._on_failure = on_failure

    def publish(self, report: AuditReport) -> None:
        reports = policy_reports(report)
        with _counted("policyreports", self._on_failure):
            self._writer.write(reports)


class AwsSink:
    """S3 archive, Security Hub and CloudWatch, each only when configured (None = off)."""

    def __init__(
        self,
        *,
        archive: EvidenceArchive | None = None,
        hub: FindingsHub | None = None,
        metrics: CycleMetrics | None = None,
        alerts_open: Callable[[], int] = lambda: 0,
        on_failure: OnFailure = _ignore,
    ) -> None:
        self._archive, self._hub, self._metrics, self._alerts_open = archive, hub, metrics, alerts_open
        self._on_failure = on_failure

    def became_leader(self) -> None:
        """Security Hub's sink reloads first-seen times another leader may have written."""
        if self._hub is not None:
            self._hub.forget()

    def publish(self, report: AuditReport) -> None:
        run, findings = _run_of(report), report.findings
        if self._archive is not None:
            with _counted("s3", self._on_failure):
                self._archive.put_run(audit_document(report), run.id, run.at)
        refused = 0
        if self._hub is not None:
            with _counted("securityhub", self._on_failure):
                refused = len(self._hub.publish(findings, run.at))  # each one is logged with its reason by the hub sink
            if refused:  # BatchImportFindings answered, but refused some findings: a failed write too
                self._on_failure("securityhub")
        if self._metrics is not None:
            with _counted("cloudwatch", self._on_failure):
                self._metrics.put_cycle(
                    findings,
                    alerts_open=self._alerts_open(),
                    duration_s=run.duration_s,
                    hub_refused=refused,
                )


# Slack's answers that delivered nothing in this attempt (auditor.core.alerting.outbox.Action): the entry
# is retried later (retry), sent again as a new post (repost) or as plain text (text_only), or
# given up (drop). "sent" (including an adopted earlier attempt) is the one success.
_FAILED_DELIVERIES = frozenset({"retry", "repost", "text_only", "drop"})


class CountingNotifier:
    """Wraps a Slack notifier: each failed delivery ATTEMPT is one failed Slack write.

    The daemon sends one outbox entry per ``deliver`` call (paced; ``auditor.daemon.service``) and
    retries or reposts it on later calls, so counting per attempt makes
    ``mesh_auditor_sink_write_failures_total{sink="slack"}`` rise for as long as Slack keeps
    failing, like the other sinks that fail once per cycle. An entry retried three times and then
    dropped counts 4. A ``deliver`` that raises counts once and the error goes on. Drops by reason
    are in ``mesh_auditor_slack_outbox_dropped_total``; every attempt by result in
    ``mesh_auditor_slack_deliveries_total``.
    """

    def __init__(self, inner: Notifier, on_failure: OnFailure) -> None:
        self._inner = inner
        self._on_failure = on_failure

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        with _counted("slack", self._on_failure):
            delivery = self._inner.deliver(entry, threads)
        if delivery.action in _FAILED_DELIVERIES:
            self._on_failure("slack")
        return delivery
