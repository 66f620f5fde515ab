"""The active audit's wiring: plan, run through the ProbeRunner port, verdicts beside static findings."""

from __future__ import annotations

import io

import pytest

from auditor.app import active_audit
from auditor.cli import main
from auditor.core.model import Method, Status
from auditor.core.probing.probeplan import PlanOptions, RunPlan
from auditor.core.probing.probereport import RunReport
from tests.cases import ROOT
from tests.unit.probing.builders import (
    CATALOG,
    RUN,
    catalog_rules,
    compliant,
    header_values,
    posture,
    report,
    snapshot,
)


class CompliantRunner:
    """A ProbeRunner fake: every request meets what the promise predicts."""

    def __init__(self) -> None:
        self.plans: list[RunPlan] = []

    def run(self, plan: RunPlan) -> RunReport:
        self.plans.append(plan)
        return report(plan, compliant(plan))


def test_active_audit_runs_one_plan_and_adds_probe_findings() -> None:
    """One run with the given id; the probe verdicts join the static findings, sorted by target."""
    rules = posture(catalog_rules())
    runner = CompliantRunner()
    options = PlanOptions(control_allowed=True)
    findings = active_audit(
        snapshot(CATALOG), rules, values=header_values(rules), static=(), runner=runner, options=options, run_id=RUN
    )
    assert [p.run_id for p in runner.plans] == [RUN]
    assert {(f.check.id, f.status, f.method) for f in findings} == {
        ("strict-mtls.probe", Status.PASS, Method.PROBE),
        ("principal-allowlist.probe", Status.PASS, Method.PROBE),
        ("required-headers.probe", Status.PASS, Method.PROBE),
        ("waypoint-enrollment.probe", Status.PASS, Method.PROBE),
    }


def test_active_needs_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """--active with --manifests is a usage error (exit 2) that says what to add."""
    code = main(
        [
            "check",
            "--manifests",
            str(ROOT / "examples/retail-store"),
            "--rules",
            str(ROOT / "rules/retail-store.yaml"),
            "--active",
        ],
        stdout=io.StringIO(),
    )
    assert code == 2
    assert "--active needs a cluster" in capsys.readouterr().err
