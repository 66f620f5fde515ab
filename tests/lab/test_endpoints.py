"""Every enforcement point (#13) in the lab: two catalog replicas on two nodes, one not captured.

One lab for the module, ``scripts/lab up --nodes 2 --fault uncaptured-endpoint`` on the retail
store with catalog at two replicas: ``catalog-0`` runs on ``malab-auto-node-1`` behind its
node's ztunnel, ``catalog-1`` on ``malab-auto-node-2`` is labelled ambient (its namespace) but
was never captured. The API server shows what a cluster would: Nodes, the replicas as Pods with
``spec.nodeName``, pod IP and Ready, a ztunnel pod per node, the catalog EndpointSlice.

What it shows: ``auditor check --active`` probing endpoints by pod IP FAILs strict-mtls naming
``catalog-1`` and its node in every cycle; by Service name alone (``endpoints_per_cycle: 0``)
the plaintext request lands on either replica, so it misses about half the cycles (the figure is
printed and in docs/lab.md).
"""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.cli import main
from testrigs.devtools.controlplane import KubeAPI
from testrigs.lab import netns
from testrigs.lab.lab import Lab, LabError, check_host
from tests.lab import labkit
from tests.lab.labkit import wait_until_auditor_may_create_pods
from tests.lab.test_e2e_audit import CONTROL_ROLE, ENV, RETAIL_RULES, _lab_script

pytestmark = pytest.mark.lab

NODE_1, NODE_2 = "malab-auto-node-1", "malab-auto-node-2"
CYCLES_WITH_ENDPOINTS = 5
CYCLES_BY_NAME = 20


@dataclass(frozen=True)
class TwoNodeLab:
    lab: Lab
    auditor_kubeconfig: Path
    kube: KubeAPI


def _manifests(directory: Path) -> Path:
    """The retail store with catalog at two replicas."""
    for source in sorted(labkit.RETAIL.glob("*.yaml")):
        documents = list(yaml.safe_load_all(source.read_text(encoding="utf-8")))
        for document in documents:
            if isinstance(document, dict) and (document.get("kind"), document["metadata"]["name"]) == (
                "Deployment",
                "catalog",
            ):
                document["spec"]["replicas"] = 2
        (directory / source.name).write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeLab]:
    try:
        check_host()
    except LabError as error:
        pytest.fail(f"the lab cannot run on this machine: {error}")
    manifests = _manifests(tmp_path_factory.mktemp("two-replicas"))
    state_dir = Path(f"/tmp/malab-nodes-{secrets.token_hex(3)}")
    record = None
    try:
        up = _lab_script(
            "--state-dir", str(state_dir), "up", "--emulated", "--nodes", "2", "--fault", "uncaptured-endpoint",
            "--manifests", str(manifests),
        )  # fmt: skip
        assert up.returncode == 0, up.stderr[-3000:]
        lab = Lab(state_dir)
        record = lab.load()
        status = json.loads(_lab_script("--state-dir", str(state_dir), "status").stdout)
        assert status["healthy"] is True
        kube = lab.kube()
        kube.apply(CONTROL_ROLE)
        wait_until_auditor_may_create_pods(kube.kubectl)
        _wait_for_pods(kube, ("catalog-0", "catalog-1"))
        yield TwoNodeLab(lab, Path(status["auditor_kubeconfig"]), kube)
    finally:
        down = _lab_script("--state-dir", str(state_dir), "down")
    assert down.returncode == 0, down.stderr
    assert record is not None
    labkit.assert_gone(state_dir, record)


