"""PolicyReports reach the API server (server-side apply) and stay current."""

from __future__ import annotations

import json

import pytest

from auditor.adapters.k8s.policyreports import PolicyReportWriter
from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION
from auditor.core.model import Finding, Status
from auditor.devtools.controlplane import KubeAPI
from auditor.render.policyreport import policy_reports
from tests.cases import ROOT

pytestmark = pytest.mark.kube


def test_reports_are_applied_replaced_and_emptied(kube_api: KubeAPI, kube_namespace: str) -> None:
    kube_api.apply(ROOT / "tests" / "fixtures" / "crds" / "wgpolicyk8s-policyreports.yaml")
    kube_api.kubectl("wait", "--for=condition=Established", "crd/policyreports.wgpolicyk8s.io", "--timeout=30s")
    first = [
        Finding(CAPTURED, f"{kube_namespace}/orders", Status.FAIL, "opts out"),
        Finding(PEER_AUTHENTICATION, f"{kube_namespace}/orders", Status.PASS, "STRICT"),
    ]
    with kube_api.new_client() as api:
        writer = PolicyReportWriter(api)
        assert writer.write(policy_reports(first, run_id="r1", timestamp=1)) == 1
        stored = json.loads(
            kube_api.kubectl("get", "policyreport", "mesh-auditor", f"--namespace={kube_namespace}", "-o", "json")
        )
        assert stored["summary"] == {"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0}
        fixed = [Finding(CAPTURED, f"{kube_namespace}/orders", Status.PASS, "captured")]
        writer.write(policy_reports(fixed, run_id="r2", timestamp=2))
        stored = json.loads(
            kube_api.kubectl("get", "policyreport", "mesh-auditor", f"--namespace={kube_namespace}", "-o", "json")
        )
        assert [r["result"] for r in stored["results"]] == ["pass"]
        assert stored["metadata"]["labels"]["mesh-auditor.dev/run-id"] == "r2"
        writer.write([])  # the namespace has no findings any more: its report is emptied, not stale
        stored = json.loads(
            kube_api.kubectl("get", "policyreport", "mesh-auditor", f"--namespace={kube_namespace}", "-o", "json")
        )
        assert stored["results"] == []
