"""Every endpoint, end to end (#13): ``auditor check --kubeconfig ... --active`` as the auditor's
ServiceAccount probes each ready endpoint of catalog by pod IP.

Two catalog pods are created by hand (no controller here) on two nodes, with pod IPs from the
pod CIDR (an EndpointSlice refuses loopback addresses) translated to a loopback Envoy by
``probes.url_overrides`` (``endpoint:<ip>:<port>``), and the ``http`` container port of that Envoy: ``catalog-a``'s refuses plaintext as ztunnel
does (captured), ``catalog-b``'s answers it (a pod ztunnel never captured). Their EndpointSlices
are written as the EndpointSlice controller would (one per port set, the named port resolved per
pod: ``podexecutor.controller_slices``), and the auditor reads the endpoints from them. By Service
name every identity meets the compliant stand-ins. Only the pod-IP requests can see catalog-b.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.podexecutor import PodExecutor, controller_slices
from tests.cases import ROOT
from tests.integration.live import AppliedCase, audit
from tests.integration.probepods.conftest import Mesh
from tests.integration.probes.probe_harness import EnvoyProcess

pytestmark = [pytest.mark.kube, pytest.mark.envoy]

EXAMPLE = ROOT / "examples" / "retail-store"
LABELS = {
    "app.kubernetes.io/name": "catalog",
    "app.kubernetes.io/instance": "catalog",
    "app.kubernetes.io/component": "service",
}


@pytest.fixture(scope="module")
def retail(control_role: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    documents = [d for p in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    manifest = tmp_path_factory.mktemp("retail-endpoints") / "retail-store.yaml"
    manifest.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    with AppliedCase(control_role, manifest, tmp_path_factory.mktemp("applied")):
        yield control_role


POD_IPS = {"catalog-a": "10.244.77.1", "catalog-b": "10.244.77.2"}


def _endpoint_pod(kube: KubeAPI, name: str, node: str, envoy: EnvoyProcess) -> None:
    port = urlsplit(envoy.url("")).port
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": LABELS},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "catalog",
            "containers": [{"name": "catalog", "image": "x", "ports": [{"name": "http", "containerPort": port}]}],
        },
    }
    kube.apply_text(yaml.safe_dump(pod))
    status = {
        "status": {"phase": "Running", "podIP": POD_IPS[name], "conditions": [{"type": "Ready", "status": "True"}]}
    }
    kube.kubectl(
        "patch",
        "pod",
        name,
        "--namespace=default",
        "--subresource=status",
        "--type=merge",
        f"--patch={json.dumps(status)}",
    )


@pytest.fixture
def endpoints(retail: KubeAPI, mesh: Mesh) -> Iterator[None]:
    _endpoint_pod(retail, "catalog-a", "auto-node-1", mesh.l4_deny)
    _endpoint_pod(retail, "catalog-b", "auto-node-2", mesh.plaintext_open)
    service = json.loads(retail.kubectl("get", "service", "catalog", "--namespace=default", "--output=json"))
    pods = json.loads(retail.kubectl("get", "pods", "catalog-a", "catalog-b", "--namespace=default", "--output=json"))
    slices = controller_slices(service, pods["items"], "auto-node-1")
    assert len(slices) == 2  # two port sets: the named port resolves to each Envoy's port
    retail.apply_text(yaml.safe_dump_all(slices))
    try:
        yield
    finally:
        retail.kubectl("delete", "pod", "catalog-a", "catalog-b", "--namespace=default", "--grace-period=0", "--force")
        for body in slices:
            retail.kubectl("delete", "endpointslice", body["metadata"]["name"], "--namespace=default")


def test_missing_endpointslices_make_strict_mtls_inconclusive_never_a_pass(
    retail: KubeAPI,
    mesh: Mesh,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ready catalog pods but no EndpointSlice (no controller): by name every request was refused,
    yet the endpoints are unknown, so strict-mtls.probe is INCONCLUSIVE."""
    _endpoint_pod(retail, "catalog-a", "auto-node-1", mesh.l4_deny)
    try:
        code, result = audit(
            "--kubeconfig", str(auditor_kubeconfig), "--rules", str(_rules(tmp_path, mesh, monkeypatch)), "--active"
        )
    finally:
        retail.kubectl("delete", "pod", "catalog-a", "--namespace=default", "--grace-period=0", "--force")
    strict = next(
        f for f in result["findings"] if f["check"] == "strict-mtls.probe" and f["target"] == "default/catalog"
    )
    assert strict["status"] == "inconclusive", strict
    assert "no EndpointSlice names Service default/catalog" in strict["message"]
    assert code != 0


def test_an_uncaptured_endpoint_fails_strict_mtls_by_pod_ip_naming_pod_and_node(
    endpoints: None,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    mesh: Mesh,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = _rules(tmp_path, mesh, monkeypatch)
    code, result = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", str(rules), "--active")
    probes: dict[str, dict[str, Any]] = {
        f["check"]: f for f in result["findings"] if f["method"] == "probe" and f["target"] == "default/catalog"
    }
    assert code == 1
    strict = probes["strict-mtls.probe"]
    assert strict["status"] == "fail", strict
    assert "pod default/catalog-b on node auto-node-2" in strict["message"]
    assert "catalog-a" not in strict["message"]  # the captured endpoint refused plaintext
    bypass = probes["waypoint-enrollment.pod-ip-bypass"]
    assert bypass["status"] == "fail", bypass
    assert bypass["severity"] == "low"
    assert "pod default/catalog-b on node auto-node-2" in bypass["message"]
    # By Service name every promise held: only the pod-IP requests saw catalog-b.
    for check in ("principal-allowlist.probe", "required-headers.probe", "waypoint-enrollment.probe"):
        assert probes[check]["status"] == "pass", probes[check]


def _rules(tmp_path: Path, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> Path:
    """catalog's rules with control probes, every Service-name request sent to the compliant stand-ins."""
    document = yaml.safe_load((ROOT / "rules" / "retail-store.yaml").read_text())
    catalog = document["spec"]["protectedServices"][0]
    catalog["probe"]["path"] = "/ok"
    catalog["control"]["enabled"] = True
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(document), encoding="utf-8")
    overrides = {
        "outside:default/catalog": mesh.base(mesh.l4_deny),
        "intruder:default/catalog": mesh.base(mesh.l7_deny_all),
        "control:default/catalog": mesh.base(mesh.waypoint),
    }
    for pod, envoy in (("catalog-a", mesh.l4_deny), ("catalog-b", mesh.plaintext_open)):
        port = urlsplit(envoy.url("")).port
        overrides[f"endpoint:{POD_IPS[pod]}:{port}"] = mesh.base(envoy)
    monkeypatch.setenv("AUDITOR_PROBES__URL_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("AUDITOR_PROBES__CONTROL_ENABLED", "true")
    monkeypatch.setenv("AUDITOR_PROBES__DEADLINE_S", "60")
    monkeypatch.setenv("AUDITOR_PROBES__REQUEST_TIMEOUT_S", "2")
    return rules
