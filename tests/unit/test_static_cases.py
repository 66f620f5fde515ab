"""Each static fixture case produces exactly the non-pass findings it declares."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from auditor.cli import main
from tests.cases import Case, all_cases, materialize, outcome

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_yields_declared_findings(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit of base + overlay fails, passes or is inconclusive exactly where the case says."""
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    manifests = materialize(case, tmp_path)
    out = io.StringIO()
    code = main(
        ["check", "--manifests", str(manifests), "--rules", str(case.rules), "--output", "json"],
        stdout=out,
    )
    document = json.loads(out.getvalue())
    assert outcome(document) == case.expect, case.description
    assert code == document["summary"]["exit_code"]
