"""End to end on the real data plane (#12): ``auditor check --active`` against the real-ztunnel node.

One node for the module (``realkit.started_node``: istiod, the CNI-agent stand-in, the real
ztunnel) with the retail store's final state (``examples/retail-store``: STRICT, the catalog
waypoint, its policy), the auditor's ``deploy/`` and the control Role, and the node's kubelet
(``testrigs.lab.realkubelet``): the probe pods the auditor creates get an address, captured ones
are handed to the real ztunnel before they start, and they run in their own namespaces as uid
65532. Nothing of the project's ambient model stands between the API server and the traffic
(the waypoint is the lab's Envoy, see ``realwaypoint``), so these verdicts are the real data
plane's. Settings, rules and RBAC are those of ``test_e2e_audit`` (``labkit``).

Faults are the real data plane's (``RealNode.set_faults``, ``set_app_running``) and are undone
after each test, waiting until ztunnel holds every captured pod again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.cli import main
from testrigs.lab.realnode import RealNode
from tests.lab import labkit, realkit

pytestmark = pytest.mark.lab

Audit = Callable[..., tuple[int, dict[str, Any]]]
CATALOG_POD = "default/catalog-0"
MESH_POLICY = labkit.RETAIL / "20-mesh-policy.yaml"
L4_RULES = labkit.RULES / "catalog-l4.yaml"
TOKEN = "x-auth-token: internal-retail-token"
CATALOG_L4_POLICY = labkit.CATALOG_L4_POLICY
# The static findings other than a pass for a policy of another revision (the auditor's model
# leaves it out as istiod does, and audit.config-revision names it).
CANARY_L4_STATIC = [
    "default/catalog principal-allowlist.intruders-refused",
    "default/AuthorizationPolicy/catalog-l4 audit.config-revision",
]
CANARY_WAYPOINT_STATIC = [
    "default/catalog principal-allowlist.intruders-refused",
    "default/catalog required-headers.enforced",
    "default/AuthorizationPolicy/catalog audit.config-revision",
]


@pytest.fixture(scope="module")
def node() -> Iterator[RealNode]:
    """The settled retail store with its mesh policy, the auditor deployed, the kubelet running."""
    the_node = realkit.started_node()
    try:
        started = time.monotonic()
        the_node.kubectl("apply", "-f", str(MESH_POLICY))
        realkit.wait_waypoint(the_node, TOKEN)
        the_node.deploy_auditor()
        the_node.kubectl("apply", "-f", str(labkit.CONTROL_ROLE))
        labkit.wait_until_auditor_may_create_pods(the_node.kubectl)
        the_node.start_kubelet()
        print(f"\nmesh policy, waypoint, auditor and kubelet: {time.monotonic() - started:.1f} s")
        yield the_node
    finally:
        realkit.stop_node(the_node)


@pytest.fixture
def audit(node: RealNode, monkeypatch: pytest.MonkeyPatch) -> Iterator[Audit]:
    """``auditor check --active --output json`` in-process as the auditor's ServiceAccount; faults undone after."""
    for name, value in labkit.AUDIT_ENV.items():
        monkeypatch.setenv(name, value)

    def run(rules: Path = labkit.RETAIL_RULES) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        argv = ["check", "--kubeconfig", str(node.auditor_kubeconfig), "--rules", str(rules)]
        started = time.monotonic()
        code = main([*argv, "--active", "--output", "json"], stdout=out)
        document: dict[str, Any] = json.loads(out.getvalue())
        print(f"\nauditor check --active: exit {code} in {time.monotonic() - started:.1f} s:", _verdicts(document))
        return code, document

    yield run
    record = node.load()
    if record is not None and record.faults:
        node.set_faults(())
    if record is not None and f"app:{CATALOG_POD}" not in record.procs:
        node.set_app_running(CATALOG_POD, True)
    node.wait_handed(realkit.CAPTURED, timeout=realkit.SETTLE_TIMEOUT_S)


