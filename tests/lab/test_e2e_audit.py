"""End to end: ``auditor check --active`` against the lab, probe pods running inside lab pods.

One lab for the module, started with ``scripts/lab up --manifests examples/retail-store`` (the
walkthrough's final state plus the auditor's ``deploy/``), with its translator and kubelet
daemons: probe pods the auditor creates run in their own network namespaces, captured or not by
their labels, with their ServiceAccount's SPIFFE certificate, as uid 65532. The auditor runs as
its own ServiceAccount (RBAC and probe-guard apply), with the control consented to in three
places: the rules (``tests/lab/rules``), the settings switch and ``deploy/control-probes-default.yaml``.

Faults are switched on this one lab with ``Lab.set_faults`` and reset after each test; live
changes go through the API server and are undone afterwards. The kubelet reconciles from the
API server before it starts a probe, so "the next audit" always meets the changed data plane.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from auditor.cli import main
from testrigs.devtools.controlplane import KubeAPI
from testrigs.lab import kubelet, netns
from testrigs.lab.lab import Lab, LabError, check_host
from tests.lab import labkit

pytestmark = pytest.mark.lab

REPO = labkit.REPO
RULES = labkit.RULES
RETAIL_RULES = labkit.RETAIL_RULES
L4_RULES = RULES / "catalog-l4.yaml"
CONTROL_ROLE = labkit.CONTROL_ROLE
PROBE_CHECKS = labkit.PROBE_CHECKS
ENV = labkit.AUDIT_ENV
CATALOG_L4_POLICY = labkit.CATALOG_L4_POLICY

Audit = Callable[..., tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class RetailLab:
    lab: Lab
    kubeconfig: Path
    auditor_kubeconfig: Path
    kube: KubeAPI


def _lab_script(*argv: str) -> subprocess.CompletedProcess[str]:
    """``scripts/lab ...``: the lab is a test rig run from the checkout, not an ``auditor`` command."""
    command = [str(labkit.REPO / "scripts" / "lab"), *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=180)


def _auditor(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "auditor.cli", *argv]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout, env=environment)


@pytest.fixture(scope="module")
def retail() -> Iterator[RetailLab]:
    """``scripts/lab up`` on the retail example; ``scripts/lab down`` (twice) at the end."""
    try:
        check_host()
    except LabError as error:
        pytest.fail(f"the lab cannot run on this machine: {error}")
    state_dir = Path(f"/tmp/malab-e2e-{secrets.token_hex(3)}")
    record = None
    try:
        started = time.monotonic()
        up = _lab_script("--state-dir", str(state_dir), "up", "--emulated", "--manifests", str(labkit.RETAIL))
        print(f"\nscripts/lab up: {time.monotonic() - started:.1f} s")
        assert up.returncode == 0, up.stderr[-3000:]
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        lab = Lab(state_dir)
        record = lab.load()
        status = json.loads(_lab_script("--state-dir", str(state_dir), "status").stdout)
        assert status["healthy"] is True
        assert {"translator", "kubelet"} <= set(status["processes"])
        auditor_kubeconfig = Path(status["auditor_kubeconfig"])
        kube = lab.kube()
        kube.apply(CONTROL_ROLE)
        labkit.wait_until_auditor_may_create_pods(kube.kubectl)
        yield RetailLab(lab, kubeconfig, auditor_kubeconfig, kube)
    finally:
        first = _lab_script("--state-dir", str(state_dir), "down")
        second = _lab_script("--state-dir", str(state_dir), "down")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert record is not None
    labkit.assert_gone(state_dir, record)


@pytest.fixture
def audit(retail: RetailLab, monkeypatch: pytest.MonkeyPatch) -> Iterator[Audit]:
    """Run ``auditor check --active --output json`` in-process as the auditor's ServiceAccount."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)

    def run(rules: Path = RETAIL_RULES) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        argv = ["check", "--kubeconfig", str(retail.auditor_kubeconfig), "--rules", str(rules), "--active"]
        code = main([*argv, "--output", "json"], stdout=out)
        return code, json.loads(out.getvalue())

    yield run
    record = retail.lab.load()
    if record is not None and record.faults:
        retail.lab.set_faults(())
        retail.lab.reconcile()


