"""``witnessplan``: the witnesses the static checks decide, listed for ``scripts/lab verify`` (#12).

On every static fixture, a check that PASSes lists only witnesses whose expected outcome is what
the check promises (allowed identities allowed, intruders and header-less requests denied), and a
check that FAILs on a Service-addressed witness lists at least one witness that breaks the promise.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules, resolve_header_values
from auditor.core.audit import run_static_audit
from auditor.core.checks.witnessplan import ALLOWED, DENIED, UNKNOWN, Witness, plan_witnesses
from tests import cases

ALL = cases.all_cases()


def _plan(case: cases.Case, tmp_path: Path) -> tuple[list[Witness], dict[tuple[str, str], str]]:
    merged = cases.materialize(case, tmp_path)
    posture = load_rules([str(case.rules)])
    loaded = read_manifests([str(merged)], io.StringIO(""))
    environ = {**os.environ, **case.env}

    def secret(namespace: str, name: str, key: str) -> str | None:
        return loaded.secrets.get((namespace, name), {}).get(key)

    values = resolve_header_values(posture, environ, secret)
    findings = run_static_audit(loaded.snapshot, posture, values)
    statuses = {(f.target, f.check.id): str(f.status) for f in findings}
    return plan_witnesses(loaded.snapshot, posture, values), statuses


def _promised(witness: Witness) -> str:
    if witness.check == "principal-allowlist.intruders-refused":
        return DENIED
    if witness.check == "principal-allowlist.allowed-admitted" or witness.label == "control":
        return ALLOWED
    return DENIED


def test_retail_store_witnesses(tmp_path: Path) -> None:
    base = cases.Case(
        "retail",
        tmp_path,
        "",
        cases.ROOT / "examples" / "retail-store",
        (),
        cases.ROOT / "rules" / "retail-store.yaml",
        {},
    )
    witnesses, _ = _plan(base, tmp_path)
    by_check: dict[str, int] = {}
    for w in witnesses:
        by_check[w.check] = by_check.get(w.check, 0) + 1
    assert by_check == {
        "principal-allowlist.allowed-admitted": 1,
        "principal-allowlist.intruders-refused": 10,
        "required-headers.enforced": 10,
    }
    assert all(w.expected == _promised(w) for w in witnesses)
    assert "internal-retail-token" not in repr(witnesses)
    assert all("internal-retail-token" not in str(w.as_dict()) for w in witnesses)


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_witnesses_agree_with_the_findings(case: cases.Case, tmp_path: Path) -> None:
    witnesses, statuses = _plan(case, tmp_path)
    for w in witnesses:
        status = statuses[(w.target, w.check)]
        if status == "pass":
            assert w.expected in {_promised(w), UNKNOWN}, (w.check, w.caller_label, w.label, w.reason)
    for (target, check), status in statuses.items():
        listed = [w for w in witnesses if w.target == target and w.check == check]
        if status == "fail" and listed:
            assert any(w.expected != _promised(w) for w in listed), (target, check)