def _verdicts(document: dict[str, Any]) -> dict[str, str]:
    """Each probe check's status and the start of its message, for the log of what each case produced."""
    return {c: f"{f['status']}: {f['message'][:100]}" for c, f in labkit.probe_findings(document).items()}


def _probe_evidence(document: dict[str, Any]) -> str:
    return json.dumps({c: [f["message"], f["evidence"]] for c, f in labkit.probe_findings(document).items()})[-6000:]


def _kubelet_log(node: RealNode) -> str:
    return (node.node_dir / "kubelet.log").read_text(errors="replace")[-3000:]


def test_compliant_retail_store_passes_every_probe_on_the_real_ztunnel(node: RealNode) -> None:
    """The real command line: four probe PASSes for catalog, exit 0, probe pods gone afterwards."""
    started = time.monotonic()
    command = [sys.executable, "-m", "auditor.cli", "check", "--kubeconfig", str(node.auditor_kubeconfig)]
    command += ["--rules", str(labkit.RETAIL_RULES), "--active", "--output", "json"]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=240, env={**os.environ, **labkit.AUDIT_ENV}
    )
    print(f"\nauditor check --active (retail store, real ztunnel): {time.monotonic() - started:.1f} s")
    document = json.loads(result.stdout)
    print(_verdicts(document))
    assert result.returncode == 0, (_probe_evidence(document), result.stderr[-3000:], _kubelet_log(node))
    probes = labkit.probe_findings(document)
    assert labkit.probe_statuses(document) == dict.fromkeys(labkit.PROBE_CHECKS, "pass"), probes
    assert labkit.static_failures(document) == []
    assert {f["status"] for f in document["findings"] if f["method"] == "probe"} == {"pass"}
    # Each identity sent from its own namespace: outside, the in-mesh intruder, the control in default.
    assert labkit.sent_from(probes["strict-mtls.probe"]) == {"mesh-auditor-outside"}
    assert labkit.sent_from(probes["principal-allowlist.probe"]) == {"mesh-auditor-probes", "default"}
    assert "internal-retail-token" not in result.stdout
    _assert_probe_pods_gone(node)


def _assert_probe_pods_gone(node: RealNode) -> None:
    """The runner deleted its pods, the kubelet finished the deletion, the node removed their namespaces."""
    leftovers: list[str] = []
    for _ in range(100):
        listing = json.loads(
            node.kubectl(
                "get", "pods", "--all-namespaces", "-l", "app.kubernetes.io/managed-by=mesh-auditor", "-o", "json"
            )
        )
        leftovers = [key for key in node.sync_pods() if key.startswith("mesh-auditor")]
        if not listing["items"] and not leftovers:
            return
        time.sleep(0.1)
    pytest.fail(f"probe pods left behind: {[i['metadata']['name'] for i in listing['items']]}, {leftovers}")


def test_uncaptured_server_fails_strict_mtls(node: RealNode, audit: Audit) -> None:
    """catalog labelled ambient but never handed to ztunnel: the outsider's plaintext is answered.

    The mesh's own callers still send HBONE to catalog's :15008 (istiod says it is captured), which
    nothing answers: their controls fail, so the checks that rest on a control are INCONCLUSIVE.
    """
    node.set_faults([f"uncaptured-pod={CATALOG_POD}"])
    code, document = audit()
    assert labkit.probe_statuses(document) == {
        "strict-mtls.probe": "fail",
        "principal-allowlist.probe": "inconclusive",
        "required-headers.probe": "inconclusive",
        "waypoint-enrollment.probe": "inconclusive",
    }, _probe_evidence(document)
    finding = labkit.probe_findings(document)["strict-mtls.probe"]
    assert finding["message"].startswith("config and traffic disagree"), finding["message"]
    assert labkit.sent_from(finding) == {"mesh-auditor-outside"}
    assert labkit.static_failures(document) == []
    assert code == 1


