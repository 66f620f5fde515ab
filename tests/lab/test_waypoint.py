"""Stage 3: the waypoint - L7 policy, the waypoint-identity pitfall, and what bypasses it."""

from __future__ import annotations

import json

import pytest

from testrigs.lab.lab import Lab
from tests.lab import labkit
from tests.lab.labkit import Probe, SetMesh

pytestmark = pytest.mark.lab
CATALOG = "http://catalog/catalog/tags"
TOKEN = {"x-auth-token": "internal-retail-token"}


def test_l4_allow_for_ui_behind_the_waypoint_gives_upstream_connect_error(
    lab: Lab, mesh: SetMesh, probe: Probe
) -> None:
    """Catalog's ztunnel sees the waypoint's identity, not ui's: 503 as in the walkthrough (§4.5)."""
    mesh(labkit.STRICT, labkit.CATALOG_L4_ALLOW_UI, labkit.WAYPOINT)
    result = probe("default/ui-0", CATALOG)
    assert (result["outcome"], result["evidence"]["status"]) == ("upstream-error", 503)
    expected = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    assert labkit.curl(lab, "default/ui-0", CATALOG) == (0, expected)


def test_targetrefs_allow_restores_ui_through_the_waypoint(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """The walkthrough's fix: the waypoint checks ui's own identity; curl-pod gets RBAC's 403."""
    mesh(labkit.STRICT, labkit.WAYPOINT, labkit.WAYPOINT_ALLOW_UI)
    ui = probe("default/ui-0", CATALOG)
    assert (ui["outcome"], ui["evidence"]["body_prefix"]) == ("allowed", labkit.CATALOG_TAGS)
    headers = ui["evidence"]["headers"]
    assert headers["server"] == "istio-envoy"
    assert "x-envoy-upstream-service-time" in headers
    denied = probe("default/curl-pod", CATALOG)
    assert (denied["outcome"], denied["evidence"]["body_prefix"]) == ("l7-denied", "RBAC: access denied")


def test_header_policy_denies_without_the_token_and_admits_with_it(lab: Lab, mesh: SetMesh) -> None:
    """``RBAC: access denied`` without x-auth-token, the JSON with it (the walkthrough's last step)."""
    mesh(labkit.STRICT, labkit.WAYPOINT, labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN)
    assert labkit.curl(lab, "default/ui-0", CATALOG) == (0, "RBAC: access denied")
    with_token = labkit.curl(lab, "default/ui-0", CATALOG, "x-auth-token: internal-retail-token")
    assert with_token == (0, labkit.CATALOG_TAGS)


def test_waypoint_adds_a_request_id_the_backend_sees(lab: Lab, mesh: SetMesh) -> None:
    """L7 processing is visible at the backend as X-Request-Id (§1.7b); the direct path has none."""
    mesh(labkit.WAYPOINT)
    _, through = labkit.curl(lab, "default/ui-0", "http://catalog/echo")
    assert "x-request-id" in {k.lower() for k in json.loads(through)["headers"]}
    _, direct = labkit.curl(lab, "default/ui-0", "http://orders/echo")
    assert "x-request-id" not in {k.lower() for k in json.loads(direct)["headers"]}


def test_out_of_mesh_and_pod_ip_traffic_bypass_the_waypoint(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """Without STRICT, the curl namespace and pod-IP requests skip the header policy (§4.6)."""
    mesh(labkit.WAYPOINT, labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN)
    outside = probe("curl/curl-pod", "http://catalog.default/catalog/tags")
    assert outside["outcome"] == "allowed"
    assert outside["evidence"]["headers"].get("server") != "istio-envoy"
    record = lab.load()
    assert record is not None
    pod_ip = record.pods["default/catalog-0"].ip
    by_ip = probe("default/curl-pod", f"http://{pod_ip}:8080/catalog/tags")
    assert by_ip["outcome"] == "allowed"
    assert probe("default/curl-pod", CATALOG)["outcome"] == "l7-denied"


def test_unresolved_waypoint_sends_traffic_straight_to_the_pod(mesh: SetMesh, probe: Probe) -> None:
    """A use-waypoint label naming no ready waypoint fails open: L7 policy is not applied (§4.7)."""
    typo = labkit.WAYPOINT.replace("name: catalog-waypoint", "name: catalog-waypiont")
    mesh(labkit.STRICT, typo, labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN)
    result = probe("default/curl-pod", CATALOG)
    assert result["outcome"] == "allowed"
    assert result["evidence"]["headers"].get("server") != "istio-envoy"


def test_waypoint_runs_with_its_gateway_identity(lab: Lab, mesh: SetMesh) -> None:
    """The waypoint presents spiffe://cluster.local/ns/default/sa/catalog-waypoint (§2)."""
    mesh(labkit.WAYPOINT)
    assert (
        labkit.peer_identity(lab, "default/catalog-waypoint") == "spiffe://cluster.local/ns/default/sa/catalog-waypoint"
    )
