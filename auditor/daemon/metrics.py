"""Prometheus metrics of the daemon, in a registry of its own (no process-global state).

Besides the audit's own series, the registry carries what an operator needs to run it: build
information (``mesh_auditor_build_info``), the process's CPU, memory and file descriptors
(prometheus-client's process and platform collectors, ``process_*`` and ``python_info``), and a
failed-write counter per sink (``mesh_auditor_sink_write_failures_total``), present at 0 for every
sink from the start so that an alert rule can use ``increase()`` without a missing series. For
``sink="slack"`` one failed delivery attempt counts once (``auditor.daemon.sinks.CountingNotifier``);
Slack's own series (``mesh_auditor_slack_*``) break deliveries down by result and drops by reason.
"""

from __future__ import annotations

import platform
from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from auditor import __version__
from auditor.core.model import Finding, Property, Status
from auditor.core.probing.probeplan import RunPlan
from auditor.core.probing.probereport import RunReport

NO_RESULT = "no-result"  # the request's batch has no observation of it (pod never ran, report unusable or cut)

# Every place the daemon writes results to; a failed write counts under one of these names.
SINKS = ("slack", "s3", "securityhub", "cloudwatch", "policyreports")


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
        self.probe_endpoints = Gauge(
            "mesh_auditor_probe_endpoints",
            "Ready endpoints of protected Services (state=ready), and those the last probe cycle addressed by "
            "pod IP (state=probed; bounded by probes.endpoints_per_cycle, rotating fairly)",
            ["state"],
            registry=self.registry,
        )
        for state in ("ready", "probed"):
            self.probe_endpoints.labels(state).set(0)
        self.probe_outcomes = Counter(
            "mesh_auditor_probe_outcomes_total",
            f"Probe requests by what their probe observed (probes.wire.Outcome), or {NO_RESULT} when their"
            " probe pod brought none back",
            ["outcome"],
            registry=self.registry,
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
        self.build_info = Gauge(
            "mesh_auditor_build_info",
            "Always 1; the labels say which build runs",
            ["version", "python_version"],
            registry=self.registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.sink_write_failures = Counter(
            "mesh_auditor_sink_write_failures_total",
            "Writes to a sink that failed (the sink retries or the next cycle writes again)",
            ["sink"],
            registry=self.registry,
        )
        for sink in SINKS:
            self.sink_write_failures.labels(sink)
        # process_* (CPU seconds, resident memory, open fds, start time) and python_info.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def sink_write_failed(self, sink: str) -> None:
        """Count one failed write to ``sink`` (one of ``SINKS``)."""
        self.sink_write_failures.labels(sink).inc()

    def record_findings(self, findings: Sequence[Finding]) -> None:
        counts = Tally((f.property.value, f.status.value, f.method.value) for f in findings)
        for prop in Property:
            for status in Status:
                for method in ("static", "probe"):
                    self.findings.labels(prop.value, status.value, method).set(
                        counts.get((prop.value, status.value, method), 0)
                    )

    def record_probe_report(self, plan: RunPlan, report: RunReport) -> None:
        """One increment of ``mesh_auditor_probe_outcomes_total`` per request of ``plan``; the
        endpoint coverage of the run (``mesh_auditor_probe_endpoints``, #13)."""
        self.probe_endpoints.labels("ready").set(sum(c.ready for c in plan.coverage.values()))
        self.probe_endpoints.labels("probed").set(sum(c.probed for c in plan.coverage.values()))
        for batch in plan.batches:
            reported = report.batch(batch.key)
            observations = reported.observations if reported is not None else {}
            for request in batch.requests:
                seen = observations.get(request.id)
                self.probe_outcomes.labels(seen.outcome.value if seen is not None else NO_RESULT).inc()

    def slack_delivery(self, kind: str, result: str, error: str) -> None:
        self.slack_deliveries.labels(kind, result, error[:64]).inc()
        if result == "drop":
            self.outbox_dropped.labels(error[:64] or "unknown").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