def test_ztunnel_down_is_never_a_pass(node: RealNode, audit: Audit) -> None:
    """No ztunnel on the node: captured probe pods never start (istio-cni cannot hand them over), and
    the outsider's plaintext is refused at catalog's in-pod redirection, without a control."""
    node.set_faults(["ztunnel-down"])
    code, document = audit()
    assert labkit.probe_statuses(document) == dict.fromkeys(labkit.PROBE_CHECKS, "inconclusive"), _probe_evidence(
        document
    )
    findings = labkit.probe_findings(document)
    assert "got refused" in findings["strict-mtls.probe"]["message"]
    for check in ("principal-allowlist.probe", "required-headers.probe", "waypoint-enrollment.probe"):
        assert "still Pending at the 60 s deadline" in findings[check]["message"], findings[check]["message"]
    assert code == 3


def test_service_down_is_inconclusive_never_pass(node: RealNode, audit: Audit) -> None:
    """catalog's app is stopped (its pod, address and ztunnel's hold stay): no control succeeds."""
    node.set_app_running(CATALOG_POD, False)
    code, document = audit()
    assert labkit.probe_statuses(document) == dict.fromkeys(labkit.PROBE_CHECKS, "inconclusive"), _probe_evidence(
        document
    )
    assert "upstream-error (HTTP 503)" in labkit.probe_findings(document)["waypoint-enrollment.probe"]["message"]
    assert code == 3


def _catalog_waypoint(node: RealNode) -> str | None:
    """The waypoint ztunnel holds for catalog's Service (from istiod), or None."""
    services = node.config_dump().get("services") or []
    service: dict[str, Any] = next((s for s in services if s["hostname"] == "catalog.default.svc.cluster.local"), {})
    waypoint = service.get("waypoint") or {}
    return str(waypoint["destination"]) if waypoint.get("destination") else None


def test_istiod_stale_policy_added_after_is_never_a_pass(node: RealNode, audit: Audit) -> None:
    """catalog unbound from its waypoint (ztunnel enforces at L4), then istiod freezes, then an L4
    ALLOW for sa/ui is applied: the config says only ui may call catalog; ztunnel never got it.

    Measured: INCONCLUSIVE, not FAIL. The probe pods are new workloads: ztunnel gets their
    workload entries and their certificates from istiod, which answers nothing, so the in-mesh
    intruder's request times out instead of reaching catalog, and no control succeeds. A stale
    istiod blinds the probes rather than fooling them; never a PASS.
    """
    with _catalog_unbound(node):
        node.set_faults(["istiod-stale"])
        node.kubectl("apply", "-f", "-", stdin=CATALOG_L4_POLICY)
        code, document = audit(L4_RULES)
        assert labkit.probe_statuses(document) == {
            "strict-mtls.probe": "inconclusive",
            "principal-allowlist.probe": "inconclusive",
        }, _probe_evidence(document)
        intruder = labkit.probe_findings(document)["principal-allowlist.probe"]["message"]
        assert "expected l4-denied, got timeout" in intruder, intruder
        assert labkit.static_failures(document) == []
        assert code == 3


@contextlib.contextmanager
def _catalog_unbound(node: RealNode) -> Iterator[None]:
    """catalog unbound from its waypoint (ztunnel enforces at L4) until ztunnel knows it; after:
    faults off, catalog's L4 policy gone, catalog bound again and its waypoint serving."""
    node.kubectl("label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint-")
    try:
        deadline = time.monotonic() + 30
        while _catalog_waypoint(node) is not None:
            assert time.monotonic() < deadline, "istiod never told ztunnel catalog left its waypoint"
            time.sleep(0.5)
        yield
    finally:
        node.set_faults(())
        node.kubectl("delete", "authorizationpolicy", "catalog-l4", "--namespace=default", "--ignore-not-found")
        node.kubectl("label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint=catalog-waypoint")
        realkit.wait_waypoint(node, TOKEN)


def _in_revision(manifest: str, revision: str) -> str:
    """``manifest`` (one object) labelled ``istio.io/rev: <revision>``."""
    document = yaml.safe_load(manifest)
    document["metadata"].setdefault("labels", {})["istio.io/rev"] = revision
    return str(yaml.safe_dump(document))


