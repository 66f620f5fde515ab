"""Parity: the live audit of manifests applied to a real API server equals the offline audit.

One parametrized test over every static fixture case and both examples. The live reader and the
manifest reader share the decoder, so any difference comes from what the API server does to the
objects (defaulting, status, timestamps) or from the reader itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT, Case, all_cases, load_case, materialize
from tests.integration.live import AppliedCase, audit, statuses

RULES = ROOT / "rules" / "retail-store.yaml"


def _example(name: str) -> Case:
    return Case(
        name=name,
        directory=ROOT / "examples" / name,
        description=f"examples/{name}",
        base=ROOT / "examples" / name,
        remove=(),
        rules=RULES,
        env={},
    )


CASES = [*all_cases(), _example("retail-store"), _example("retail-store-drifted")]


@pytest.mark.kube
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_live_audit_equals_offline_audit(
    case: Case, kube_api: KubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same manifests give the same findings, whether read from files or from the API server."""
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    manifests = materialize(case, tmp_path)
    offline_code, offline = audit("--manifests", str(manifests), "--rules", str(case.rules))
    with AppliedCase(kube_api, manifests, tmp_path):
        live_code, live = audit("--kubeconfig", str(kube_api.kubeconfig), "--rules", str(case.rules))
    expected = statuses(offline)
    if case.live_expect is not None:
        expected = dict.fromkeys(expected, "pass") | {
            (target, check): status for target, checks in case.live_expect.items() for check, status in checks.items()
        }
    assert statuses(live) == expected, case.description
    assert live_code == (offline_code if case.live_expect is None else live["summary"]["exit_code"])


def test_every_case_is_covered() -> None:
    """The parity test runs every fixture directory (a new case cannot be forgotten)."""
    directories = {p.parent.name for p in (ROOT / "tests" / "fixtures" / "static").glob("*/case.yaml")}
    assert directories == {c.name for c in CASES if c.directory.parent.name == "static"}
    assert load_case(ROOT / "tests" / "fixtures" / "static" / "authz-none").name == "authz-none"
