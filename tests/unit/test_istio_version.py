"""Which Istio the cluster runs and which semantics the audit applied (core.istioversion)."""

from __future__ import annotations

import pytest

from auditor.core.audit import run_static_audit
from auditor.core.istioversion import MODEL_VERSION, Semantics, semantics_findings, semantics_of
from auditor.core.model import Status
from auditor.core.posture import MeshSettings, Posture
from auditor.core.snapshot import Container, ObjectMeta, Snapshot, Workload


def _istiod(
    labels: dict[str, str] | None = None,
    image: str = "",
    *,
    pod: bool = False,
    app: str = "istiod",
    container: str = "discovery",
) -> Workload:
    kind = "Pod" if pod else "Deployment"
    meta = ObjectMeta(kind=kind, name="istiod", namespace="istio-system", labels=labels or {})
    return Workload(
        meta=meta,
        pod_labels={"app": app, **(labels or {})},
        pod_annotations={},
        service_account="istiod",
        containers=(Container(container, image=image),),
        is_pod=pod,
    )


@pytest.mark.parametrize(
    ("workload", "version", "field"),
    [
        (_istiod({"app.kubernetes.io/version": "1.28.0"}, "docker.io/istio/pilot:1.27.0"), "1.28.0", "labels"),
        (_istiod({}, "docker.io/istio/pilot:1.28.1-distroless"), "1.28.1-distroless", "image"),
        (_istiod({}, "gcr.io/istio-release/pilot:1.31.0@sha256:abc"), "1.31.0", "image"),
        (_istiod({"app.kubernetes.io/version": "1.0.0"}, "my.registry:5000/pilot:1.30.2"), "1.30.2", "image"),
        (_istiod({"operator.istio.io/version": "1.29.0"}, "pilot:latest"), "1.29.0", "operator.istio.io"),
        (_istiod({}, "pilot:1.28.0", pod=True), "1.28.0", "image"),
    ],
)
def test_version_from_the_chart_label_then_the_image_tag_then_the_operator_label(
    workload: Workload, version: str, field: str
) -> None:
    semantics = semantics_of(Snapshot(workloads=(workload,)))
    assert semantics.cluster == version
    assert field in semantics.control_planes[0].evidence.field


@pytest.mark.parametrize(
    "workload",
    [
        _istiod({}, "docker.io/istio/pilot:latest"),
        _istiod({"app.kubernetes.io/version": "1.28.0"}, app="ztunnel"),
        _istiod({"app.kubernetes.io/version": "1.28.0"}, container="istio-proxy"),
    ],
)
def test_no_istiod_or_no_version_is_unknown_and_no_finding(workload: Workload) -> None:
    semantics = semantics_of(Snapshot(workloads=(workload,)))
    assert (semantics.cluster, semantics_findings(semantics)) == ("unknown", ())
    assert "cluster istiod: unknown" in semantics.line()


def test_same_minor_gives_no_finding_and_says_so() -> None:
    semantics = semantics_of(Snapshot(workloads=(_istiod({"app.kubernetes.io/version": "1.31-dev"}),)))
    assert semantics.model == MODEL_VERSION == "1.31"
    assert semantics_findings(semantics) == ()
    assert semantics.line() == "Istio semantics applied: 1.31 (the model's); cluster istiod: 1.31-dev"


def test_the_walkthroughs_1_28_lists_every_known_difference() -> None:
    semantics = semantics_of(Snapshot(workloads=(_istiod({"app.kubernetes.io/version": "1.28.0"}),)))
    (finding,) = semantics_findings(semantics)
    assert (finding.target, finding.status, finding.check.id) == (
        "cluster/istiod-default",
        Status.INCONCLUSIVE,
        "audit.istio-semantics",
    )
    assert {d.since for d in semantics.differences(semantics.control_planes[0])} == {"1.29", "1.30", "1.31"}
    assert "trustDomains" in finding.message
    assert "differs from the model" in semantics.line()


def test_a_newer_istiod_is_not_verified() -> None:
    semantics = semantics_of(Snapshot(workloads=(_istiod({"app.kubernetes.io/version": "1.32.0"}),)))
    (finding,) = semantics_findings(semantics)
    assert "differences unknown" in finding.message


def test_deployments_win_over_pods_and_revisions_are_reported_apart() -> None:
    canary = _istiod({"app.kubernetes.io/version": "1.30.0", "istio.io/rev": "canary"})
    stable = _istiod({"app.kubernetes.io/version": "1.31.0"})
    pod = _istiod({"app.kubernetes.io/version": "1.28.0"}, pod=True)
    semantics = semantics_of(Snapshot(workloads=(pod, canary, stable)))
    assert semantics == Semantics(MODEL_VERSION, semantics.control_planes)
    assert [(c.revision, c.version) for c in semantics.control_planes] == [("canary", "1.30.0"), ("default", "1.31.0")]
    assert [f.target for f in semantics_findings(semantics)] == ["cluster/istiod-canary"]


def test_the_audit_reports_the_finding() -> None:
    snapshot = Snapshot(workloads=(_istiod({"app.kubernetes.io/version": "1.28.2"}),))
    posture = Posture(mesh=MeshSettings(), scope=(), protected=(), names=())
    findings = run_static_audit(snapshot, posture, {})
    assert [(f.check.id, f.status) for f in findings] == [("audit.istio-semantics", Status.INCONCLUSIVE)]
