"""Prometheus metrics of the daemon, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from auditor.core.model import Finding, Property, Status


class DaemonMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.findings = Gauge(
            "mesh_auditor_findings",
            "Findings of the last audit",
            ["property", "status", "method"],
            registry=self.registry,
        )
        self.cycle_seconds = Histogram(
            "mesh_auditor_cycle_duration_seconds",
            "Duration of audit cycles",
            ["kind"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.probe_outcomes = Counter(
            "mesh_auditor_probe_outcomes_total", "Probe request outcomes", ["outcome"], registry=self.registry
        )
        self.alerts_open = Gauge("mesh_auditor_alerts_open", "Drift alerts currently open", registry=self.registry)
        self.last_success = Gauge(
            "mesh_auditor_last_success_timestamp_seconds",
            "End of the last successful cycle",
            ["kind"],
            registry=self.registry,
        )
        self.cycles_skipped = Counter(
            "mesh_auditor_cycles_skipped_total",
            "Cycles skipped because the previous one still ran",
            ["kind"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "mesh_auditor_leader", "1 while this replica holds the leader lease", registry=self.registry
        )
        # Slack delivery and the daemon's own state (issue #10 items 2 and 3).
        self.slack_deliveries = Counter(
            "mesh_auditor_slack_deliveries_total",
            "Slack calls by entry kind, result (sent, retry, repost, text_only, drop) and Slack error code",
            ["kind", "result", "error"],
            registry=self.registry,
        )
        self.outbox_dropped = Counter(
            "mesh_auditor_slack_outbox_dropped_total",
            "Outbox entries dropped unsent, by reason (outbox-full or Slack's error code)",
            ["reason"],
            registry=self.registry,
        )
        self.outbox_unsent = Gauge(
            "mesh_auditor_slack_outbox_unsent", "Outbox entries not yet delivered", registry=self.registry
        )
        self.state_resets = Counter(
            "mesh_auditor_state_resets_total",
            "Times a corrupt state ConfigMap was set aside and the daemon started from empty state",
            registry=self.registry,
        )

    def record_findings(self, findings: Sequence[Finding]) -> None:
        counts = Tally((f.property.value, f.status.value, f.method.value) for f in findings)
        for prop in Property:
            for status in Status:
                for method in ("static", "probe"):
                    self.findings.labels(prop.value, status.value, method).set(
                        counts.get((prop.value, status.value, method), 0)
                    )

    def slack_delivery(self, kind: str, result: str, error: str) -> None:
        self.slack_deliveries.labels(kind, result, error[:64]).inc()
        if result == "drop":
            self.outbox_dropped.labels(error[:64] or "unknown").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
