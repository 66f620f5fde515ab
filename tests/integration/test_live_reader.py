"""The one-shot live reader: pagination, and missing CRDs reported as ERROR, never as empty."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from auditor.adapters.k8s.reader import ClusterReader
from testrigs.devtools import controlplane
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT, Case, materialize
from tests.integration.live import AppliedCase, audit

pytestmark = pytest.mark.kube
RULES = ROOT / "rules" / "retail-store.yaml"
EXAMPLE = ROOT / "examples" / "retail-store"


def _example(tmp_path: Path) -> Path:
    case = Case(name="retail", directory=EXAMPLE, description="", base=EXAMPLE, remove=(), rules=RULES, env={})
    return materialize(case, tmp_path)


def test_paginated_read_equals_a_single_page(kube_api: KubeAPI, tmp_path: Path) -> None:
    """Two objects per page (continue tokens on every kind) read exactly what one big page reads."""
    with AppliedCase(kube_api, _example(tmp_path), tmp_path), kube_api.new_client() as api:
        small = ClusterReader(api, page_size=2).snapshot()
        large = ClusterReader(api).snapshot()
    assert small == large
    assert len(small.services) >= 5
    assert small.problems == ()


def test_missing_crd_is_an_error_that_names_it(tmp_path: Path) -> None:
    """A cluster without the AuthorizationPolicy CRD: ERROR 'is the CRD installed?', exit 3, no pass."""
    state = tmp_path / "cp"
    kubeconfig = controlplane.up(state)
    try:
        kube = KubeAPI(kubeconfig, controlplane.build().kubectl)
        kube.kubectl("delete", "crd", "authorizationpolicies.security.istio.io", "--wait=true", "--timeout=60s")
        _wait_unserved(kube, "authorizationpolicies.security.istio.io")
        documents = yaml.safe_load_all(_example(tmp_path).read_text(encoding="utf-8"))
        without = tmp_path / "without-authz.yaml"
        without.write_text(
            yaml.safe_dump_all([d for d in documents if d and d["kind"] != "AuthorizationPolicy"]), encoding="utf-8"
        )
        with AppliedCase(kube, without, tmp_path):
            code, document = audit("--kubeconfig", str(kubeconfig), "--rules", str(RULES))
    finally:
        controlplane.down(state)
    errors = {f["target"]: f["message"] for f in document["findings"] if f["check"] == "audit.snapshot-read"}
    assert code == 3
    assert list(errors) == ["cluster/AuthorizationPolicy"]
    assert "is the CRD installed?" in errors["cluster/AuthorizationPolicy"]
    catalog = {f["check"]: f for f in document["findings"] if f["target"] == "default/catalog"}
    for check in (
        "principal-allowlist.intruders-refused",
        "principal-allowlist.allowed-admitted",
        "required-headers.enforced",
    ):
        assert catalog[check]["status"] == "error"
        assert "needs the authorizationpolicies.security.istio.io CRD" in catalog[check]["message"]
    assert catalog["strict-mtls.peer-authentication"]["status"] == "pass"  # needs no AuthorizationPolicy


def _wait_unserved(kube: KubeAPI, crd: str) -> None:
    for _ in range(100):
        if crd.split(".", maxsplit=1)[0] not in kube.kubectl("api-resources", "--output=name"):
            return
        time.sleep(0.2)
    pytest.fail(f"{crd} is still served")
