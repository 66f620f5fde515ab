"""Stage 2: ztunnel emulation - capture, mTLS with SPIFFE identities, PeerAuthentication, L4 policy."""

from __future__ import annotations

import pytest

from testrigs.lab import netns
from testrigs.lab.lab import Lab
from tests.lab import labkit
from tests.lab.labkit import Probe, SetMesh

pytestmark = pytest.mark.lab
CATALOG = "http://catalog.default/catalog/tags"


def test_captured_pods_talk_mtls_with_their_spiffe_identity(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """ui -> catalog arrives on catalog's :15008 over TLS, presenting ui's SPIFFE certificate."""
    mesh()
    before = labkit.hbone_handshakes(lab, "default/catalog-0")
    assert probe("default/ui-0", CATALOG)["outcome"] == "allowed"
    assert labkit.hbone_handshakes(lab, "default/catalog-0") > before
    assert labkit.peer_identity(lab, "default/ui-0") == "spiffe://cluster.local/ns/default/sa/ui"


def test_out_of_mesh_client_is_admitted_without_peer_authentication(mesh: SetMesh, probe: Probe) -> None:
    """No PeerAuthentication = PERMISSIVE: plaintext from the curl namespace gets the JSON (§3)."""
    mesh()
    assert probe("curl/curl-pod", CATALOG)["outcome"] == "allowed"


def test_strict_refuses_the_out_of_mesh_client_like_the_walkthrough(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """Mesh-wide STRICT: the curl namespace's request is closed (curl 56, or 52), in-mesh ones pass (§1.2)."""
    mesh(labkit.STRICT)
    assert probe("curl/curl-pod", CATALOG)["outcome"] == "l4-denied"
    assert labkit.curl(lab, "curl/curl-pod", CATALOG)[0] in (52, 56)
    assert probe("default/curl-pod", "http://catalog/catalog/tags")["outcome"] == "allowed"


def test_port_level_permissive_overrides_mesh_strict(mesh: SetMesh, probe: Probe) -> None:
    """A workload PeerAuthentication's portLevelMtls (container port 8080) re-admits plaintext (§3)."""
    override = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: catalog-port, namespace: default}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: catalog}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: PERMISSIVE}}
"""
    mesh(labkit.STRICT, override)
    assert probe("curl/curl-pod", CATALOG)["outcome"] == "allowed"
    assert probe("curl/curl-pod", "http://orders.default/echo")["outcome"] == "l4-denied"


def test_namespace_permissive_overrides_mesh_strict_and_root_selector_is_ignored(mesh: SetMesh, probe: Probe) -> None:
    """Namespace PERMISSIVE beats mesh STRICT; a selector policy in istio-system is ignored (§3)."""
    namespace = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: catalog}}
  mtls: {mode: STRICT}
"""
    mesh(labkit.STRICT, namespace)
    assert probe("curl/curl-pod", CATALOG)["outcome"] == "allowed"


def test_l4_allow_admits_ui_and_refuses_curl_pod_like_the_walkthrough(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """The catalog selector policy: ui passes, the in-mesh curl-pod is reset (curl 56, §1.1)."""
    mesh(labkit.STRICT, labkit.CATALOG_L4_ALLOW_UI)
    assert probe("default/curl-pod", "http://catalog/catalog/tags")["outcome"] == "l4-denied"
    assert labkit.curl(lab, "default/curl-pod", "http://catalog/catalog/tags")[0] in (52, 56)
    ui = probe("default/ui-0", "http://catalog/catalog/tags")
    assert (ui["outcome"], ui["evidence"]["body_prefix"]) == ("allowed", labkit.CATALOG_TAGS)
    assert probe("default/curl-pod", "http://orders/echo")["outcome"] == "allowed"


def test_deny_beats_allow_and_namespace_deny_applies(mesh: SetMesh, probe: Probe) -> None:
    """A namespace-wide DENY for ui wins over the selector ALLOW for ui (§4.4)."""
    deny = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-ui, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/ui]}
"""
    mesh(labkit.CATALOG_L4_ALLOW_UI, deny)
    assert probe("default/ui-0", "http://catalog/catalog/tags")["outcome"] == "l4-denied"
    assert probe("default/ui-0", "http://orders/echo")["outcome"] == "l4-denied"
    assert probe("default/curl-pod", "http://orders/echo")["outcome"] == "allowed"


def test_l7_rule_bound_to_ztunnel_is_dropped_and_denies_everyone(mesh: SetMesh, probe: Probe) -> None:
    """An ALLOW whose only rule needs a header is dropped at ztunnel: the workload denies all (§4.3)."""
    l7_at_ztunnel = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog-header, namespace: default}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: catalog}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/ui]}
    when:
    - key: request.headers[x-auth-token]
      values: ["internal-retail-token"]
"""
    mesh(l7_at_ztunnel)
    result = probe("default/ui-0", "http://catalog/catalog/tags", {"x-auth-token": "internal-retail-token"})
    assert result["outcome"] == "l4-denied"


def test_opted_out_pod_is_not_captured(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """Pods of the curl namespace run no proxy and have no capture rules; default's pods do (§2)."""
    mesh()
    assert "REDIRECT --to-ports 15001" in netns.nat_table(lab.netns_of("default/ui-0"))
    assert "REDIRECT" not in netns.nat_table(lab.netns_of("curl/curl-pod"))
    record = lab.load()
    assert record is not None
    assert "envoy:default/ui-0" in record.procs
    assert "envoy:curl/curl-pod" not in record.procs


def test_enrolling_a_namespace_live_captures_its_pods(lab: Lab, mesh: SetMesh, probe: Probe) -> None:
    """Labelling namespace curl ambient starts curl-pod's proxy: STRICT then admits it; unlabelling reverts."""
    mesh(labkit.STRICT)
    kube = lab.kube()
    try:
        kube.kubectl("label", "namespace", "curl", "istio.io/dataplane-mode=ambient")
        lab.reconcile()
        assert probe("curl/curl-pod", CATALOG)["outcome"] == "allowed"
        assert labkit.peer_identity(lab, "curl/curl-pod") == "spiffe://cluster.local/ns/curl/sa/default"
    finally:
        kube.kubectl("label", "namespace", "curl", "istio.io/dataplane-mode-")
        lab.reconcile()
    assert probe("curl/curl-pod", CATALOG)["outcome"] == "l4-denied"
