"""End to end: ``auditor check --kubeconfig ... --active`` as the auditor's ServiceAccount.

The real API server holds the walkthrough's retail store; the stand-in kubelet runs the probe
pods; the probes' Service URLs are pointed (``AUDITOR_PROBES__URL_OVERRIDES``) at loopback Envoys
that behave as ztunnel and the catalog waypoint would for each identity.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.podexecutor import PodExecutor
from tests.cases import ROOT
from tests.integration.live import AppliedCase, audit
from tests.integration.probepods.conftest import Mesh
from tests.integration.probes.probe_harness import EnvoyProcess

pytestmark = [pytest.mark.kube, pytest.mark.envoy]

EXAMPLE = ROOT / "examples" / "retail-store"
PROBE_CHECKS = ("strict-mtls.probe", "principal-allowlist.probe", "required-headers.probe", "waypoint-enrollment.probe")


@pytest.fixture(scope="module")
def retail(control_role: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    documents = [d for p in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    manifest = tmp_path_factory.mktemp("retail") / "retail-store.yaml"
    manifest.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    with AppliedCase(control_role, manifest, tmp_path_factory.mktemp("applied")):
        yield control_role


@pytest.fixture
def rules(tmp_path: Path) -> str:
    """rules/retail-store.yaml with the control consented to and a path the test backend serves."""
    document = yaml.safe_load((ROOT / "rules" / "retail-store.yaml").read_text())
    catalog = document["spec"]["protectedServices"][0]
    catalog["probe"]["path"] = "/ok"
    catalog["control"]["enabled"] = True
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


def _point(monkeypatch: pytest.MonkeyPatch, mesh: Mesh, *, outside: EnvoyProcess, control: bool = True) -> None:
    overrides = {
        "outside:default/catalog": mesh.base(outside),
        "intruder:default/catalog": mesh.base(mesh.l7_deny_all),
        "control:default/catalog": mesh.base(mesh.waypoint),
    }
    monkeypatch.setenv("AUDITOR_PROBES__URL_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("AUDITOR_PROBES__CONTROL_ENABLED", "true" if control else "false")
    monkeypatch.setenv("AUDITOR_PROBES__DEADLINE_S", "60")
    monkeypatch.setenv("AUDITOR_PROBES__REQUEST_TIMEOUT_S", "2")


def _probe_findings(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in document["findings"] if f["method"] == "probe" and f["target"] == "default/catalog"}


def test_active_audit_of_a_compliant_mesh_passes_with_probe_findings(
    retail: KubeAPI,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    mesh: Mesh,
    rules: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outsider refused at L4, intruder at L7, control allowed through the waypoint: exit 0, four probe PASSes."""
    _point(monkeypatch, mesh, outside=mesh.l4_deny)
    code, document = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", rules, "--active")
    probes = _probe_findings(document)
    assert {check: f["status"] for check, f in probes.items()} == dict.fromkeys(PROBE_CHECKS, "pass"), probes
    assert code == 0
    assert document["summary"]["inputs"]["active"] is True
    assert "server: istio-envoy" in probes["waypoint-enrollment.probe"]["message"]
    assert "internal-retail-token" not in json.dumps(document)
    assert {f["method"] for f in document["findings"]} == {"static", "probe"}


def test_plaintext_answered_while_strict_is_configured_fails_with_both_evidences(
    retail: KubeAPI,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    mesh: Mesh,
    rules: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The example configures STRICT, but the outsider gets 200: exit 1, strict-mtls.probe FAIL with both sides."""
    _point(monkeypatch, mesh, outside=mesh.plaintext_open)
    code, document = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", rules, "--active")
    finding = _probe_findings(document)["strict-mtls.probe"]
    assert code == 1
    assert finding["status"] == "fail"
    assert finding["message"].startswith("config and traffic disagree")
    objects = [e["object"] for e in finding["evidence"]]
    assert "probe request default/catalog:outside:plaintext" in objects
    assert "PeerAuthentication istio-system/default" in objects


def test_without_the_control_every_denial_is_inconclusive(
    retail: KubeAPI,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    mesh: Mesh,
    rules: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control switched off in settings: the same denials prove nothing, exit 3."""
    _point(monkeypatch, mesh, outside=mesh.l4_deny, control=False)
    code, document = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", rules, "--active")
    statuses = {check: f["status"] for check, f in _probe_findings(document).items()}
    assert statuses == dict.fromkeys(PROBE_CHECKS, "inconclusive")
    assert code == 3
