"""Findings to AWS Security Hub as ASFF, imported the way a finding provider must.

Id = ``mesh-auditor/<cluster>/<check id>/<target>`` (the drift fingerprint), so re-imports update
the same finding. The rules of ``BatchImportFindings`` for a provider (Security Hub user guide,
"Using BatchImportFindings to create and update findings" and "FindingProviderFields"):

* ``Workflow`` is sent only when a finding is created (``NEW``); after that it belongs to the
  analysts (``BatchUpdateFindings``), and Security Hub itself sets it back to ``NEW`` when an
  archived finding becomes active again.
* Severity and types of an existing finding change only through ``FindingProviderFields``; the
  top-level ``Severity``/``Types`` are sent only at creation.
* ``CreatedAt`` (and ``FirstObservedAt``) keep the time the finding was first seen, across
  restarts and leader changes: the sink loads its cluster's findings with ``GetFindings`` on its
  first publish, again once a day, and after ``forget()`` (the daemon calls it when its replica
  becomes leader).
* A check that passes again resolves its finding: ``Compliance.Status: PASSED`` and
  ``RecordState: ARCHIVED``. A pass that was never reported as failing is not imported at all.
  Findings that could not be proven are ``WARNING``/``NOT_AVAILABLE``, never ``PASSED``.
* The resource is the EKS cluster (``AwsEksCluster``, its ARN); the Kubernetes target, cluster,
  account and region are in ``ProductFields``, so one cross-region aggregator can hold a fleet.

Imports go in batches of 100 (the API's limit). Findings Security Hub refuses (``FailedFindings``)
are logged with Security Hub's reason and counted (``refused_total``), never dropped silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from auditor.core.model import Finding, Status

BATCH = 100
TYPES = ["Software and Configuration Checks/Industry and Regulatory Standards"]
_COMPLIANCE = {
    Status.PASS: "PASSED",
    Status.FAIL: "FAILED",
    Status.ERROR: "NOT_AVAILABLE",
    Status.INCONCLUSIVE: "WARNING",
    Status.SKIPPED: "NOT_AVAILABLE",
}
_SEVERITY = {"critical": "CRITICAL", "high": "HIGH", "medium": "MEDIUM", "low": "LOW"}
# Re-import an unchanged finding after this long, so Security Hub does not archive a finding that
# is still failing (it archives findings not updated for 90 days); reload first-seen times as often.
REFRESH = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class HubOptions:
    """The account, region and cluster every imported finding names (ARNs built from them)."""

    account_id: str
    region: str
    cluster: str

    @property
    def partition(self) -> str:
        """The AWS partition of ``region``: ``aws``, ``aws-cn`` or ``aws-us-gov``."""
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def product_arn(self) -> str:
        """The account's own default product: where a custom provider imports its findings."""
        return f"arn:{self.partition}:securityhub:{self.region}:{self.account_id}:product/{self.account_id}/default"

    @property
    def cluster_arn(self) -> str:
        """The EKS cluster's ARN, the resource every finding names."""
        return f"arn:{self.partition}:eks:{self.region}:{self.account_id}:cluster/{self.cluster}"


def finding_id(finding: Finding, options: HubOptions) -> str:
    """The stable ASFF ``Id`` of a finding: cluster, check and target (one per alert, updated in place)."""
    return f"mesh-auditor/{options.cluster}/{finding.check.id}/{finding.target}"


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _severity(finding: Finding) -> str:
    return "INFORMATIONAL" if finding.status is Status.PASS else _SEVERITY[finding.check.severity.value]


def _recommendation(finding: Finding) -> str:
    """This finding's own fix note first (its YAML is in the JSON report), then the check's advice;
    ASFF's Recommendation.Text holds 512 characters."""
    note = finding.fix.note
    return (f"{note} {finding.check.remediation}" if note else finding.check.remediation)[:512]


