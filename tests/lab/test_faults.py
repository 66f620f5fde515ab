"""Stage 4: planted faults - the data plane diverges from config in exactly the named way."""

from __future__ import annotations

import pytest

from tests.lab import labkit
from tests.lab.labkit import Probe, SetMesh

pytestmark = pytest.mark.lab
CATALOG = "http://catalog/catalog/tags"


def test_strict_not_enforced_accepts_plaintext(mesh: SetMesh, probe: Probe) -> None:
    """STRICT in config, yet the out-of-mesh client gets the JSON."""
    mesh(labkit.STRICT, faults=("strict-not-enforced",))
    assert probe("curl/curl-pod", "http://catalog.default/catalog/tags")["outcome"] == "allowed"


def test_l4_allow_all_ignores_the_selector_policy(mesh: SetMesh, probe: Probe) -> None:
    """The catalog ALLOW for ui is in config, yet curl-pod gets through."""
    mesh(labkit.CATALOG_L4_ALLOW_UI, faults=("l4-allow-all",))
    assert probe("default/curl-pod", CATALOG)["outcome"] == "allowed"


def test_waypoint_bypassed_skips_the_l7_policy(mesh: SetMesh, probe: Probe) -> None:
    """Service traffic goes straight to the pod: no RBAC, no istio-envoy server header."""
    mesh(labkit.STRICT, labkit.WAYPOINT, labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN, faults=("waypoint-bypassed",))
    result = probe("default/curl-pod", CATALOG)
    assert result["outcome"] == "allowed"
    assert result["evidence"]["headers"].get("server") != "istio-envoy"


def test_header_not_enforced_admits_ui_without_the_token(mesh: SetMesh, probe: Probe) -> None:
    """The waypoint still checks the principal but no longer the header."""
    mesh(labkit.STRICT, labkit.WAYPOINT, labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN, faults=("header-not-enforced",))
    ui = probe("default/ui-0", CATALOG)
    assert ui["outcome"] == "allowed"
    assert ui["evidence"]["headers"]["server"] == "istio-envoy"
    assert probe("default/curl-pod", CATALOG)["outcome"] == "l7-denied"


def test_service_down_stops_only_the_named_service(mesh: SetMesh, probe: Probe) -> None:
    """catalog's app is gone (connections are closed by its ztunnel); orders still answers."""
    mesh(faults=("service-down=default/catalog",))
    assert probe("default/ui-0", CATALOG)["outcome"] == "l4-denied"
    assert probe("default/ui-0", "http://orders/echo")["outcome"] == "allowed"


def test_faults_are_lifted_by_the_next_reconcile(mesh: SetMesh, probe: Probe) -> None:
    """Clearing the faults restores enforcement: the fault is the only difference."""
    mesh(labkit.STRICT, faults=("strict-not-enforced",))
    mesh(labkit.STRICT)
    assert probe("curl/curl-pod", "http://catalog.default/catalog/tags")["outcome"] == "l4-denied"
