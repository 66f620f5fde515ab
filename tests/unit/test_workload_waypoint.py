"""A pod's own (workload) waypoint, as istiod computes it (semantics §4.8), and what it changes.

istiod (pilot/pkg/serviceregistry/ambient/waypoints.go fetchWaypointForWorkload, workloads.go
computeWaypoint): the pod's istio.io/use-waypoint label, else its namespace's; ``none`` opts out;
the waypoint must serve ``workload`` or ``all``; a waypoint's own pods have none. ztunnel sends
traffic addressed to the pod IP through it; there only policies targeting the Gateway apply.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from auditor.cli import main
from auditor.core.authz import Caller, Request, at_workload_waypoint
from auditor.core.checks.context import AuditContext
from auditor.core.checks.reach import pod_ip_reach, route_for
from auditor.core.mesh import workload_waypoint
from auditor.core.posture import MeshSettings, Posture
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzRule,
    AuthzSource,
    Gateway,
    Listener,
    Namespace,
    ObjectMeta,
    Service,
    Snapshot,
    SnapshotIndex,
    TargetRef,
    Workload,
)
from tests.cases import ROOT, load_case, materialize

USE = "istio.io/use-waypoint"
USE_NS = "istio.io/use-waypoint-namespace"
FOR = "istio.io/waypoint-for"
INTRUDER = Caller("cluster.local/ns/x/sa/intruder")
UI = Caller("cluster.local/ns/default/sa/ui")


def _gateway(waypoint_for: str | None = "workload", allowed: str = "Same", namespace: str = "default") -> Gateway:
    labels = {FOR: waypoint_for} if waypoint_for is not None else {}
    return Gateway(
        meta=ObjectMeta(kind="Gateway", name="wp", namespace=namespace, labels=labels),
        class_name="istio-waypoint",
        listeners=(Listener("mesh", 15008, "HBONE", allowed),),
    )


def _pod(namespace: str = "default", **labels: str) -> Workload:
    meta = ObjectMeta(kind="Pod", name="catalog-1", namespace=namespace, labels={"app": "catalog", **labels})
    return Workload(
        meta=meta,
        pod_labels={"app": "catalog", **labels},
        pod_annotations={"ambient.istio.io/redirection": "enabled"},
        service_account="catalog",
        is_pod=True,
    )


def _index(
    *objects: Gateway | Workload | Service | AuthorizationPolicy, ns_labels: dict[str, str] | None = None
) -> SnapshotIndex:
    default = {"istio.io/dataplane-mode": "ambient", **(ns_labels or {})}
    namespaces = (
        Namespace(ObjectMeta(kind="Namespace", name="default", labels=default)),
        Namespace(ObjectMeta(kind="Namespace", name="other", labels={"team": "a"})),
    )
    return SnapshotIndex(
        Snapshot(
            namespaces=namespaces,
            gateways=tuple(o for o in objects if isinstance(o, Gateway)),
            workloads=tuple(o for o in objects if isinstance(o, Workload)),
            services=tuple(o for o in objects if isinstance(o, Service)),
            authorization_policies=tuple(o for o in objects if isinstance(o, AuthorizationPolicy)),
        )
    )


def _bound(pod: Workload, index: SnapshotIndex) -> str:
    gateway = workload_waypoint(pod, index).gateway
    return "" if gateway is None else gateway.meta.key


@pytest.mark.parametrize(
    ("waypoint_for", "bound"),
    [("workload", True), ("all", True), ("service", False), (None, False), ("none", False), ("", False)],
)
def test_the_pods_label_binds_a_waypoint_that_serves_workload_traffic(waypoint_for: str | None, bound: bool) -> None:
    """fetchWaypointForWorkload: traffic type workload or all; the default is service."""
    pod = _pod(**{USE: "wp"})
    own = workload_waypoint(pod, _index(_gateway(waypoint_for), pod))
    assert (own.gateway is not None) == bound
    if not bound:
        assert [p.evidence.field for p in own.problems] == [f"labels.{FOR}"]


def test_the_pods_label_beats_its_namespaces_and_none_opts_out() -> None:
    """fetchWaypointForTarget: the object's label first; ``none`` there means no waypoint at all."""
    gateway = _gateway("all")
    assert _bound(_pod(), _index(gateway, ns_labels={USE: "wp"})) == "default/wp"
    assert _bound(_pod(**{USE: "none"}), _index(gateway, ns_labels={USE: "wp"})) == ""
    assert _bound(_pod(**{USE: "missing"}), _index(gateway, ns_labels={USE: "wp"})) == ""
    assert _bound(_pod(**{USE: "wp"}), _index(gateway, ns_labels={USE: "none"})) == "default/wp"