def asff(finding: Finding, options: HubOptions, *, now: str, created_at: str | None) -> dict[str, Any]:
    """The ASFF record for one finding: a creation when ``created_at`` is None, else an update.

    Times are ASFF timestamps (``YYYY-MM-DDTHH:MM:SS.000Z``). An update carries the first-seen
    ``created_at`` and no ``Workflow`` or top-level ``Severity``/``Types``.
    """
    meta = finding.check
    severity = _severity(finding)
    record: dict[str, Any] = {
        "SchemaVersion": "2018-10-08",
        "Id": finding_id(finding, options),
        "ProductArn": options.product_arn,
        "GeneratorId": f"mesh-auditor/{meta.id}",
        "AwsAccountId": options.account_id,
        "CreatedAt": created_at or now,
        "UpdatedAt": now,
        "FirstObservedAt": created_at or now,
        "LastObservedAt": now,
        "Title": f"{meta.title} ({finding.target})"[:256],
        "Description": finding.message[:1024] or meta.title[:1024],
        "Remediation": {"Recommendation": {"Text": _recommendation(finding)}},
        "FindingProviderFields": {"Severity": {"Label": severity, "Original": severity}, "Types": list(TYPES)},
        "Resources": [
            {
                "Type": "AwsEksCluster",
                "Id": options.cluster_arn,
                "Partition": options.partition,
                "Region": options.region,
                "Details": {"AwsEksCluster": {"Name": options.cluster, "Arn": options.cluster_arn}},
            }
        ],
        "Compliance": {"Status": _COMPLIANCE[finding.status]},
        "RecordState": "ARCHIVED" if finding.status is Status.PASS else "ACTIVE",
        "ProductFields": {
            "mesh-auditor/property": finding.property.value,
            "mesh-auditor/method": finding.method.value,
            "mesh-auditor/target": finding.target[:1024],
            "mesh-auditor/cluster": options.cluster,
            "mesh-auditor/account": options.account_id,
            "mesh-auditor/region": options.region,
        },
    }
    if created_at is None:
        record["Severity"] = {"Label": severity, "Original": severity}
        record["Types"] = list(TYPES)
        record["Workflow"] = {"Status": "NEW"}
    return record


class SecurityHubSink:
    """Imports findings; needs ``securityhub:BatchImportFindings`` and ``securityhub:GetFindings``."""

    def __init__(self, hub: Any, options: HubOptions) -> None:
        self._hub = hub
        self._options = options
        self._created: dict[str, str] = {}  # finding Id -> CreatedAt (first sight)
        self._sent: dict[str, tuple[tuple[str, str, str, str], dt.datetime]] = {}
        self._loaded_at: dt.datetime | None = None
        self.refused_total = 0
        self._log = structlog.get_logger("auditor.aws.securityhub")

    def publish(self, findings: Sequence[Finding], now: dt.datetime) -> list[str]:
        """Import what changed; returns the ids Security Hub refused (each logged with its reason).

        Raises botocore's ``ClientError`` when a call itself is refused (e.g. AccessDenied).
        """
        stamp = _stamp(now)
        latest = {finding_id(f, self._options): f for f in findings}
        if self._loaded_at is None or now - self._loaded_at >= REFRESH:
            self._load(now)
        records = []
        for identifier, finding in latest.items():
            created = self._created.get(identifier)
            if created is None and finding.status is Status.PASS:
                continue  # nothing to resolve: it was never reported as failing
            state = (_COMPLIANCE[finding.status], _severity(finding), finding.message, str(created))
            previous = self._sent.get(identifier)
            if previous is not None and previous[0] == state and now - previous[1] < REFRESH:
                continue
            records.append((asff(finding, self._options, now=stamp, created_at=created), state))
        refused: list[str] = []
        for batch in _batches(records):
            answer = self._hub.batch_import_findings(Findings=[record for record, _ in batch])
            failed = {item.get("Id", ""): item for item in answer.get("FailedFindings", [])}
            for identifier, item in failed.items():
                self._log.error(
                    "Security Hub refused a finding",
                    finding_id=identifier,
                    error_code=item.get("ErrorCode", ""),
                    error_message=item.get("ErrorMessage", ""),
                )
            refused += failed
            for record, state in batch:
                if record["Id"] not in failed:
                    self._created.setdefault(record["Id"], record["CreatedAt"])
                    self._sent[record["Id"]] = (state, now)
        self.refused_total += len(refused)
        return refused

    def forget(self) -> None:
        """Drop what this process knows, so the next publish reloads it (e.g. after a leader change)."""
        self._created.clear()
        self._sent.clear()
        self._loaded_at = None

    def _load(self, now: dt.datetime) -> None:
        """First-seen times of this cluster's findings, from Security Hub itself (one paged query)."""
        prefix = f"mesh-auditor/{self._options.cluster}/"
        filters = {
            "ProductArn": [{"Value": self._options.product_arn, "Comparison": "EQUALS"}],
            "Id": [{"Value": prefix, "Comparison": "PREFIX"}],
        }
        for page in self._hub.get_paginator("get_findings").paginate(Filters=filters, MaxResults=100):
            for stored in page.get("Findings", []):
                # Filter again: an answer that ignores a filter must not mix in other clusters.
                if stored.get("ProductArn") == self._options.product_arn and str(stored.get("Id", "")).startswith(
                    prefix
                ):
                    self._created.setdefault(stored["Id"], stored["CreatedAt"])
        self._loaded_at = now


def _batches(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]
