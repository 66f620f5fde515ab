"""strict-mtls.node-ztunnel from pods as a live snapshot shows them: which node, which ztunnel pod,
which outcome."""

from __future__ import annotations

from typing import Any

from auditor.core.audit import run_static_audit
from auditor.core.decode import build_snapshot, decode_object
from auditor.core.mesh import ClientKind, client_of
from auditor.core.model import Finding, Status
from auditor.core.posture import MeshSettings, Posture, ScopeEntry
from auditor.core.snapshot import SnapshotIndex

NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}},
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "cart", "namespace": "shop"},
    "spec": {"selector": {"app": "cart"}, "ports": [{"port": 80, "targetPort": 8080}]},
}
DAEMONSET = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "ztunnel", "namespace": "istio-system"},
    "spec": {"template": {"metadata": {"labels": {"app": "ztunnel"}}, "spec": {"containers": [{"name": "z"}]}}},
}
POSTURE = Posture(mesh=MeshSettings(), scope=(ScopeEntry(namespace="shop"),), protected=(), names=("t",))


def _pod(name: str, namespace: str, labels: dict[str, str], node: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"ambient.istio.io/redirection": "enabled"},
        },
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def _node_finding(*documents: dict[str, Any]) -> Finding | None:
    objects = [d for o in (NAMESPACE, SERVICE, *documents) for d in decode_object(o)]
    findings = run_static_audit(build_snapshot(objects, live=True), POSTURE, {})
    return next((f for f in findings if f.check.id == "strict-mtls.node-ztunnel"), None)


def test_a_node_without_ztunnel_is_named_with_the_pods_it_hosts() -> None:
    found = _node_finding(
        DAEMONSET,
        _pod("cart-a", "shop", {"app": "cart"}, "node-1"),
        _pod("cart-b", "shop", {"app": "cart"}, "node-2"),
        _pod("ztunnel-1", "istio-system", {"app": "ztunnel"}, "node-1"),
    )
    assert found is not None
    assert found.status is Status.FAIL
    assert found.message == "unprotected node(s): node node-2: no ztunnel pod (hosts Pod shop/cart-b)"
    assert [(e.object, e.value) for e in found.evidence] == [
        ("Node node-1", "Pod istio-system/ztunnel-1"),
        ("Node node-2", "(none)"),
    ]


def test_a_ztunnel_that_is_not_ready_fails() -> None:
    found = _node_finding(
        _pod("cart-a", "shop", {"app": "cart"}, "node-1"),
        _pod("ztunnel-1", "istio-system", {"app": "ztunnel"}, "node-1", ready=False),
    )
    assert found is not None
    assert found.status is Status.FAIL
    assert "ztunnel pod Pod istio-system/ztunnel-1 is not Ready" in found.message


def test_every_node_with_a_ready_ztunnel_passes() -> None:
    found = _node_finding(
        _pod("cart-a", "shop", {"app": "cart"}, "node-1"),
        _pod("ztunnel-1", "istio-system", {"app": "ztunnel"}, "node-1"),
    )
    assert found is not None
    assert found.status is Status.PASS


def test_no_finding_without_a_live_view_of_nodes_or_of_ztunnel() -> None:
    # Manifest files: no node, no Ready condition.
    template = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"template": {"metadata": {"labels": {"app": "cart"}}, "spec": {"containers": [{"name": "c"}]}}},
    }
    assert _node_finding(DAEMONSET, template) is None
    # A cluster that shows no ztunnel at all: nothing says where it should run.
    assert _node_finding(_pod("cart-a", "shop", {"app": "cart"}, "node-1")) is None
    # Pods that are not ready are no endpoints.
    assert _node_finding(DAEMONSET, _pod("cart-a", "shop", {"app": "cart"}, "node-1", ready=False)) is None


def test_a_terminating_ztunnel_pod_protects_nothing() -> None:
    terminating = _pod("ztunnel-1", "istio-system", {"app": "ztunnel"}, "node-1")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    found = _node_finding(_pod("cart-a", "shop", {"app": "cart"}, "node-1"), terminating)
    assert found is not None
    assert found.status is Status.FAIL


def _slice(*entries: tuple[str, str | None, str]) -> dict[str, Any]:
    """An EndpointSlice of Service shop/cart: (address, pod name or None, node) per entry."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "cart-x1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "cart"}},
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "nodeName": node,
                **({"targetRef": {"kind": "Pod", "namespace": "shop", "name": pod}} if pod else {}),
            }
            for ip, pod, node in entries
        ],
        "ports": [{"port": 8080}],
    }


def test_the_nodes_of_a_service_come_from_its_endpointslices_on_a_live_cluster() -> None:
    """A selectorless Service with a hand-written slice: its endpoint on node-2 (no ztunnel) fails,
    though no pod matches any selector."""
    selectorless = {**SERVICE, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}
    objects = [
        d
        for o in (
            NAMESPACE,
            selectorless,
            DAEMONSET,
            _slice(("10.0.1.4", None, "node-1"), ("10.0.2.4", "cart-b", "node-2")),
            _pod("ztunnel-1", "istio-system", {"app": "ztunnel"}, "node-1"),
        )
        for d in decode_object(o)
    ]
    findings = run_static_audit(build_snapshot(objects, live=True), POSTURE, {})
    found = next(f for f in findings if f.check.id == "strict-mtls.node-ztunnel")
    assert found.status is Status.FAIL
    assert found.message == "unprotected node(s): node node-2: no ztunnel pod (hosts Pod shop/cart-b)"
    assert ("Node node-1", "Ready; hosts endpoint 10.0.1.4") in {(e.object, e.note) for e in found.evidence}


def test_a_ztunnel_pod_as_istios_chart_renders_it_is_no_sidecar_caller() -> None:
    """Its container is called istio-proxy, yet it is ztunnel itself (app: ztunnel, dataplane-mode
    none), never a sidecar client that skips waypoints: it would fail every waypoint-only allow-list."""
    labels = {"app": "ztunnel", "istio.io/dataplane-mode": "none", "sidecar.istio.io/inject": "false"}
    ztunnel = _pod("ztunnel-x", "istio-system", labels, "node-1")
    ztunnel["spec"]["containers"] = [{"name": "istio-proxy"}]
    sidecar = _pod("client", "shop", {"app": "client"}, "node-1")
    sidecar["spec"]["containers"] = [{"name": "app"}, {"name": "istio-proxy"}]
    objects = [d for o in (NAMESPACE, ztunnel, sidecar) for d in decode_object(o)]
    index = SnapshotIndex(build_snapshot(objects, live=True))
    kinds = {w.meta.name: client_of(w, index).kind for w in index.snapshot.workloads}
    assert kinds == {"ztunnel-x": ClientKind.OUTSIDE, "client": ClientKind.SIDECAR}