def test_a_waypoints_own_pods_have_no_workload_waypoint() -> None:
    """computeWaypoint: an instance of a waypoint (gateway-name label) gets none, whatever the labels."""
    pod = _pod(**{"gateway.networking.k8s.io/gateway-name": "wp"})
    own = workload_waypoint(pod, _index(_gateway("all"), ns_labels={USE: "wp"}))
    assert (own.gateway, own.binding.exempt) == (None, True)


@pytest.mark.parametrize(("allowed", "bound"), [("Same", False), ("All", True)])
def test_another_namespaces_waypoint_follows_allowed_routes(allowed: str, bound: bool) -> None:
    pod = _pod("other", **{USE: "wp", USE_NS: "default"})
    assert (_bound(pod, _index(_gateway("workload", allowed), pod)) != "") == bound


def test_only_policies_targeting_the_gateway_apply_to_pod_ip_traffic() -> None:
    """listener_waypoint.go buildWaypointInternal: the direct-pod chain has no Service."""
    on_gateway = _policy("on-gateway", TargetRef("Gateway", "wp", "gateway.networking.k8s.io"))
    on_service = _policy("on-service", TargetRef("Service", "catalog", ""))
    applicable = at_workload_waypoint("default", "wp", _index(on_gateway, on_service), "istio-system")
    assert [p.meta.name for p in applicable.policies] == ["on-gateway"]
    assert [e.object for e in applicable.ignored] == [on_service.meta.ref]


def _policy(name: str, ref: TargetRef) -> AuthorizationPolicy:
    return AuthorizationPolicy(
        meta=ObjectMeta(kind="AuthorizationPolicy", name=name, namespace="default"),
        action="ALLOW",
        selector=None,
        target_refs=(ref,),
        rules=(AuthzRule(sources=(AuthzSource(principals=(UI.principal or "",)),)),),
    )


@pytest.mark.parametrize(
    ("ref", "refused_at"),
    [
        (TargetRef("Gateway", "wp", "gateway.networking.k8s.io"), "the pod's own waypoint default/wp"),
        (TargetRef("Service", "catalog", ""), None),  # the Service's policy never sees pod-IP traffic
    ],
)
def test_a_request_to_the_pod_ip_meets_the_pods_own_waypoint(ref: TargetRef, refused_at: str | None) -> None:
    pod = _pod(**{USE: "wp"})
    service = Service(
        meta=ObjectMeta(kind="Service", name="catalog", namespace="default", labels={USE: "wp"}),
        selector={"app": "catalog"},
    )
    index = _index(_gateway("all"), pod, service, _policy("allow-ui", ref))
    posture = Posture(mesh=MeshSettings(), scope=(), protected=(), names=())
    ctx = AuditContext(index=index, posture=posture, header_values={})
    (backend,) = route_for(ctx, service).backends
    item = pod_ip_reach(ctx, backend, INTRUDER, Request())
    if refused_at is None:
        assert (item.allowed, item.skipped_waypoint) == (True, False)
    else:
        assert (item.allowed, item.hops[0].where) == (False, refused_at)
    admitted = pod_ip_reach(ctx, backend, UI, Request())
    assert admitted.allowed is True


@pytest.mark.parametrize(
    ("case", "intruders", "headers"),
    [
        (
            "waypoint-workload-pod-label",
            "in-mesh requests to a pod IP go through the pods' own waypoint default/catalog-waypoint, which refuses "
            "them too (§4.8)",
            "a request to a pod IP goes through the pods' own waypoint default/catalog-waypoint, which checks the "
            "header too (§4.8)",
        ),
        (
            "waypoint-for-all",
            "an in-mesh request to a pod IP skips the waypoint and no policy refuses it (§4.6)",
            "a request to a pod IP skips the waypoint, so no header is checked on it (§4.6)",
        ),
    ],
)
def test_the_l7_checks_say_how_a_request_to_a_pod_ip_fares(
    case: str, intruders: str, headers: str, tmp_path: Path
) -> None:
    """Same promises pass either way; what differs is the pod-IP path: the pods' own waypoint, or none."""
    loaded = load_case(ROOT / "tests" / "fixtures" / "static" / case)
    document = _audit(materialize(loaded, tmp_path), loaded.rules)
    messages = {
        f["check"]: (f["status"], f["message"]) for f in document["findings"] if f["target"] == "default/catalog"
    }
    assert messages["principal-allowlist.intruders-refused"][0] == "pass"
    assert messages["principal-allowlist.intruders-refused"][1].endswith(intruders)
    assert messages["required-headers.enforced"][0] == "pass"
    assert messages["required-headers.enforced"][1].endswith(headers)


def _audit(manifests: Path, rules: Path) -> dict[str, Any]:
    out = io.StringIO()
    main(["check", "--manifests", str(manifests), "--rules", str(rules), "--output", "json"], stdout=out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document
