"""Findings to AWS Security Hub as ASFF, with stable ids so an alert is one finding over time.

Id = ``mesh-auditor/<cluster>/<check id>/<target>`` (the drift fingerprint), so re-imports update
the same finding; a passing check marks it ``RESOLVED`` with compliance ``PASSED``. Findings that
could not be proven are ``WARNING``/``NOT_AVAILABLE``, never ``PASSED``. Imports go in batches
of 100 (the API's limit) and failed entries are reported, not dropped silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from auditor.core.model import Finding, Status

BATCH = 100
_COMPLIANCE = {
    Status.PASS: "PASSED",
    Status.FAIL: "FAILED",
    Status.ERROR: "NOT_AVAILABLE",
    Status.INCONCLUSIVE: "WARNING",
    Status.SKIPPED: "NOT_AVAILABLE",
}
_SEVERITY = {"critical": "CRITICAL", "high": "HIGH", "medium": "MEDIUM", "low": "LOW"}


@dataclass(frozen=True, slots=True)
class HubOptions:
    account_id: str
    region: str
    cluster: str


def asff(finding: Finding, options: HubOptions, now: dt.datetime) -> dict[str, Any]:
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    meta = finding.check
    passed = finding.status is Status.PASS
    return {
        "SchemaVersion": "2018-10-08",
        "Id": f"mesh-auditor/{options.cluster}/{meta.id}/{finding.target}",
        "ProductArn": f"arn:aws:securityhub:{options.region}:{options.account_id}:product/{options.account_id}/default",
        "GeneratorId": f"mesh-auditor/{meta.id}",
        "AwsAccountId": options.account_id,
        "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
        "CreatedAt": stamp,
        "UpdatedAt": stamp,
        "Severity": {"Label": "INFORMATIONAL" if passed else _SEVERITY[meta.severity.value]},
        "Title": f"{meta.title} ({finding.target})"[:256],
        "Description": finding.message[:1024],
        "Remediation": {"Recommendation": {"Text": meta.remediation[:512]}},
        "Resources": [{"Type": "Other", "Id": f"k8s://{options.cluster}/{finding.target}", "Region": options.region}],
        "Compliance": {"Status": _COMPLIANCE[finding.status]},
        "Workflow": {"Status": "RESOLVED" if passed else "NEW"},
        "RecordState": "ACTIVE",
        "ProductFields": {"mesh-auditor/property": finding.property.value, "mesh-auditor/method": finding.method.value},
    }


class SecurityHubSink:
    def __init__(self, hub: Any, options: HubOptions) -> None:
        self._hub = hub
        self._options = options

    def publish(self, findings: Sequence[Finding], now: dt.datetime) -> list[str]:
        """Import every finding; returns the ids Security Hub refused (with its reasons logged by the caller)."""
        refused: list[str] = []
        for batch in _batches([asff(f, self._options, now) for f in findings]):
            answer = self._hub.batch_import_findings(Findings=batch)
            refused += [item["Id"] for item in answer.get("FailedFindings", [])]
        return refused


def _batches(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]
