"""The lab's nodes, replicas and controllers as pure functions: which input gives which placement,
capture, kube-proxy rule and API object (no lab is started)."""

from __future__ import annotations

from typing import Any

import pytest

from testrigs.lab import controllers, netns, nodes
from testrigs.lab.lab import LabError, parse_faults, uncaptured_targets
from testrigs.lab.mesh import Mesh

pytestmark = pytest.mark.lab

TWO = nodes.names(2)
NAMESPACE = {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}


def _deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    template_labels = {"app": name, **(labels or {})}
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": template_labels},
                "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    }


SERVICE = {
    "kind": "Service",
    "metadata": {"name": "cart", "namespace": "shop", "uid": "uid-svc"},
    "spec": {"selector": {"app": "cart"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
}


def test_replicas_spread_round_robin_over_the_nodes() -> None:
    mesh = Mesh([NAMESPACE, _deployment("cart", 3)], nodes=TWO)
    assert [(w.name, w.node, w.replica_of) for w in mesh.workloads] == [
        ("cart-0", "malab-auto-node-1", "shop/cart"),
        ("cart-1", "malab-auto-node-2", "shop/cart"),
        ("cart-2", "malab-auto-node-1", "shop/cart"),
    ]


def test_uncaptured_endpoint_leaves_the_last_replica_of_each_multi_replica_deployment_uncaptured() -> None:
    objects = [
        NAMESPACE,
        _deployment("cart", 2),
        _deployment("solo", 1),
        _deployment("out", 2, {"istio.io/dataplane-mode": "none"}),
    ]
    assert Mesh(objects, nodes=TWO).uncaptured == frozenset()
    mesh = Mesh(objects, nodes=TWO, uncaptured_endpoint=())
    assert mesh.uncaptured == {"shop/cart-1"}  # solo has one replica; out is not captured anyway
    assert [mesh.captured(w) for w in mesh.workloads if w.replica_of == "shop/cart"] == [True, False]
    assert Mesh(objects, nodes=TWO, uncaptured_endpoint=("shop/other",)).uncaptured == frozenset()


def test_the_fault_takes_an_optional_deployment() -> None:
    assert uncaptured_targets(parse_faults(["uncaptured-endpoint"])) == ()
    assert uncaptured_targets(parse_faults(["uncaptured-endpoint=cart"])) == ("default/cart",)
    assert uncaptured_targets(parse_faults(["strict-not-enforced"])) is None
    with pytest.raises(LabError, match="takes no target"):
        parse_faults(["l4-allow-all=x"])


def test_pods_the_lab_mirrors_into_the_api_are_not_workloads_again() -> None:
    mirrored = {
        "kind": "Pod",
        "metadata": {"name": "cart-0", "namespace": "shop", "labels": {nodes.OWNED_BY: "replica"}},
    }
    bare = {"kind": "Pod", "metadata": {"name": "curl", "namespace": "shop"}, "spec": {"nodeName": "malab-auto-node-2"}}
    mesh = Mesh([NAMESPACE, _deployment("cart", 1), mirrored, bare], nodes=TWO)
    assert [(w.name, w.node) for w in mesh.workloads] == [
        ("cart-0", "malab-auto-node-1"),
        ("curl", "malab-auto-node-2"),
    ]


def test_kube_proxy_picks_each_backend_with_equal_chance() -> None:
    rules = netns.nat_rules(
        captured=False,
        inbound=True,
        vip_dnat=[("198.19.0.1", 80, f"198.18.1.{i}", 8080) for i in (1, 2, 3)]
        + [("198.19.0.2", 80, "198.18.1.9", 80)],
    )
    lines = [line for line in rules.splitlines() if line.startswith("-A OUTPUT")]
    assert lines == [
        "-A OUTPUT -p tcp -d 198.19.0.1/32 --dport 80 -m statistic --mode random --probability 0.33333333333 -j DNAT --to-destination 198.18.1.1:8080",
        "-A OUTPUT -p tcp -d 198.19.0.1/32 --dport 80 -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 198.18.1.2:8080",
        "-A OUTPUT -p tcp -d 198.19.0.1/32 --dport 80 -j DNAT --to-destination 198.18.1.3:8080",
        "-A OUTPUT -p tcp -d 198.19.0.2/32 --dport 80 -j DNAT --to-destination 198.18.1.9:80",
    ]  # fmt: skip


def _probe_pod(run: str) -> dict[str, Any]:
    spread = {"topologyKey": nodes.HOSTNAME, "maxSkew": 1, "labelSelector": {"matchLabels": {"run": run}}}
    return {"metadata": {"namespace": "p", "labels": {"run": run}}, "spec": {"topologySpreadConstraints": [spread]}}


def test_topology_spread_places_a_runs_pods_on_the_least_used_node() -> None:
    placed: list[dict[str, Any]] = []
    for _ in range(4):
        pod = _probe_pod("a")
        pod["spec"]["nodeName"] = nodes.schedule(pod, TWO, placed)
        placed.append(pod)
    assert [p["spec"]["nodeName"] for p in placed] == [TWO[0], TWO[1], TWO[0], TWO[1]]
    # Another run's pods, or another namespace's, do not count; a pod without a constraint goes first.
    assert nodes.schedule(_probe_pod("b"), TWO, [placed[0]]) == TWO[0]
    other = {"metadata": {"namespace": "q", "labels": {"run": "a"}}, "spec": {"nodeName": TWO[0]}}
    assert nodes.schedule(_probe_pod("a"), TWO, [other]) == TWO[0]
    assert nodes.schedule({"metadata": {"namespace": "p"}, "spec": {}}, TWO, [placed[0]]) == TWO[0]
    with pytest.raises(nodes.NodeError):
        nodes.names(0)


def test_controllers_mirror_running_replicas_as_pods_and_an_endpoint_slice() -> None:
    objects = [NAMESPACE, _deployment("cart", 2), SERVICE]
    mesh = Mesh(objects, nodes=TWO, uncaptured_endpoint=())
    running = {"shop/cart-0": "198.18.1.1", "shop/cart-1": "198.18.1.2"}
    want = controllers.desired(objects, mesh, running)
    assert sorted(want.pods) == ["istio-system/ztunnel-malab-auto-node-1", "istio-system/ztunnel-malab-auto-node-2", "shop/cart-0", "shop/cart-1"]  # fmt: skip
    pod = want.pods["shop/cart-1"]
    assert pod["spec"]["nodeName"] == "malab-auto-node-2"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-cart"
    assert pod["metadata"]["labels"] == {"app": "cart", nodes.OWNED_BY: "replica"}
    # istio-cni redirected cart-0 only: the fault's replica never carries the annotation.
    assert want.pods["shop/cart-0"]["metadata"]["annotations"]["ambient.istio.io/redirection"] == "enabled"
    assert "ambient.istio.io/redirection" not in pod["metadata"]["annotations"]
    assert want.deployments == {"shop/cart": 2}
    slice_ = want.slices["shop/cart-lab"]
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "cart"
    assert slice_["ports"] == [{"port": 8080, "protocol": "TCP", "name": "web"}]  # the named targetPort resolved
    assert [(e["addresses"], e["nodeName"], e["targetRef"]["name"]) for e in slice_["endpoints"]] == [
        (["198.18.1.1"], "malab-auto-node-1", "cart-0"),
        (["198.18.1.2"], "malab-auto-node-2", "cart-1"),
    ]
    # A replica whose data plane is not in place yet is neither a Pod nor an endpoint.
    partial = controllers.desired(objects, mesh, {"shop/cart-0": "198.18.1.1"})
    assert "shop/cart-1" not in partial.pods
    assert [e["targetRef"]["name"] for e in partial.slices["shop/cart-lab"]["endpoints"]] == ["cart-0"]


WAYPOINT_OWNER = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp", "uid": "uid-gw"}
WAYPOINT_GATEWAY = {
    "kind": "Gateway",
    "metadata": {"name": "wp", "namespace": "shop", "uid": "uid-gw"},
    "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}
# What istiod renders from the chart's waypoint template (abridged): owned by the Gateway.
RENDERED_DEPLOYMENT = {
    "kind": "Deployment",
    "metadata": {"name": "wp", "namespace": "shop", "uid": "uid-wp-deploy", "ownerReferences": [WAYPOINT_OWNER]},
    "spec": {
        "template": {
            "metadata": {"labels": {"gateway.networking.k8s.io/gateway-name": "wp", "istio.io/dataplane-mode": "none"}},
            "spec": {"serviceAccountName": "wp", "containers": [{"name": "istio-proxy"}]},
        }
    },
}
RENDERED_SERVICE = {
    "kind": "Service",
    "metadata": {"name": "wp", "namespace": "shop", "uid": "uid-wp-svc", "ownerReferences": [WAYPOINT_OWNER]},
    "spec": {
        "selector": {"gateway.networking.k8s.io/gateway-name": "wp"},
        "ports": [
            {"name": "status-port", "port": 15021, "appProtocol": "http"},
            {"name": "mesh", "port": 15008, "appProtocol": "all"},
        ],
    },
}


def test_istiods_waypoint_objects_are_not_lab_workloads_but_get_the_lab_waypoint_pod() -> None:
    """istiod renders the waypoint's Deployment and Service: the lab runs the waypoint from the
    Gateway (no second pod, no Service of its own), and mirrors its pod into istiod's Deployment."""
    objects = [NAMESPACE, WAYPOINT_GATEWAY, RENDERED_DEPLOYMENT, RENDERED_SERVICE]
    mesh = Mesh(objects, nodes=TWO)
    assert mesh.workloads == []
    assert mesh.services == []
    assert [w.key for w in mesh.all_workloads()] == ["shop/wp"]
    want = controllers.desired(objects, mesh, {"shop/wp": "198.18.1.9"})
    pod = want.pods["shop/wp"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-wp-deploy"
    assert pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "wp"
    assert "ambient.istio.io/redirection" not in pod["metadata"]["annotations"]  # istio-cni never redirects it
    assert want.pod_ips["shop/wp"] == "198.18.1.9"
    assert want.deployments == {"shop/wp": 1}
    slice_ = want.slices["shop/wp-lab"]
    assert [(p["name"], p["port"]) for p in slice_["ports"]] == [("status-port", 15021), ("mesh", 15008)]
    assert [(e["addresses"], e["targetRef"]["name"]) for e in slice_["endpoints"]] == [(["198.18.1.9"], "wp")]
    # Before the lab's Envoy runs: no pod, an empty slice, 0 ready.
    idle = controllers.desired(objects, mesh, {})
    assert "shop/wp" not in idle.pods
    assert idle.slices["shop/wp-lab"]["endpoints"] == []
    assert idle.deployments == {"shop/wp": 0}
