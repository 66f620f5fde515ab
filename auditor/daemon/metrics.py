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

    def record_findings(self, findings: Sequence[Finding]) -> None:
        counts = Tally((f.property.value, f.status.value, f.method.value) for f in findings)
        for prop in Property:
            for status in Status:
                for method in ("static", "probe"):
                    self.findings.labels(prop.value, status.value, method).set(
                        counts.get((prop.value, status.value, method), 0)
                    )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