_probes = labkit.probe_findings
_statuses = labkit.probe_statuses
_static_failures = labkit.static_failures
_sent_from = labkit.sent_from


def test_compliant_retail_store_passes_every_property_with_probe_evidence(retail: RetailLab) -> None:
    """The real command line, as the auditor's ServiceAccount: four probe PASSes for catalog, exit 0."""
    started = time.monotonic()
    result = _auditor(
        "check", "--kubeconfig", str(retail.auditor_kubeconfig), "--rules", str(RETAIL_RULES), "--active",
        "--output", "json", env=ENV,
    )  # fmt: skip
    print(f"\nauditor check --active (retail store in the lab): {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)
    probes = _probes(document)
    assert _statuses(document) == dict.fromkeys(PROBE_CHECKS, "pass"), probes
    # Every finding passes, except the static ones on the Service istiod rendered for the waypoint.
    others = {(f["target"], f["check"], f["status"]) for f in document["findings"] if f["status"] != "pass"}
    assert others == {
        ("default/catalog-waypoint", "strict-mtls.captured", "skipped"),
        ("default/catalog-waypoint", "strict-mtls.peer-authentication", "skipped"),
    }, others
    assert "server: istio-envoy" in probes["waypoint-enrollment.probe"]["message"]
    # Each identity sent from its own namespace: outside, the in-mesh intruder, the control in default.
    assert _sent_from(probes["strict-mtls.probe"]) == {"mesh-auditor-outside"}
    assert _sent_from(probes["principal-allowlist.probe"]) == {"mesh-auditor-probes", "default"}
    assert "internal-retail-token" not in result.stdout
    _assert_probe_pods_gone(retail)


def _assert_probe_pods_gone(retail: RetailLab) -> None:
    """The runner deleted its pods, the kubelet finished the deletion, the lab removed their netns."""
    for _ in range(100):
        listing = json.loads(
            retail.kube.kubectl(
                "get", "pods", "--all-namespaces", "-l", "app.kubernetes.io/managed-by=mesh-auditor", "-o", "json"
            )
        )
        record = retail.lab.load()
        assert record is not None
        leftovers = [p for p in record.pods if "mesh-auditor-probe" in p]
        if not listing["items"] and not leftovers:
            return
        time.sleep(0.1)
    pytest.fail(f"probe pods left behind: {[i['metadata']['name'] for i in listing['items']]}, {leftovers}")


@pytest.mark.parametrize(
    ("fault", "broken"),
    [
        ("strict-not-enforced", {"strict-mtls.probe"}),
        ("header-not-enforced", {"required-headers.probe"}),
        # Bypassing the waypoint also skips the L7 policy it enforces: the intruder and the
        # header-less request get through as well. Only STRICT (ztunnel's) still holds.
        ("waypoint-bypassed", {"waypoint-enrollment.probe", "principal-allowlist.probe", "required-headers.probe"}),
    ],
)
def test_a_fault_fails_the_property_it_breaks_while_the_config_still_passes(
    retail: RetailLab, audit: Audit, fault: str, broken: set[str]
) -> None:
    retail.lab.set_faults([fault])
    retail.lab.reconcile()
    code, document = audit()
    assert _statuses(document) == {c: "fail" if c in broken else "pass" for c in PROBE_CHECKS}, _probes(document)
    assert _static_failures(document) == []
    assert code == 1
    for check in broken:
        finding = _probes(document)[check]
        assert finding["message"].startswith("config and traffic disagree"), finding["message"]
        assert any(e["object"].startswith("probe request default/catalog:") for e in finding["evidence"])


def test_l4_allow_all_fails_the_allowlist_that_ztunnel_enforces(retail: RetailLab, audit: Audit) -> None:
    """catalog protected at L4 (ALLOW ui at its ztunnel, no waypoint): the fault lets the intruder in."""
    retail.kube.kubectl("label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint-")
    retail.kube.apply_text(CATALOG_L4_POLICY)
    try:
        code, document = audit(L4_RULES)
        statuses = _statuses(document)
        assert statuses == {"strict-mtls.probe": "pass", "principal-allowlist.probe": "pass"}, _probes(document)
        assert code == 0
        assert "l4-denied" in json.dumps(_probes(document)["principal-allowlist.probe"]["evidence"])
        retail.lab.set_faults(["l4-allow-all"])
        retail.lab.reconcile()
        code, document = audit(L4_RULES)
        statuses = _statuses(document)
        assert statuses == {"strict-mtls.probe": "pass", "principal-allowlist.probe": "fail"}, _probes(document)
        assert _static_failures(document) == []
        assert code == 1
    finally:
        retail.kube.kubectl("delete", "authorizationpolicy", "catalog-l4", "--namespace=default", "--ignore-not-found")
        retail.kube.kubectl(
            "label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint=catalog-waypoint"
        )


def test_service_down_is_inconclusive_never_pass(retail: RetailLab, audit: Audit) -> None:
    """catalog's app is stopped: the control gets a 503, so no denial proves anything (exit 3)."""
    retail.lab.set_faults(["service-down=default/catalog"])
    retail.lab.reconcile()
    code, document = audit()
    assert _statuses(document) == dict.fromkeys(PROBE_CHECKS, "inconclusive"), _probes(document)
    assert "upstream-error" in _probes(document)["strict-mtls.probe"]["message"]
    assert code == 3


def test_deleting_the_peer_authentication_is_seen_by_the_next_audit(retail: RetailLab, audit: Audit) -> None:
    """Config and traffic both drift: the static check fails and the outsider's plaintext is answered."""
    retail.kube.kubectl("delete", "peerauthentication", "default", "--namespace=istio-system")
    try:
        code, document = audit()
        assert code == 1
        assert "default/catalog strict-mtls.peer-authentication" in _static_failures(document)
        finding = _probes(document)["strict-mtls.probe"]
        assert finding["status"] == "fail"
        assert finding["message"].startswith("traffic confirms the drift"), finding["message"]
        assert _statuses(document)["principal-allowlist.probe"] == "pass"
    finally:
        retail.kube.apply(labkit.RETAIL / "20-mesh-policy.yaml")


def test_removing_the_use_waypoint_label_is_seen_by_the_next_audit(retail: RetailLab, audit: Audit) -> None:
    """catalog no longer enrolled in its waypoint: static and probe waypoint-enrollment both fail."""
    retail.kube.kubectl("label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint-")
    try:
        code, document = audit()
        assert code == 1
        assert "default/catalog waypoint-enrollment.bound" in _static_failures(document)
        finding = _probes(document)["waypoint-enrollment.probe"]
        assert finding["status"] == "fail"
        assert finding["message"].startswith("traffic confirms the drift"), finding["message"]
        assert _statuses(document)["strict-mtls.probe"] == "pass"
    finally:
        retail.kube.kubectl(
            "label", "service", "catalog", "--namespace=default", "istio.io/use-waypoint=catalog-waypoint"
        )


# --- the kubelet itself -----------------------------------------------------------------------------

# Reports what the pod's process sees, after a pause that lets the test look at its lab pod.
REPORT = (
    "import json, os, socket, time\n"
    "time.sleep(float(os.environ['PAUSE']))\n"
    "report = {'uid': os.getuid(), 'gid': os.getgid(), 'catalog': socket.gethostbyname('catalog.default.svc.cluster.local')}\n"
    "open('/dev/termination-log', 'w').write(json.dumps(report))\n"
)


def _report_pod(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"kubelet-check-{secrets.token_hex(3)}",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "mesh-auditor", **labels},
        },
        "spec": {
            "serviceAccountName": "mesh-auditor-probe",
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "nodeSelector": {"eks.amazonaws.com/compute-type": "auto"},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [
                {
                    "name": "probe",
                    "image": "lab:probe",
                    "command": ["python", "-c", REPORT],
                    "env": [{"name": "PAUSE", "value": "3"}],
                    "terminationMessagePath": "/dev/termination-log",
                }
            ],
        },
    }


