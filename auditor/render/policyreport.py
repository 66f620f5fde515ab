"""Findings as Kubernetes-native ``PolicyReport`` objects (``wgpolicyk8s.io/v1alpha2``).

One report per namespace (cluster-scoped findings go to a ``ClusterPolicyReport``), so existing
policy dashboards show the mesh promises beside admission results. Reports stay small: messages
are clipped and evidence is summarised to a count; the full evidence lives in the JSON archive.
INCONCLUSIVE maps to ``warn`` (the API has no "could not prove"), ERROR to ``error``. Messages
show control characters as escapes (``escape.visible``): ``kubectl describe`` prints them raw.

The fields follow the Policy WG's CRD (sigs.k8s.io/wg-policy-prototypes, policy-report/crd/v1alpha2,
the version pinned in tools/test-crds): each result names its promise as ``category``, and
``severity`` is one of the CRD's ``high``/``medium``/``low`` (a critical check is ``high`` there,
with ``properties.severity: critical``, since the released CRD has no ``critical``). Every report
carries the label ``app.kubernetes.io/managed-by: mesh-auditor`` and the name ``mesh-auditor``:
the writer finds, and may delete, only those (``auditor.adapters.k8s.policyreports``). Resources
are the audited Services; the writer adds their ``uid``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from auditor.core.model import Finding, Property, Status
from auditor.core.revision import CONFIG_API_VERSIONS
from auditor.render.escape import visible
from auditor.report import AuditReport

API_VERSION = "wgpolicyk8s.io/v1alpha2"
SOURCE = "mesh-auditor"
REPORT_NAME = "mesh-auditor"
MANAGED_BY = ("app.kubernetes.io/managed-by", "mesh-auditor")
MESSAGE_LIMIT = 512
_RESULT = {
    Status.PASS: "pass",
    Status.FAIL: "fail",
    Status.ERROR: "error",
    Status.INCONCLUSIVE: "warn",
    Status.SKIPPED: "skip",
}
_SEVERITY = {"critical": "high", "high": "high", "medium": "medium", "low": "low"}
# One category per promise, as policy dashboards group results by category.
CATEGORY = {
    Property.STRICT_MTLS: "Istio ambient: strict mTLS",
    Property.PRINCIPAL_ALLOWLIST: "Istio ambient: principal allowlist",
    Property.WAYPOINT_ENROLLMENT: "Istio ambient: waypoint enrollment",
    Property.REQUIRED_HEADERS: "Istio ambient: required headers",
    Property.AUDIT_INTEGRITY: "mesh-auditor: audit integrity",
}


def policy_reports(report: AuditReport) -> list[dict[str, Any]]:
    """One report per namespace for a daemon run; every result is stamped with the run's time
    (epoch seconds) and every report labelled with its id. Raises ``ValueError`` for a report
    without a ``RunRecord``."""
    if report.run is None:
        raise ValueError("PolicyReports name their run: the report has no RunRecord")
    findings, run_id, timestamp = report.findings, report.run.id, int(report.run.at.timestamp())
    by_namespace: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        namespace, _, _ = finding.target.partition("/")
        by_namespace["" if namespace == "cluster" else namespace].append(finding)
    return [_report(ns, items, run_id, timestamp) for ns, items in sorted(by_namespace.items())]


def _report(namespace: str, findings: list[Finding], run_id: str, timestamp: int) -> dict[str, Any]:
    results = [_result(f, timestamp) for f in findings]
    metadata: dict[str, Any] = {
        "name": REPORT_NAME,
        "labels": {MANAGED_BY[0]: MANAGED_BY[1], "mesh-auditor.dev/run-id": run_id},
    }
    kind = "PolicyReport"
    if namespace:
        metadata["namespace"] = namespace
    else:
        kind = "ClusterPolicyReport"
    summary = {name: sum(r["result"] == name for r in results) for name in ("pass", "fail", "warn", "error", "skip")}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "summary": summary, "results": results}


def _result(finding: Finding, timestamp: int) -> dict[str, Any]:
    namespace, _, name = finding.target.partition("/")
    shown = visible(finding.message)
    message = shown if len(shown) <= MESSAGE_LIMIT else shown[: MESSAGE_LIMIT - 1] + "…"
    result: dict[str, Any] = {
        "source": SOURCE,
        "policy": finding.property.value,
        "rule": finding.check.id,
        "result": _RESULT[finding.status],
        "severity": _SEVERITY[finding.check.severity.value],
        "category": CATEGORY[finding.property],
        "message": message,
        "scored": True,
        "timestamp": {"seconds": timestamp, "nanos": 0},
        "properties": {
            "method": finding.method.value,
            "status": finding.status.value,
            "evidence": str(len(finding.evidence)),
            "severity": finding.check.severity.value,
            "target": finding.target,
        },
    }
    if namespace != "cluster" and name and name != "*":
        result["resources"] = [_resource(namespace, name)]
    return result


def _resource(namespace: str, name: str) -> dict[str, str]:
    """The object a target names: ``namespace/name`` is a Service; ``namespace/Kind/name`` is an
    Istio or Gateway API config object (``audit.config-revision``)."""
    kind, slash, object_name = name.partition("/")
    if slash and kind in CONFIG_API_VERSIONS:
        return {"apiVersion": CONFIG_API_VERSIONS[kind], "kind": kind, "namespace": namespace, "name": object_name}
    return {"apiVersion": "v1", "kind": "Service", "namespace": namespace, "name": name}