def _ztunnel_policies(node: RealNode) -> set[str]:
    """The AuthorizationPolicies (``namespace/name``) istiod handed the real ztunnel."""
    return {f"{p.get('namespace')}/{p.get('name')}" for p in node.config_dump().get("policies") or []}


def test_ztunnel_policy_of_another_revision_is_never_enforced(node: RealNode, audit: Audit) -> None:
    """catalog unbound from its waypoint, then catalog's L4 ALLOW for sa/ui labelled
    ``istio.io/rev: canary``: istiod (REVISION default, the chart's) never reads it, so the real
    ztunnel lets the in-mesh intruder reach catalog; the static audit says the same from the
    objects alone (the allow-list is not enforced, and the policy is another revision's).
    Relabelled ``default``, the same policy is read: ztunnel refuses the intruder, all pass."""
    with _catalog_unbound(node):
        node.kubectl("apply", "-f", "-", stdin=_in_revision(CATALOG_L4_POLICY, "canary"))
        code, document = audit(L4_RULES)
        assert labkit.probe_statuses(document) == {
            "strict-mtls.probe": "pass",
            "principal-allowlist.probe": "fail",
        }, _probe_evidence(document)
        intruder = labkit.probe_findings(document)["principal-allowlist.probe"]
        assert labkit.sent_from(intruder) == {"mesh-auditor-probes", "default"}
        assert sorted(labkit.static_failures(document)) == sorted(CANARY_L4_STATIC), labkit.static_failures(document)
        assert "default/catalog-l4" not in _ztunnel_policies(node)  # istiod never sent it
        assert code == 1

        node.kubectl(
            "label", "authorizationpolicy", "catalog-l4", "--namespace=default", "istio.io/rev=default", "--overwrite"
        )
        deadline = time.monotonic() + 30
        while "default/catalog-l4" not in _ztunnel_policies(node):
            assert time.monotonic() < deadline, "istiod never sent ztunnel the policy of its own revision"
            time.sleep(0.5)
        code, document = audit(L4_RULES)
        assert labkit.probe_statuses(document) == dict.fromkeys(
            ("strict-mtls.probe", "principal-allowlist.probe"), "pass"
        ), _probe_evidence(document)
        assert labkit.static_failures(document) == []
        assert code == 0


def test_waypoint_policy_of_another_revision_is_never_enforced(node: RealNode, audit: Audit) -> None:
    """The retail store's L7 policy at catalog's waypoint (sa/ui with the token) labelled
    ``istio.io/rev: canary``: istiod of revision default never reads it, so the waypoint enforces
    nothing; the intruder and a request without the token reach catalog. The waypoint is the
    lab's Envoy (``realwaypoint``), which leaves out another revision's policies by istiod's rule
    (``testrigs.lab.mesh.in_revision``); ztunnel, capture and mTLS are real."""
    node.kubectl("label", "authorizationpolicy", "catalog", "--namespace=default", "istio.io/rev=canary", "--overwrite")
    try:
        node.sync_pods()  # the waypoint gets the policies of the revision it serves
        body = realkit.eventually_body(labkit.CATALOG_TAGS, node, "default/ui-0", realkit.CATALOG)
        assert body == labkit.CATALOG_TAGS, f"the waypoint still asks for the token: {body}"
        code, document = audit()
        assert labkit.probe_statuses(document) == {
            "strict-mtls.probe": "pass",
            "principal-allowlist.probe": "fail",
            "required-headers.probe": "fail",
            "waypoint-enrollment.probe": "pass",
        }, _probe_evidence(document)
        assert sorted(labkit.static_failures(document)) == sorted(CANARY_WAYPOINT_STATIC), labkit.static_failures(
            document
        )
        assert code == 1
    finally:
        node.kubectl("label", "authorizationpolicy", "catalog", "--namespace=default", "istio.io/rev-")
        node.sync_pods()
        body = realkit.eventually_body("RBAC: access denied", node, "default/ui-0", realkit.CATALOG)
        assert body == "RBAC: access denied", body
        realkit.wait_waypoint(node, TOKEN)
