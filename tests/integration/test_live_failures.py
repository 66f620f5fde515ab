"""A live audit that cannot see the cluster says so: exit 3 and a clear message, never exit 0."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from auditor.adapters import kubeapi as api_calls
from auditor.cli import main
from testrigs.devtools import controlplane
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT
from tests.integration.live import audit

RULES = str(ROOT / "rules" / "retail-store.yaml")
EXAMPLES = [ROOT / "examples" / "retail-store", ROOT / "examples" / "retail-store-drifted"]

pytestmark = pytest.mark.kube


def test_api_server_stopped_mid_audit_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server dies after a few lists: the rest are ERROR findings, exit 3, and stderr says why."""
    state = tmp_path / "cp"
    kubeconfig = controlplane.up(state)
    calls = {"n": 0}
    real_get_json = api_calls.get_json

    def get_json_then_stop(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:
            controlplane.down(state)  # mid-audit: after namespaces, serviceaccounts, services
        return real_get_json(*args, **kwargs)

    monkeypatch.setattr(api_calls, "get_json", get_json_then_stop)
    try:
        code, document = audit("--kubeconfig", str(kubeconfig), "--rules", RULES)
    finally:
        controlplane.down(state)
    errors = {f["target"] for f in document["findings"] if f["check"] == "audit.snapshot-read"}
    assert code == 3
    assert "cluster/Pod" in errors
    assert "cluster/ServiceEntry" in errors
    assert not [f for f in document["findings"] if f["status"] in {"pass", "fail"}]
    err = capsys.readouterr().err
    assert "did not answer" in err or "stopped answering" in err


def test_unreachable_server_exits_3(tmp_path: Path, kube_api: KubeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    """A kubeconfig pointing at a closed port: one line naming the server and the cause, exit 3."""
    text = kube_api.kubeconfig.read_text(encoding="utf-8")
    closed = tmp_path / "kubeconfig"
    closed.write_text(re.sub(r"https://127\.0\.0\.1:\d+", "https://127.0.0.1:1", text), encoding="utf-8")
    out = io.StringIO()
    code = main(["check", "--kubeconfig", str(closed), "--rules", RULES, "--output", "json"], stdout=out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert out.getvalue() == ""
    assert len(err) == 1
    assert "cannot reach the API server https://127.0.0.1:1" in err[0]
    assert "connection refused" in err[0]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted_by_the_real_crd_schemas(kube_api: KubeAPI, example: Path) -> None:
    """Server-side dry run: every Istio and Gateway API object of the examples validates."""
    kube_api.apply(example / "00-namespaces.yaml")  # a dry run does not create namespaces
    report = kube_api.kubectl("apply", "--dry-run=server", f"--filename={example}")
    assert "authorizationpolicy.security.istio.io/catalog" in report
    assert "gateway.gateway.networking.k8s.io/catalog-waypoint" in report
    assert "peerauthentication.security.istio.io/default" in report


def test_invalid_policy_is_rejected_by_the_api_server(kube_api: KubeAPI) -> None:
    """An AuthorizationPolicy with a misspelled action never reaches the cluster: the CRD schema refuses it."""
    bad = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: default}
spec:
  action: ALLOWED
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/ui]}}]}]
"""
    with pytest.raises(controlplane.ControlPlaneError) as refused:
        kube_api.kubectl("apply", "--dry-run=server", "--filename=-", stdin=bad)
    assert 'Unsupported value: "ALLOWED"' in str(refused.value)
