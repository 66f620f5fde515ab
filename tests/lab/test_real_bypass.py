"""The pod-IP waypoint bypass on the real data plane (#12; semantics §4.6): found, fixed, fixed for real.

The emulated lab's fault ``waypoint-bypassed`` (its ztunnels send Service traffic straight to the
pods) has no form on the real ztunnel, which always honours istiod's binding. Its real-world form
is traffic addressed to a pod IP: the real ztunnel sends an in-mesh caller's request for
catalog's pod straight to the pod (a ``waypoint-for: service`` waypoint is for Service-addressed
traffic only, ztunnel ``proxy/outbound.rs``), so the retail store's L7 policy at the waypoint is
never applied to it. The auditor finds it by probing endpoints by pod IP
(``probes.endpoints_per_cycle``, default 16): ``waypoint-enrollment.pod-ip-bypass``.

One node for the module (``realkit.audited_node``: istiod, the CNI-agent stand-in, the real
ztunnel, the retail store's final state, the auditor's ``deploy/``, the control Role, the
kubelet). The same settings as ``test_real_e2e_audit`` except that endpoints are probed.

1. As shipped: pod-ip-bypass FAILs, naming catalog's pod; the four by-name probes PASS.
2. The finding's own ``remediation_yaml`` applied (a ztunnel-enforced ALLOW admitting only the
   waypoint's identity), once the real ztunnel holds it: pod-ip-bypass PASSes (the real ztunnel
   refuses the intruder at the pod), and the four by-name probes still PASS (the waypoint's own
   identity is admitted). The model's fix works on the real data plane.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from auditor.cli import main
from testrigs.lab.realnode import RealNode
from tests.lab import labkit, realkit

pytestmark = pytest.mark.lab

BYPASS = "waypoint-enrollment.pod-ip-bypass"
MESH_POLICY = labkit.RETAIL / "20-mesh-policy.yaml"
TOKEN = "x-auth-token: internal-retail-token"
# The by-name settings of the e2e audit, with catalog's endpoint probed by pod IP (the default).
ENV = {**labkit.AUDIT_ENV, "AUDITOR_PROBES__ENDPOINTS_PER_CYCLE": "16"}
WAYPOINT_IDENTITY = "cluster.local/ns/default/sa/catalog-waypoint"
POLICY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def node() -> Iterator[RealNode]:
    """The settled retail store with its mesh policy, the auditor deployed, the kubelet running."""
    the_node = realkit.audited_node(MESH_POLICY, TOKEN)
    try:
        yield the_node
    finally:
        realkit.stop_node(the_node)


def _audit(node: RealNode, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    """``auditor check --active --output json`` in-process as the auditor's ServiceAccount."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    argv = ["check", "--kubeconfig", str(node.auditor_kubeconfig), "--rules", str(labkit.RETAIL_RULES)]
    started = time.monotonic()
    code = main([*argv, "--active", "--output", "json"], stdout=out)
    document: dict[str, Any] = json.loads(out.getvalue())
    verdicts = {c: f"{f['status']}: {f['message'][:120]}" for c, f in labkit.probe_findings(document).items()}
    print(f"\nauditor check --active (endpoints probed): exit {code} in {time.monotonic() - started:.1f} s:", verdicts)
    return code, document


def _evidence(document: dict[str, Any]) -> str:
    return json.dumps({c: [f["message"], f["evidence"]] for c, f in labkit.probe_findings(document).items()})[-6000:]


def _pod_url(node: RealNode) -> str:
    return f"http://{_catalog_pod_ip(node)}:8080/catalog/tags"


def _catalog_pod_ip(node: RealNode) -> str:
    pod = json.loads(node.kubectl("get", "pod", "catalog-0", "--namespace=default", "--output=json"))
    return str(pod["status"]["podIP"])


def _ztunnel_policies(node: RealNode) -> set[str]:
    """``namespace/name`` of the authorization policies the real ztunnel holds (its config_dump)."""
    return {f"{p.get('namespace')}/{p.get('name')}" for p in node.config_dump().get("policies") or []}


def _wait_policy_in_ztunnel(node: RealNode, ref: str) -> float:
    """Seconds until istiod pushed ``ref`` to the real ztunnel."""
    started = time.monotonic()
    while ref not in _ztunnel_policies(node):
        assert time.monotonic() - started < POLICY_TIMEOUT_S, (
            f"istiod never gave ztunnel {ref}: {_ztunnel_policies(node)}"
        )
        time.sleep(0.2)
    return time.monotonic() - started


