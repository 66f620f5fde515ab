"""CloudWatch metrics for an audit cycle: findings by property and status, open alerts, duration, and
the findings Security Hub refused. Every datum has the dimension ``Cluster``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from auditor.core.model import Finding

NAMESPACE = "MeshAuditor"


class CloudWatchMetrics:
    """The ``CycleMetrics`` port on CloudWatch (``cloudwatch:PutMetricData``), dimension ``Cluster``."""

    def __init__(self, cloudwatch: Any, cluster: str) -> None:
        self._cloudwatch = cloudwatch
        self._cluster = cluster

    def put_cycle(
        self, findings: Sequence[Finding], *, alerts_open: int, duration_s: float | None, hub_refused: int = 0
    ) -> None:
        """Needs ``cloudwatch:PutMetricData`` in namespace ``NAMESPACE``; ``duration_s`` is the audit
        cycle's duration in seconds (``CycleDuration``; None for a publication that is no cycle, such
        as the daily report: no datum then, rather than a false 0); ``hub_refused`` is how many
        findings Security Hub refused in this cycle (``SecurityHubFindingsRefused``)."""
        counts = Counter((f.property.value, f.status.value) for f in findings)
        data: list[dict[str, Any]] = [
            self._datum("Findings", float(n), "Count", Property=prop, Status=status)
            for (prop, status), n in sorted(counts.items())
        ]
        data.append(self._datum("AlertsOpen", float(alerts_open), "Count"))
        if duration_s is not None:
            data.append(self._datum("CycleDuration", float(duration_s), "Seconds"))
        data.append(self._datum("SecurityHubFindingsRefused", float(hub_refused), "Count"))
        for start in range(0, len(data), 1000):  # PutMetricData takes at most 1000 data points
            self._cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + 1000])

    def _datum(self, name: str, value: float, unit: str, **dimensions: str) -> dict[str, Any]:
        dims = [{"Name": "Cluster", "Value": self._cluster}] + [{"Name": k, "Value": v} for k, v in dimensions.items()]
        return {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dims}
