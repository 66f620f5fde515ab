"""Waypoints on the real data plane (#12): the lab's Envoy waypoint between two real ztunnels.

istiod binds the catalog Service to the ``catalog-waypoint`` Gateway (the retail store's
``istio.io/use-waypoint`` label) and renders its Deployment; the node runs the lab's Envoy in the
waypoint pod's namespace (``testrigs.lab.realwaypoint``) with a certificate for
``sa/catalog-waypoint`` from the CA plugged into istiod. The real ztunnel sends Service traffic
to it over HBONE; it applies the targetRefs policies and tunnels on to catalog's ztunnel. These
are the walkthrough's waypoint observations, now with ztunnel's own enforcement on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography import x509

from testrigs.lab.realnode import RealNode
from tests.lab import labkit, realkit

CATALOG = realkit.CATALOG
WAYPOINT_POD = "default/catalog-waypoint-0"
WAYPOINT_ID = "spiffe://cluster.local/ns/default/sa/catalog-waypoint"
RESET_BODY = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"


@pytest.fixture(scope="module")
def node() -> Iterator[RealNode]:
    the_node = realkit.started_node()
    try:
        the_node.kubectl("apply", "-f", "-", stdin=labkit.WAYPOINT)
        realkit.wait_waypoint(the_node)
        yield the_node
    finally:
        realkit.stop_node(the_node)


def _policy(node: RealNode, manifest: str | None) -> None:
    """Replace the AuthorizationPolicy ``default/catalog`` and give the waypoint the new set."""
    node.kubectl("delete", "authorizationpolicy", "--all", "--namespace=default", "--wait=true")
    if manifest:
        node.kubectl("apply", "-f", "-", stdin=manifest)
    node.sync_pods()


@pytest.fixture
def policies(node: RealNode) -> Iterator[None]:
    try:
        yield
    finally:
        _policy(node, None)


def test_waypoint_identity_is_issued_by_the_ca_istiod_signs_with(node: RealNode) -> None:
    status = node.status()
    assert [(w["pod"], w["running"]) for w in status["waypoints"]] == [(WAYPOINT_POD, True)]
    directory = node.node_dir / "waypoints" / WAYPOINT_POD.replace("/", "__")
    cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [WAYPOINT_ID]
    # istiod publishes the plugged-in root: the one the waypoint's certificate chains to.
    published = node.kubectl(
        "get", "configmap", "istio-ca-root-cert", "--namespace=default", "--output=jsonpath={.data.root-cert\\.pem}"
    )
    root = x509.load_pem_x509_certificate(published.encode())
    assert cert.issuer == root.subject
    cert.verify_directly_issued_by(root)


def test_service_traffic_goes_through_the_waypoint(node: RealNode) -> None:
    result = node.exec("default/ui-0", ["curl", "-s", "-D-", "--max-time", "10", CATALOG], timeout=20)
    head, _, body = result.stdout.partition("\n\n")  # text mode: curl's CRLF reads as LF
    assert (result.returncode, body) == (0, labkit.CATALOG_TAGS)
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head.splitlines()[1:]}
    assert headers["server"] == "istio-envoy"  # the waypoint answered, not catalog's app directly
    assert "x-envoy-upstream-service-time" in headers
    # ztunnel's config names the waypoint istiod bound to the Service (not the lab's doing).
    service = next(s for s in node.config_dump()["services"] if s["hostname"] == "catalog.default.svc.cluster.local")
    assert service["waypoint"]["destination"] == "default/catalog-waypoint.default.svc.cluster.local"


@pytest.mark.usefixtures("policies")
def test_l4_allow_for_ui_behind_the_waypoint_gives_upstream_connect_error(node: RealNode) -> None:
    """catalog's ztunnel sees the waypoint's identity, not ui's: the walkthrough's reset (§4.5)."""
    _policy(node, labkit.CATALOG_L4_ALLOW_UI)
    assert realkit.eventually_body(RESET_BODY, node, "default/ui-0", CATALOG) == RESET_BODY
    result = node.exec("default/ui-0", ["curl", "-s", "-o/dev/null", "-w%{http_code}", CATALOG], timeout=20)
    assert result.stdout == "503"


@pytest.mark.usefixtures("policies")
def test_targetrefs_allow_restores_ui_and_denies_others_with_rbac(node: RealNode) -> None:
    _policy(node, labkit.WAYPOINT_ALLOW_UI)
    # The previous test's L4 policy leaves ztunnel within a push: poll for the first answer.
    assert realkit.eventually_body(labkit.CATALOG_TAGS, node, "default/ui-0", CATALOG) == labkit.CATALOG_TAGS
    assert realkit.curl(node, "default/curl-pod", CATALOG) == (0, "RBAC: access denied")
    result = node.exec("default/curl-pod", ["curl", "-s", "-o/dev/null", "-w%{http_code}", CATALOG], timeout=20)
    assert result.stdout == "403"


@pytest.mark.usefixtures("policies")
def test_header_policy_denies_without_the_token_and_admits_with_it(node: RealNode) -> None:
    """The walkthrough's last step: ``RBAC: access denied`` without x-auth-token, the JSON with it."""
    _policy(node, labkit.WAYPOINT_ALLOW_UI_WITH_TOKEN)
    denied = "RBAC: access denied"
    assert realkit.eventually_body(denied, node, "default/ui-0", CATALOG) == denied
    token = "x-auth-token: internal-retail-token"
    assert realkit.curl(node, "default/ui-0", CATALOG, token) == (0, labkit.CATALOG_TAGS)
    # The identity still counts: curl-pod with the token is denied by principal.
    assert realkit.curl(node, "default/curl-pod", CATALOG, token) == (0, "RBAC: access denied")


@pytest.mark.usefixtures("policies")
def test_pod_address_bypasses_a_service_waypoint(node: RealNode) -> None:
    """ztunnel sends only Service-addressed traffic to a service waypoint: the pod IP skips L7 policy."""
    _policy(node, labkit.WAYPOINT_ALLOW_UI)
    record = node.load()
    assert record is not None
    pod_url = f"http://{record.pods['default/catalog-0']['ip']}:8080/catalog/tags"
    assert realkit.curl(node, "default/curl-pod", CATALOG) == (0, "RBAC: access denied")
    assert realkit.eventually_body(labkit.CATALOG_TAGS, node, "default/curl-pod", pod_url) == labkit.CATALOG_TAGS
