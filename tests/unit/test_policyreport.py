"""PolicyReports group findings per namespace, map statuses, and stay small."""

from __future__ import annotations

from auditor.core.checks.catalog import CAPTURED, CONFIG_REVISION, SNAPSHOT_READ, WAYPOINT_BOUND
from auditor.core.model import Finding, Property, Status
from auditor.render.policyreport import CATEGORY, MESSAGE_LIMIT, policy_reports
from tests.cases import run_report


def test_one_report_per_namespace_with_mapped_results() -> None:
    findings = [
        Finding(CAPTURED, "default/checkout", Status.FAIL, "opts out"),
        Finding(WAYPOINT_BOUND, "default/catalog", Status.INCONCLUSIVE, "x" * 5000),
        Finding(CAPTURED, "shop/cart", Status.PASS, "ok"),
        Finding(SNAPSHOT_READ, "cluster/Pod", Status.ERROR, "forbidden"),
    ]
    reports = {
        (r["kind"], r["metadata"].get("namespace")): r
        for r in policy_reports(run_report(findings, run_id="r1", at=1700000000))
    }
    default = reports[("PolicyReport", "default")]
    assert default["summary"] == {"pass": 0, "fail": 1, "warn": 1, "error": 0, "skip": 0}
    assert [r["result"] for r in default["results"]] == ["fail", "warn"]
    assert default["results"][0]["resources"] == [
        {"apiVersion": "v1", "kind": "Service", "namespace": "default", "name": "checkout"}
    ]
    assert len(default["results"][1]["message"]) == MESSAGE_LIMIT
    assert reports[("ClusterPolicyReport", None)]["results"][0]["result"] == "error"
    assert reports[("PolicyReport", "shop")]["metadata"]["labels"]["mesh-auditor.dev/run-id"] == "r1"


def test_each_promise_has_its_category_and_severity_fits_the_released_crd() -> None:
    """The CRD (wg-policy-prototypes v1alpha2) knows high/medium/low only: critical maps to high
    and the original stays in properties; every property has a category of its own."""
    findings = [
        Finding(CAPTURED, "default/checkout", Status.FAIL, "opts out"),  # critical
        Finding(WAYPOINT_BOUND, "default/checkout", Status.PASS, "bound"),  # high
        Finding(SNAPSHOT_READ, "cluster/Pod", Status.ERROR, "forbidden"),
    ]
    results = [r for report in policy_reports(run_report(findings, run_id="r1", at=1)) for r in report["results"]]
    by_rule = {r["rule"]: r for r in results}
    assert (by_rule[CAPTURED.id]["severity"], by_rule[CAPTURED.id]["properties"]["severity"]) == ("high", "critical")
    assert by_rule[CAPTURED.id]["category"] == "Istio ambient: strict mTLS"
    assert by_rule[WAYPOINT_BOUND.id]["category"] == "Istio ambient: waypoint enrollment"
    assert by_rule[SNAPSHOT_READ.id]["category"] == "mesh-auditor: audit integrity"
    assert set(CATEGORY) == set(Property)
    assert len(set(CATEGORY.values())) == len(Property)
    assert {r["severity"] for r in results} <= {"high", "medium", "low"}


def test_an_ignored_config_object_is_the_resource_of_its_result() -> None:
    """``audit.config-revision`` targets ``namespace/Kind/name``: the result names that object, not a Service."""
    findings = [Finding(CONFIG_REVISION, "default/AuthorizationPolicy/catalog", Status.FAIL, "ignored")]
    (report,) = policy_reports(run_report(findings, run_id="r1", at=1))
    assert (report["metadata"]["namespace"], report["results"][0]["resources"]) == (
        "default",
        [
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "namespace": "default",
                "name": "catalog",
            }
        ],
    )
