"""Helpers for the lab tests: manifests, mesh-object replacement, curl in a pod, leftover checks."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testrigs.devtools.controlplane import ControlPlaneError
from testrigs.lab import netns
from testrigs.lab.lab import Lab, Record
from testrigs.lab.realnode import RealNodeError

SetMesh = Callable[..., None]
Probe = Callable[..., dict[str, Any]]

REPO = Path(__file__).resolve().parents[2]
RETAIL = REPO / "examples" / "retail-store"
HERE = Path(__file__).resolve().parent / "manifests"
BASE_MANIFESTS = [RETAIL / "00-namespaces.yaml", RETAIL / "10-retail-store.yaml", HERE / "clients.yaml"]
MESH_KINDS = (
    "peerauthentications.security.istio.io,authorizationpolicies.security.istio.io,gateways.gateway.networking.k8s.io"
)
CATALOG_TAGS = (
    '[{"name":"accessories","displayName":"Accessories"},{"name":"clothing","displayName":"Clothing"},'
    '{"name":"food","displayName":"Food"},{"name":"vehicles","displayName":"Vehicles"}]'
)

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
CATALOG_L4_ALLOW_UI = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog, namespace: default}
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: catalog, app.kubernetes.io/component: service}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/ui]}
"""
# catalog's L4 allow-list (ztunnel): only sa/ui; both labs' e2e audits apply it.
CATALOG_L4_POLICY = CATALOG_L4_ALLOW_UI.replace("{name: catalog,", "{name: catalog-l4,")
WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: catalog-waypoint
  namespace: default
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""
WAYPOINT_ALLOW_UI = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: catalog-waypoint}]
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/ui]}
"""
WAYPOINT_ALLOW_UI_WITH_TOKEN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: catalog-waypoint}]
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/ui]}
    when:
    - key: request.headers[x-auth-token]
      values: ["internal-retail-token"]
"""


def replace_mesh_objects(lab: Lab, manifest: str) -> None:
    """Delete every policy and Gateway, then apply ``manifest`` (may be empty)."""
    kube = lab.kube()
    kube.kubectl("delete", MESH_KINDS, "--all", "--all-namespaces", "--wait=false")
    if manifest.strip():
        kube.apply_text(manifest)


def curl(lab: Lab, pod: str, url: str, *headers: str) -> tuple[int, str]:
    """curl -s as in the walkthrough, from inside the pod: (exit code, stdout)."""
    argv = ["curl", "-s", "--max-time", "10", *(f"-H{h}" for h in headers), url]
    result = lab.exec(pod, argv, timeout=20)
    return result.returncode, result.stdout


def assert_gone(state_dir: Path, record: Record) -> None:
    """Nothing the lab created survives: namespaces, processes, /etc/netns files, the state dir."""
    prefix = f"{netns.PREFIX}{record.lab_id}-"
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in listing, listing
    assert not any(path.name.startswith(prefix) for path in netns.ETC_NETNS.glob("*"))
    assert [name for name, proc in record.procs.items() if proc.running()] == []
    assert not state_dir.exists()


def hbone_handshakes(lab: Lab, pod: str) -> int:
    """TLS handshakes completed on the pod's inbound :15008 (its ztunnel's HBONE stand-in)."""
    stats = lab.envoy_admin(pod, "/stats?filter=^listener.0.0.0.0_15008.ssl.handshake$")
    return int(stats.split(":")[1]) if ":" in stats else 0


def peer_identity(lab: Lab, pod: str) -> str:
    """The URI SAN of the certificate the pod's proxy presents."""
    certs = json.loads(lab.envoy_admin(pod, "/certs"))
    for entry in certs["certificates"]:
        for chain in entry.get("cert_chain", []):
            for san in chain.get("subject_alt_names", []):
                if "uri" in san:
                    return str(san["uri"])
    return ""


# --- auditor check --active in a lab (test_e2e_audit on the emulated lab, test_real_e2e_audit on the real node)

RULES = Path(__file__).resolve().parent / "rules"
RETAIL_RULES = RULES / "retail-store-control.yaml"
CONTROL_ROLE = REPO / "deploy" / "control-probes-default.yaml"
AUDITOR = "system:serviceaccount:mesh-auditor:mesh-auditor"
PROBE_CHECKS = ("strict-mtls.probe", "principal-allowlist.probe", "required-headers.probe", "waypoint-enrollment.probe")
AUDIT_ENV = {
    "AUDITOR_PROBES__CONTROL_ENABLED": "true",
    "AUDITOR_PROBES__DEADLINE_S": "60",
    "AUDITOR_PROBES__REQUEST_TIMEOUT_S": "2",
    # By Service name only: these tests pin the four by-name verdicts; probing by pod IP is
    # tested in test_endpoints.py (replicas on two nodes, one not captured).
    "AUDITOR_PROBES__ENDPOINTS_PER_CYCLE": "0",
}


def wait_until_auditor_may_create_pods(kubectl: Callable[..., object]) -> None:
    """RBAC reaches the authorizer through an informer: wait until the control Role has.

    ``kubectl``: the lab's (``KubeAPI.kubectl`` or ``RealNode.kubectl``), raising for a non-zero exit.
    """
    for _ in range(100):
        try:
            kubectl("auth", "can-i", "create", "pods", "--namespace=default", f"--as={AUDITOR}")
        except (ControlPlaneError, RealNodeError):  # kubectl exits 1 for "no"
            time.sleep(0.1)
        else:
            return
    pytest.fail("the control Role never took effect")


def probe_findings(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The probe findings for default/catalog in an ``--output json`` document, by check."""
    return {f["check"]: f for f in document["findings"] if f["method"] == "probe" and f["target"] == "default/catalog"}


def probe_statuses(document: dict[str, Any]) -> dict[str, str]:
    return {check: f["status"] for check, f in probe_findings(document).items()}


# The Service istiod renders for the waypoint: Istio's infrastructure, whose static findings the
# auditor skips by design (semantics §10); both labs run the real istiod, so it is in every audit.
ISTIOD_RENDERED = frozenset({"default/catalog-waypoint"})


def static_failures(document: dict[str, Any]) -> list[str]:
    """Static findings other than a pass, leaving out the skips of istiod's waypoint Service."""
    return [
        f"{f['target']} {f['check']}"
        for f in document["findings"]
        if f["method"] == "static"
        and f["status"] != "pass"
        and not (f["status"] == "skipped" and f["target"] in ISTIOD_RENDERED)
    ]


def sent_from(finding: dict[str, Any]) -> set[str]:
    """The namespaces of the probe pods a finding's evidence names ("sent from Pod ns/name")."""
    found = set()
    for evidence in finding["evidence"]:
        text = json.dumps(evidence)
        if "sent from Pod " in text:
            found.add(text.split("sent from Pod ", 1)[1].split("/", 1)[0])
    return found