def test_pod_ip_traffic_skips_the_waypoint_on_the_real_ztunnel(node: RealNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retail store as shipped: the intruder's request with the allowed token, addressed to
    catalog-0's IP, is answered by catalog (the real ztunnel went straight to the pod); the same
    intruder by Service name gets the waypoint's 403. pod-ip-bypass FAILs, the four PASS."""
    code, document = _audit(node, monkeypatch)
    statuses = labkit.probe_statuses(document)
    assert statuses == {**dict.fromkeys(labkit.PROBE_CHECKS, "pass"), BYPASS: "fail"}, _evidence(document)
    found = labkit.probe_findings(document)[BYPASS]
    assert found["method"] == "probe"
    assert found["severity"] == "low"  # advisory by default (probes.pod_ip_bypass_severity)
    assert "around the waypoint" in found["message"], found["message"]
    assert "pod default/catalog-0" in found["message"], found["message"]
    assert _catalog_pod_ip(node) in found["message"], found["message"]
    # The intruder sent it from its own namespace, as for principal-allowlist by name.
    assert labkit.sent_from(found) == {"mesh-auditor-probes"}, found["evidence"]
    assert labkit.static_failures(document) == []
    assert code == 1  # a low-severity FAIL is still a FAIL
    # The same on the wire, by hand: ui without its token is refused by the waypoint by Service
    # name (403), and answered by catalog when it names the pod's IP (the token rule never ran).
    by_name = node.exec("default/ui-0", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", realkit.CATALOG])
    assert by_name.stdout == "403", by_name
    assert realkit.curl(node, "default/ui-0", _pod_url(node)) == (0, labkit.CATALOG_TAGS)


def test_the_findings_own_fix_closes_the_bypass_on_the_real_ztunnel(
    node: RealNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FAIL's ``remediation_yaml`` (ztunnel-enforced ALLOW of the waypoint's identity at catalog's
    pods) applied as is; once the real ztunnel holds it, the intruder by pod IP is refused at L4 and
    the control through the waypoint still gets through: pod-ip-bypass PASSes, the four still PASS."""
    _, before = _audit(node, monkeypatch)
    found = labkit.probe_findings(before)[BYPASS]
    assert found["status"] == "fail", _evidence(before)
    fix = found["remediation_yaml"]
    (policy,) = [d for d in yaml.safe_load_all(fix) if d]
    assert policy["kind"] == "AuthorizationPolicy", fix
    assert policy["spec"]["action"] == "ALLOW", fix
    assert "targetRefs" not in policy["spec"], fix  # selector-bound: ztunnel enforces it, not the waypoint
    assert policy["spec"]["rules"] == [{"from": [{"source": {"principals": [WAYPOINT_IDENTITY]}}]}], fix
    ref = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
    try:
        node.kubectl("apply", "-f", "-", stdin=fix)
        waited = _wait_policy_in_ztunnel(node, ref)
        print(f"\nfix {ref} in the real ztunnel after {waited:.1f} s")
        code, after = _audit(node, monkeypatch)
        assert labkit.probe_statuses(after) == {
            **dict.fromkeys(labkit.PROBE_CHECKS, "pass"),
            BYPASS: "pass",
        }, _evidence(after)
        message = labkit.probe_findings(after)[BYPASS]["message"]
        assert "ztunnel refused the intruder by pod IP at each of 1 endpoint(s)" in message, message
        assert labkit.static_failures(after) == [], labkit.static_failures(after)
        assert code == 0
        # By hand: ui by pod IP is now refused by the real ztunnel at catalog (reset: curl 52 or
        # 56); by Service name with its token it still gets through the waypoint.
        assert realkit.curl(node, "default/ui-0", _pod_url(node))[0] in (52, 56)
        assert realkit.curl(node, "default/ui-0", realkit.CATALOG, TOKEN) == (0, labkit.CATALOG_TAGS)
    finally:
        node.kubectl(
            "delete", "authorizationpolicy", policy["metadata"]["name"], "--namespace=default", "--ignore-not-found"
        )
        # Until ztunnel dropped it too, so a later test meets the store as shipped.
        deadline = time.monotonic() + POLICY_TIMEOUT_S
        while ref in _ztunnel_policies(node) and time.monotonic() < deadline:
            time.sleep(0.2)