def _kubelet_log(retail: RetailLab) -> str:
    """The daemons' log tails, for a failure message."""
    logs = [
        (retail.lab.state_dir / f"{name}.log").read_text(errors="replace")[-3000:] for name in ("kubelet", "translator")
    ]
    return "\n--- translator ---\n".join(logs)


def _pod(kube: KubeAPI, namespace: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(kube.kubectl("get", "pod", name, f"--namespace={namespace}", "-o", "json"))
    return document


def test_probe_pods_run_in_their_own_lab_pod_with_their_identity(retail: RetailLab) -> None:
    """In-mesh: captured, its ztunnel holds the SA's SPIFFE id; outside: not captured; both uid 65532."""
    inside = _report_pod("mesh-auditor-probes", {})
    outside = _report_pod("mesh-auditor-outside", {"istio.io/dataplane-mode": "none"})
    for pod in (inside, outside):
        retail.kube.kubectl("create", "--filename=-", stdin=json.dumps(pod))
    keys = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in (inside, outside)]
    try:
        for _ in range(150):  # the process starts only once its lab pod is in place
            record = retail.lab.load()
            assert record is not None
            if all(key in record.applied for key in keys):
                break
            time.sleep(0.1)
        record = retail.lab.load()
        assert record is not None
        assert all(key in record.applied for key in keys), (sorted(record.applied), _kubelet_log(retail))
        in_key, out_key = keys
        assert (
            labkit.peer_identity(retail.lab, in_key)
            == "spiffe://cluster.local/ns/mesh-auditor-probes/sa/mesh-auditor-probe"
        )
        assert "REDIRECT" in netns.nat_table(retail.lab.netns_of(in_key))
        assert "REDIRECT" not in netns.nat_table(retail.lab.netns_of(out_key))
        processes = retail.lab.status()["processes"]
        assert f"envoy:{in_key}" in processes
        assert f"envoy:{out_key}" not in processes
        reports = []
        for pod in (inside, outside):
            meta = pod["metadata"]
            for _ in range(150):
                stored = _pod(retail.kube, meta["namespace"], meta["name"])
                if stored["status"].get("phase") in ("Succeeded", "Failed"):
                    break
                time.sleep(0.1)
            assert stored["status"]["phase"] == "Succeeded", (stored["status"], _kubelet_log(retail))
            assert stored["spec"]["nodeName"] == kubelet.NODE_NAME
            terminated = stored["status"]["containerStatuses"][0]["state"]["terminated"]
            reports.append(json.loads(terminated["message"]))
        vip = retail.lab.status()["vips"]["default/catalog"]
        assert reports == [{"uid": 65532, "gid": 65532, "catalog": vip}] * 2
        # istio-cni's annotation, written back for the captured pod only.
        annotations = [
            _pod(retail.kube, p["metadata"]["namespace"], p["metadata"]["name"])["metadata"].get("annotations") or {}
            for p in (inside, outside)
        ]
        assert [a.get("ambient.istio.io/redirection") for a in annotations] == ["enabled", None]
        node = json.loads(retail.kube.kubectl("get", "node", kubelet.NODE_NAME, "-o", "json"))
        assert node["metadata"]["labels"]["eks.amazonaws.com/compute-type"] == "auto"
    finally:
        for pod in (inside, outside):
            meta = pod["metadata"]
            retail.kube.kubectl("delete", "pod", meta["name"], f"--namespace={meta['namespace']}", "--wait=false")


def test_the_lab_is_not_a_command_of_the_shipped_auditor(capsys: pytest.CaptureFixture[str]) -> None:
    """The lab is a test rig (``scripts/lab``): the installed ``auditor`` has no ``lab`` command."""
    with pytest.raises(SystemExit) as exited:
        main(["lab", "status"])
    assert exited.value.code == 2
    assert "invalid choice: 'lab'" in capsys.readouterr().err
