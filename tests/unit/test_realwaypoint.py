"""The real-ztunnel node's waypoint config and fault specs (pure functions of testrigs.lab; no lab needed).

The lab tests (tests/lab/test_real_waypoint.py, test_real_faults.py) prove the behaviour on the
wire; these pin which input produces which Envoy config and which fault spec is refused, so a
failure there is told apart from a change here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from testrigs.devtools import istio
from testrigs.lab import mesh, realnode, realwaypoint
from testrigs.lab.envoyconf import Certs
from testrigs.lab.mesh import Mesh
from tests.lab import labkit

CERTS = Certs("/w/cert.pem", "/w/key.pem", "/w/ca.crt")
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "catalog", "namespace": "default", "labels": {"istio.io/use-waypoint": "catalog-waypoint"}},
    "spec": {"selector": {"app": "catalog"}, "ports": [{"port": 80, "targetPort": "http"}]},
}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}


def _pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "catalog"}},
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip},
    }


def _resources(*extra: str, captured: frozenset[str] = frozenset({"default/catalog-0"})) -> dict[str, Any]:
    objects = [NAMESPACE, SERVICE, *(o for text in (labkit.WAYPOINT, *extra) for o in yaml.safe_load_all(text))]
    model = Mesh(objects)
    resources = realwaypoint.resources(
        model,
        model.waypoints[0],
        {"default/catalog": "10.0.0.7"},
        [_pod("catalog-0", "198.18.128.5"), _pod("catalog-1", "198.18.128.6")],
        captured=captured,
        certs=CERTS,
    )
    return {
        "listeners": {str(item["name"]): item for item in resources.listeners},
        "clusters": {str(item["name"]): item for item in resources.clusters},
    }


def test_connect_authority_vip_port_routes_into_the_service_listener() -> None:
    config = _resources()
    hbone = config["listeners"]["hbone"]
    manager = hbone["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    assert host["domains"] == ["10.0.0.7:80"]
    assert host["routes"][0]["route"]["cluster"] == "svc|default/catalog|80"
    assert manager["http2_protocol_options"] == {"allow_connect": True}
    tls = hbone["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_3"


def test_captured_backend_is_tunnelled_with_its_pod_address_and_named_port_others_get_tcp() -> None:
    config = _resources()
    tunnel = config["listeners"]["tunnel|198.18.128.5|8080"]
    proxy = tunnel["filter_chains"][0]["filters"][0]["typed_config"]
    assert (proxy["cluster"], proxy["tunneling_config"]) == ("hbone|198.18.128.5", {"hostname": "198.18.128.5:8080"})
    outer = config["clusters"]["hbone|198.18.128.5"]
    address = outer["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "198.18.128.5", "port_value": 15008}
    assert "plain|198.18.128.6|8080" in config["clusters"]  # catalog-1 is not redirected
    assert "tunnel|198.18.128.6|8080" not in config["listeners"]


def test_principals_are_matched_on_the_peer_identity_carried_in_filter_state() -> None:
    config = _resources(labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN)
    manager = config["listeners"]["svc|default/catalog|80"]["filter_chains"][0]["filters"][0]["typed_config"]
    text = repr(manager["http_filters"])
    assert "authenticated" not in text
    assert realwaypoint.PEER_PRINCIPAL in text
    assert "x-auth-token" in text
    assert "cluster.local/ns/default/sa/ui" in text


def _labelled(text: str, revision: str) -> str:
    document = yaml.safe_load(text)
    document["metadata"]["labels"] = {"istio.io/rev": revision}
    return yaml.safe_dump(document)


@pytest.mark.parametrize(("revision", "enforced"), [("canary", False), ("default", True), ("", False)])
def test_a_policy_of_another_revision_never_reaches_the_waypoint(revision: str, enforced: bool) -> None:
    """The lab's istiod runs revision "default" (LabelsInRevision): a targetRefs policy labelled
    another revision (or an empty one) is not read, so the waypoint gets no RBAC from it."""
    config = _resources(_labelled(labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN, revision))
    manager = config["listeners"]["svc|default/catalog|80"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert ("cluster.local/ns/default/sa/ui" in repr(manager["http_filters"])) is enforced


def test_the_labs_istiod_revision_is_the_one_the_harness_istiod_runs() -> None:
    assert mesh.ISTIOD_REVISION == istio.REVISION == istio.istiod_env(Path("/k"))["REVISION"]


def test_revision_filter_leaves_out_peer_authentications_and_keeps_gateways() -> None:
    permissive = {
        "kind": "PeerAuthentication",
        "metadata": {"name": "p", "namespace": "default", "labels": {"istio.io/rev": "canary"}},
        "spec": {"mtls": {"mode": "PERMISSIVE"}},
    }
    gateway = yaml.safe_load(labkit.WAYPOINT)
    gateway["metadata"]["labels"]["istio.io/rev"] = "canary"
    model = Mesh([NAMESPACE, permissive, gateway])
    assert (model.peer_authentications, [w.key for w in model.waypoints]) == ([], ["default/catalog-waypoint"])
    everything = Mesh([NAMESPACE, permissive], revision="")
    assert everything.peer_authentications == [permissive]


def test_a_service_without_the_waypoint_label_gets_no_listener() -> None:
    unlabelled = {**SERVICE, "metadata": {"name": "catalog", "namespace": "default"}}
    model = Mesh([NAMESPACE, unlabelled, *yaml.safe_load_all(labkit.WAYPOINT)])
    resources = realwaypoint.resources(
        model, model.waypoints[0], {"default/catalog": "10.0.0.7"}, [], captured=frozenset(), certs=CERTS
    )
    assert (resources.listeners, resources.clusters) == ([], [])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("ztunnel-sleepy", "unknown fault 'ztunnel-sleepy'"),
        ("uncaptured-pod", "uncaptured-pod=NAMESPACE/NAME"),
        ("uncaptured-pod=default/", "uncaptured-pod=NAMESPACE/NAME"),
        ("ztunnel-restart=0", "between 1 and 3600"),
        ("ztunnel-restart=nan", "between 1 and 3600"),
        ("ztunnel-down=node-2", "no node 'node-2'"),
    ],
)
def test_bad_fault_specs_are_refused_with_the_reason(spec: str, words: str) -> None:
    with pytest.raises(realnode.FaultError, match=words.replace("(", r"\(")):
        realnode.parse_faults([spec])


def test_fault_specs_give_the_restart_period_and_the_withheld_pods() -> None:
    faults = realnode.parse_faults(["ztunnel-restart=4", "uncaptured-pod=default/ui-0", "ztunnel-down"])
    assert realnode.restart_period(faults) == 4.0
    assert realnode.restart_period(["ztunnel-restart"]) == realnode.DEFAULT_RESTART_PERIOD_S
    assert realnode.restart_period([]) is None
    assert realnode.withheld_pods(faults) == frozenset({"default/ui-0"})
