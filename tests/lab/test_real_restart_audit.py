"""``auditor check --active`` while the real ztunnel restarts (#12, "ztunnel restarted mid-audit").

A connection cut by a restarting ztunnel ends like ztunnel's refusal (closed without a byte), so
the probe classifies it ``l4-denied``; the verdict counts ztunnel's refusal only when a second
request, sent after the first ended, is refused too (``verdict``, probeplan ``again:``). Here the
node's one ztunnel restarts every RESTART_S seconds (``ztunnel-restart``, ``testrigs.lab.ztrestart``)
during a few audits of catalog protected at L4 (unbound from its waypoint, ``catalog-l4.yaml``):

- non-compliant (no L4 policy: the intruder gets through): never a PASS of principal-allowlist;
- compliant (catalog's L4 ALLOW for sa/ui): never a FAIL of either probe.

Measured (2 cores, period 2 s, 15 audits per setup; before the confirmation / with it):
non-compliant principal-allowlist 11 FAIL 4 INCONCLUSIVE / 13 FAIL 2 INCONCLUSIVE; compliant
principal-allowlist 8 PASS 7 INCONCLUSIVE / 10 PASS 5 INCONCLUSIVE; no false PASS or FAIL either way. A
restart mostly shows as ``refused`` (ztunnel's in-pod listener gone: INCONCLUSIVE); the probe's
requests last milliseconds, so a cut in flight is rare, but it is real: a connection held across
a restart ends without a byte (the third test), which alone would have been counted a refusal.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from auditor.cli import main
from testrigs.lab.realnode import RealNode
from tests.lab import labkit, realkit

pytestmark = pytest.mark.lab

MESH_POLICY = labkit.RETAIL / "20-mesh-policy.yaml"
L4_RULES = labkit.RULES / "catalog-l4.yaml"
TOKEN = "x-auth-token: internal-retail-token"
RESTART_S = 2
AUDITS = 4
CHECKS = ("principal-allowlist.probe", "strict-mtls.probe")


@pytest.fixture(scope="module")
def node() -> Iterator[RealNode]:
    """The retail store with catalog unbound from its waypoint (ztunnel enforces at L4), the auditor,
    the control Role and the kubelet; ztunnel restarted by the fault only inside each test."""
    the_node = realkit.audited_node(MESH_POLICY, TOKEN)
    try:
        the_node.kubectl("label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint-")
        deadline = time.monotonic() + 30
        while _catalog_waypoint(the_node) is not None:
            assert time.monotonic() < deadline, "istiod never told ztunnel catalog left its waypoint"
            time.sleep(0.5)
        yield the_node
    finally:
        realkit.stop_node(the_node)


def _catalog_waypoint(node: RealNode) -> str | None:
    services = node.config_dump().get("services") or []
    service: dict[str, Any] = next((s for s in services if s["hostname"] == "catalog.default.svc.cluster.local"), {})
    waypoint = service.get("waypoint") or {}
    return str(waypoint["destination"]) if waypoint.get("destination") else None


def _policies(node: RealNode) -> list[dict[str, Any]]:
    """The AuthorizationPolicies istiod handed the real ztunnel."""
    return list(node.config_dump().get("policies") or [])


def _audits(node: RealNode, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Counter[str]], list[dict[str, Any]]]:
    """AUDITS audits with ztunnel restarting every RESTART_S s: the statuses counted per check, and each
    audit's probe findings (message, evidence) for the assertion messages."""
    for name, value in labkit.AUDIT_ENV.items():
        monkeypatch.setenv(name, value)
    # ``ztunnel-restart`` acts from the start of ztunnel: restart it under the fault's supervisor.
    node.set_faults([f"ztunnel-restart={RESTART_S}"])
    node.start_ztunnel()
    counts: dict[str, Counter[str]] = {check: Counter() for check in CHECKS}
    findings: list[dict[str, Any]] = []
    try:
        for _ in range(AUDITS):
            out = io.StringIO()
            argv = ["check", "--kubeconfig", str(node.auditor_kubeconfig), "--rules", str(L4_RULES)]
            main([*argv, "--active", "--output", "json"], stdout=out)
            found = labkit.probe_findings(json.loads(out.getvalue()))
            findings.append({c: [f["status"], f["message"], f["evidence"]] for c, f in found.items()})
            for check in CHECKS:
                counts[check][found[check]["status"]] += 1
    finally:
        node.set_faults(())
        node.start_ztunnel()
        node.wait_handed(realkit.CAPTURED, timeout=realkit.SETTLE_TIMEOUT_S)
    print(f"\n{AUDITS} audits, ztunnel restarted every {RESTART_S} s:", {c: dict(n) for c, n in counts.items()})
    return counts, findings