def _get(kube: KubeAPI, *argv: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(kube.kubectl("get", *argv, "-o", "json"))
    return document


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _wait_for_pods(kube: KubeAPI, names: tuple[str, ...]) -> None:
    for _ in range(100):
        pods = {p["metadata"]["name"]: p for p in _get(kube, "pods", "--namespace=default")["items"]}
        if all(name in pods and _ready(pods[name]) for name in names):
            return
        time.sleep(0.2)
    pytest.fail(f"the replicas {names} never became Ready Pods")


def _audit(lab: TwoNodeLab, monkeypatch: pytest.MonkeyPatch, endpoints_per_cycle: int) -> dict[str, Any]:
    for name, value in {**ENV, "AUDITOR_PROBES__ENDPOINTS_PER_CYCLE": str(endpoints_per_cycle)}.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    argv = ["check", "--kubeconfig", str(lab.auditor_kubeconfig), "--rules", str(RETAIL_RULES), "--active"]
    main([*argv, "--output", "json"], stdout=out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def _strict_probe(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [
        f
        for f in document["findings"]
        if f["check"] == "strict-mtls.probe" and f["target"] == "default/catalog" and f["method"] == "probe"
    ]
    return found


def test_the_cluster_shows_two_nodes_their_ztunnels_and_the_replicas_on_them(two_nodes: TwoNodeLab) -> None:
    kube, status = two_nodes.kube, two_nodes.lab.status()
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in _get(kube, "nodes")["items"]}
    assert {NODE_1, NODE_2} <= set(nodes)
    assert nodes[NODE_2]["kubernetes.io/hostname"] == NODE_2
    assert nodes[NODE_2]["eks.amazonaws.com/compute-type"] == "auto"
    ztunnels = _get(kube, "pods", "--namespace=istio-system", "--selector=app=ztunnel")["items"]
    assert sorted((z["spec"]["nodeName"], _ready(z)) for z in ztunnels) == [(NODE_1, True), (NODE_2, True)]
    pods = {p["metadata"]["name"]: p for p in _get(kube, "pods", "--namespace=default")["items"]}
    for name, node in (("catalog-0", NODE_1), ("catalog-1", NODE_2)):
        pod = pods[name]
        assert pod["spec"]["nodeName"] == node
        assert _ready(pod)
        assert pod["status"]["podIP"] == status["pods"][f"default/{name}"]["ip"]
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "catalog"
    # The fault: catalog-1 is in an ambient namespace but istio-cni never redirected it.
    annotations = {n: pods[n]["metadata"].get("annotations") or {} for n in ("catalog-0", "catalog-1")}
    assert annotations["catalog-0"].get("ambient.istio.io/redirection") == "enabled"
    assert "ambient.istio.io/redirection" not in annotations["catalog-1"]
    assert "REDIRECT" in netns.nat_table(two_nodes.lab.netns_of("default/catalog-0"))
    assert "REDIRECT" not in netns.nat_table(two_nodes.lab.netns_of("default/catalog-1"))
    assert "envoy:default/catalog-1" not in status["processes"]
    # The endpointslice controller's view: one slice, both replicas, with their nodes.
    (slice_,) = _get(kube, "endpointslices", "--namespace=default", "--selector=kubernetes.io/service-name=catalog")[
        "items"
    ]
    assert slice_["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sorted((e["targetRef"]["name"], e["nodeName"], e["conditions"]["ready"]) for e in slice_["endpoints"]) == [
        ("catalog-0", NODE_1, True),
        ("catalog-1", NODE_2, True),
    ]
    assert [p["port"] for p in slice_["ports"]] == [8080]


def test_probe_pods_of_one_run_spread_over_the_nodes(two_nodes: TwoNodeLab) -> None:
    """The product's spread (topology spread on kubernetes.io/hostname) puts two pods on two nodes."""
    run = secrets.token_hex(3)
    names = [f"spread-{run}-{index}" for index in range(2)]
    for name in names:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "mesh-auditor-outside",
                "labels": {
                    "app.kubernetes.io/managed-by": "mesh-auditor",
                    "run": run,
                    "istio.io/dataplane-mode": "none",
                },
            },
            "spec": {
                "serviceAccountName": "mesh-auditor-probe",
                "automountServiceAccountToken": False,
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"run": run}},
                    }
                ],
                "containers": [{"name": "probe", "image": "lab:probe", "command": ["python", "-c", "pass"]}],
            },
        }
        two_nodes.kube.kubectl("create", "--filename=-", stdin=json.dumps(pod))
        for _ in range(100):  # one at a time: the second is scheduled knowing where the first went
            stored = _get(two_nodes.kube, "pod", name, "--namespace=mesh-auditor-outside")
            if stored["spec"].get("nodeName"):
                break
            time.sleep(0.1)
    try:
        placed = [
            _get(two_nodes.kube, "pod", name, "--namespace=mesh-auditor-outside")["spec"].get("nodeName")
            for name in names
        ]
        assert sorted(placed) == [NODE_1, NODE_2]
    finally:
        for name in names:
            two_nodes.kube.kubectl("delete", "pod", name, "--namespace=mesh-auditor-outside", "--wait=false")


def test_endpoint_probing_fails_strict_mtls_naming_the_uncaptured_pod_and_its_node_every_cycle(
    two_nodes: TwoNodeLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    for _ in range(CYCLES_WITH_ENDPOINTS):
        finding = _strict_probe(_audit(two_nodes, monkeypatch, endpoints_per_cycle=16))
        assert finding["status"] == "fail", finding
        assert f"(pod default/catalog-1 on node {NODE_2})" in finding["message"], finding["message"]
        assert "pod default/catalog-0" not in finding["message"].split("answered by", 1)[1]
        assert finding["details"]["endpoints"] == "2/2"
    took = (time.monotonic() - started) / CYCLES_WITH_ENDPOINTS
    print(
        f"\nendpoint probing: {CYCLES_WITH_ENDPOINTS}/{CYCLES_WITH_ENDPOINTS} cycles FAIL naming catalog-1 ({took:.1f} s a cycle)"
    )


def test_service_name_probing_alone_misses_the_uncaptured_pod_about_half_the_time(
    two_nodes: TwoNodeLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure of #13: by Service name the plaintext lands on either replica (kube-proxy's choice)."""
    statuses = [
        _strict_probe(_audit(two_nodes, monkeypatch, endpoints_per_cycle=0))["status"] for _ in range(CYCLES_BY_NAME)
    ]
    detected = statuses.count("fail")
    print(f"\nService-name probing alone: strict-mtls FAIL in {detected}/{CYCLES_BY_NAME} cycles ({statuses})")
    assert set(statuses) <= {"fail", "pass"}, statuses
    # P(0 or 20 of 20) at 1/2 each is 2e-6: both outcomes must show.
    assert 0 < detected < CYCLES_BY_NAME, statuses


def test_the_pod_ip_waypoint_bypass_is_a_probe_backed_advisory_finding(
    two_nodes: TwoNodeLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13: the intruder's request with the allowed headers, sent to each catalog pod's IP, skips the
    Service's waypoint (semantics §4.6); retail's catalog has no ztunnel policy admitting only the
    waypoint, so it is answered: ``waypoint-enrollment.pod-ip-bypass`` FAILs from traffic, naming the
    endpoints, at the default advisory severity, with the ztunnel ALLOW for the waypoint as its fix."""
    document = _audit(two_nodes, monkeypatch, endpoints_per_cycle=16)
    (found,) = [
        f
        for f in document["findings"]
        if f["check"] == "waypoint-enrollment.pod-ip-bypass" and f["target"] == "default/catalog"
    ]
    assert found["method"] == "probe", found
    assert found["status"] == "fail", found
    assert found["severity"] == "low", found
    assert "around the waypoint" in found["message"], found["message"]
    assert "pod default/catalog-0" in found["message"], found["message"]
    assert "catalog-waypoint" in found["remediation_yaml"], found["remediation_yaml"]
