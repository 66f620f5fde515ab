"""PolicyReports against the Policy WG's real CRD, written as the auditor's ServiceAccount.

The CRDs come from the Go module sigs.k8s.io/wg-policy-prototypes (tests/crd_modules.py);
reports are applied with strict field validation, so a field the CRD does not define fails here.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.adapters.k8s.policyreports import PolicyReportWriter
from auditor.adapters.kubeapi import build_api_client
from auditor.core.checks.catalog import AUTO_MODE, CAPTURED, HEADERS_ENFORCED, PEER_AUTHENTICATION, WAYPOINT_BOUND
from auditor.core.model import Finding, Status
from auditor.render.policyreport import CATEGORY, policy_reports
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT, run_report
from tests.crd_modules import policyreport_crds

pytestmark = pytest.mark.kube
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def auditor_kubeconfig(kube_api: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CRDs, deploy/'s RBAC, and a kubeconfig that authenticates as the auditor's ServiceAccount."""
    kube_api.apply(*policyreport_crds())
    for crd in ("policyreports.wgpolicyk8s.io", "clusterpolicyreports.wgpolicyk8s.io"):
        kube_api.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    for name in ("namespaces.yaml", "serviceaccounts.yaml", "rbac.yaml"):
        kube_api.apply(DEPLOY / name)
    token = kube_api.kubectl("create", "token", "mesh-auditor", "--namespace=mesh-auditor", "--duration=1h").strip()
    config = copy.deepcopy(yaml.safe_load(kube_api.kubeconfig.read_text(encoding="utf-8")))
    config["users"] = [{"name": "mesh-auditor", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "mesh-auditor"
    path = tmp_path_factory.mktemp("auditor") / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def second_namespace(kube_api: KubeAPI, kube_namespace: str) -> Iterator[str]:
    name = f"{kube_namespace[:50]}-b"
    kube_api.kubectl("create", "namespace", name)
    yield name
    kube_api.kubectl("delete", "policyreports", "--all", f"--namespace={name}", "--ignore-not-found")


def _service(kube_api: KubeAPI, namespace: str, name: str) -> str:
    kube_api.kubectl("create", "service", "clusterip", name, "--tcp=8080:8080", f"--namespace={namespace}")
    return kube_api.kubectl("get", "service", name, f"--namespace={namespace}", "-o", "jsonpath={.metadata.uid}")


def _report(kube_api: KubeAPI, namespace: str) -> dict[str, Any] | None:
    listed = json.loads(kube_api.kubectl("get", "policyreports", f"--namespace={namespace}", "-o", "json"))
    items = [i for i in listed["items"] if i["metadata"]["name"] == "mesh-auditor"]
    return items[0] if items else None


def test_reports_fit_the_real_crd_with_a_category_per_promise_and_service_uids(
    kube_api: KubeAPI, auditor_kubeconfig: Path, kube_namespace: str
) -> None:
    uid = _service(kube_api, kube_namespace, "orders")
    findings = [
        Finding(CAPTURED, f"{kube_namespace}/orders", Status.FAIL, "opts out"),  # critical check
        Finding(PEER_AUTHENTICATION, f"{kube_namespace}/orders", Status.PASS, "STRICT"),
        Finding(WAYPOINT_BOUND, f"{kube_namespace}/orders", Status.INCONCLUSIVE, "no status"),
        Finding(HEADERS_ENFORCED, f"{kube_namespace}/gone", Status.ERROR, "service gone"),
    ]
    with build_api_client(str(auditor_kubeconfig), None) as api:
        assert PolicyReportWriter(api).write(policy_reports(run_report(findings, run_id="r1", at=1))) == 1
    stored = _report(kube_api, kube_namespace)
    assert stored is not None
    assert stored["summary"] == {"pass": 1, "fail": 1, "warn": 1, "error": 1, "skip": 0}
    by_rule = {r["rule"]: r for r in stored["results"]}
    assert by_rule[CAPTURED.id]["category"] == CATEGORY[CAPTURED.property] == "Istio ambient: strict mTLS"
    assert by_rule[WAYPOINT_BOUND.id]["category"] == "Istio ambient: waypoint enrollment"
    assert by_rule[HEADERS_ENFORCED.id]["category"] == "Istio ambient: required headers"
    assert by_rule[CAPTURED.id]["severity"] == "high"  # the released CRD has no "critical"
    assert by_rule[CAPTURED.id]["properties"]["severity"] == CAPTURED.severity.value
    assert by_rule[CAPTURED.id]["resources"] == [
        {"apiVersion": "v1", "kind": "Service", "namespace": kube_namespace, "name": "orders", "uid": uid}
    ]
    assert "uid" not in by_rule[HEADERS_ENFORCED.id]["resources"][0]  # no such Service: no uid invented
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mesh-auditor"


def test_cluster_scoped_findings_go_to_a_cluster_policy_report(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    findings = [Finding(AUTO_MODE, "cluster/ambient", Status.PASS, "Auto Mode enabled")]
    with build_api_client(str(auditor_kubeconfig), None) as api:
        assert PolicyReportWriter(api).write(policy_reports(run_report(findings, run_id="c1", at=1))) == 1
    stored = json.loads(kube_api.kubectl("get", "clusterpolicyreport", "mesh-auditor", "-o", "json"))
    assert [(r["rule"], r["category"]) for r in stored["results"]] == [(AUTO_MODE.id, "mesh-auditor: audit integrity")]


def test_a_new_leader_removes_the_reports_the_previous_one_wrote_that_no_longer_apply(
    kube_api: KubeAPI, auditor_kubeconfig: Path, kube_namespace: str, second_namespace: str
) -> None:
    """Leader A writes two namespaces; leader B (a new process: it remembers nothing) audits and
    finds only the first: B deletes A's report of the second, and never touches anyone else's."""
    before = [
        Finding(CAPTURED, f"{kube_namespace}/orders", Status.FAIL, "opts out"),
        Finding(CAPTURED, f"{second_namespace}/cart", Status.FAIL, "opts out"),
    ]
    foreign = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": "kyverno-polr", "namespace": second_namespace, "labels": {"app": "kyverno"}},
        "results": [{"policy": "require-labels", "result": "pass"}],
    }
    kube_api.apply_text(yaml.safe_dump(foreign))
    with build_api_client(str(auditor_kubeconfig), None) as api:
        PolicyReportWriter(api).write(policy_reports(run_report(before, run_id="a1", at=1)))
    assert _report(kube_api, second_namespace) is not None
    after = [Finding(CAPTURED, f"{kube_namespace}/orders", Status.PASS, "captured")]
    with build_api_client(str(auditor_kubeconfig), None) as api:
        assert PolicyReportWriter(api).write(policy_reports(run_report(after, run_id="b1", at=2))) == 1
    assert _report(kube_api, second_namespace) is None  # A's stale report is gone
    kept = _report(kube_api, kube_namespace)
    assert kept is not None
    assert kept["metadata"]["labels"]["mesh-auditor.dev/run-id"] == "b1"
    assert kube_api.kubectl("get", "policyreport", "kyverno-polr", f"--namespace={second_namespace}", "-o", "name")


def test_the_auditor_may_list_and_delete_only_its_own_reports(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    def can(*args: str) -> bool:
        argv = [str(kube_api.kubectl_path), f"--kubeconfig={kube_api.kubeconfig}", "auth", "can-i", *args]
        argv += ["--as=system:serviceaccount:mesh-auditor:mesh-auditor", "--all-namespaces"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert result.stdout.strip() in ("yes", "no"), result.stderr  # "no" exits 1; anything else is a failure
        return result.stdout.strip() == "yes"

    assert can("delete", "policyreports.wgpolicyk8s.io/mesh-auditor")
    assert not can("delete", "policyreports.wgpolicyk8s.io/kyverno-polr")
    assert not can("list", "policyreports.wgpolicyk8s.io")  # only with the metadata.name field selector
    assert not can("deletecollection", "policyreports.wgpolicyk8s.io")


def test_a_field_the_crd_does_not_define_is_refused_not_pruned(
    kube_api: KubeAPI, auditor_kubeconfig: Path, kube_namespace: str
) -> None:
    [report] = policy_reports(
        run_report([Finding(CAPTURED, f"{kube_namespace}/orders", Status.FAIL, "x")], run_id="s1", at=1)
    )
    report["results"][0]["not-in-the-crd"] = "x"
    with build_api_client(str(auditor_kubeconfig), None) as api:
        assert PolicyReportWriter(api).write([report]) == 0
    assert _report(kube_api, kube_namespace) is None