def test_non_compliant_l4_never_passes_while_ztunnel_restarts(node: RealNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """No L4 policy: the intruder reaches catalog. Restarts make some audits INCONCLUSIVE, none PASS."""
    node.kubectl("delete", "authorizationpolicy", "catalog-l4", "--namespace=default", "--ignore-not-found")
    counts, findings = _audits(node, monkeypatch)
    assert counts["principal-allowlist.probe"]["pass"] == 0, json.dumps(findings)[-6000:]
    assert set(counts["principal-allowlist.probe"]) <= {"fail", "inconclusive"}, counts
    assert counts["principal-allowlist.probe"]["fail"] >= 1, json.dumps(findings)[-6000:]


def test_compliant_l4_never_fails_while_ztunnel_restarts(node: RealNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """catalog's L4 ALLOW for sa/ui: restarts make some audits INCONCLUSIVE, none FAIL."""
    node.kubectl("apply", "-f", "-", stdin=labkit.CATALOG_L4_POLICY)
    deadline = time.monotonic() + 30
    while "default/catalog-l4" not in {f"{p.get('namespace')}/{p.get('name')}" for p in _policies(node)}:
        assert time.monotonic() < deadline, "istiod never sent ztunnel catalog's L4 policy"
        time.sleep(0.5)
    try:
        counts, findings = _audits(node, monkeypatch)
    finally:
        node.kubectl("delete", "authorizationpolicy", "catalog-l4", "--namespace=default", "--ignore-not-found")
    for check in CHECKS:
        assert counts[check]["fail"] == 0, json.dumps(findings)[-6000:]
        assert set(counts[check]) <= {"pass", "inconclusive"}, counts


# In a captured pod: a connection to catalog's Service through ztunnel, opened before a restart and
# used after it (the supervisor's status file counts restarts): what did the peer send?
HELD_ACROSS_A_RESTART = """
import json, socket, sys, time
status, host = sys.argv[1], sys.argv[2]
count = lambda: json.load(open(status))["restarts"]
for _ in range(100):  # ztunnel may be between two runs: until a connection is accepted
    try:
        before = count()
        connection = socket.create_connection((host, 80), timeout=20)
        break
    except OSError:
        time.sleep(0.1)
deadline = time.monotonic() + 20
while count() == before and time.monotonic() < deadline:
    time.sleep(0.05)
try:
    connection.sendall(b"GET /catalog/tags HTTP/1.1\\r\\nHost: catalog\\r\\n\\r\\n")
    print(json.dumps({"restarted": count() > before, "end": "eof", "bytes": len(connection.recv(65536))}))
except (ConnectionResetError, BrokenPipeError) as error:
    print(json.dumps({"restarted": count() > before, "end": type(error).__name__, "bytes": 0}))
"""


def test_a_connection_cut_by_a_restart_ends_like_ztunnels_refusal(node: RealNode) -> None:
    """The mechanism the confirmation guards against, reproduced: a connection through ztunnel that a
    restart cuts ends without a byte (EOF or reset), exactly what the probe classifies ``l4-denied``
    (tests/integration/probes/test_probes_sockets.py: a close or reset without a reply)."""
    node.set_faults([f"ztunnel-restart={RESTART_S}"])
    node.start_ztunnel()
    try:
        service = json.loads(node.kubectl("get", "service", "catalog", "--namespace=default", "-o", "json"))
        status = str(node.node_dir / "ztrestart.json")
        argv = [sys.executable, "-c", HELD_ACROSS_A_RESTART, status, service["spec"]["clusterIP"]]
        result = node.exec("default/curl-pod", argv, timeout=60)
    finally:
        node.set_faults(())
        node.start_ztunnel()
        node.wait_handed(realkit.CAPTURED, timeout=realkit.SETTLE_TIMEOUT_S)
    print(f"\na connection held across a ztunnel restart: {result.stdout.strip()}")
    seen = json.loads(result.stdout)
    assert seen["restarted"] is True, result.stdout
    assert seen["bytes"] == 0, result.stdout
    assert seen["end"] in {"eof", "ConnectionResetError", "BrokenPipeError"}, result.stdout
