"""The daemon's Prometheus metrics: which probe result increments which outcome."""

from __future__ import annotations

from auditor.core.model import Status
from auditor.core.probing.probereport import BatchProblem
from auditor.daemon.metrics import NO_RESULT, DaemonMetrics
from probes.wire import Outcome
from tests.unit.probing.builders import ALLOWED, L4, catalog_rules, compliant, make_plan, posture, report


def _outcomes(metrics: DaemonMetrics) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in metrics.probe_outcomes.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def test_every_planned_request_counts_once_by_what_its_probe_observed() -> None:
    plan = make_plan(posture(catalog_rules()))
    answers = compliant(plan)
    metrics = DaemonMetrics()
    metrics.record_probe_report(plan, report(plan, answers))
    expected: dict[str, float] = {}
    for observation in answers.values():
        expected[observation.outcome.value] = expected.get(observation.outcome.value, 0) + 1
    assert _outcomes(metrics) == expected
    assert sum(expected.values()) == sum(len(b.requests) for b in plan.batches)
    # A second cycle adds to the counters (a counter, not the last cycle's tally).
    metrics.record_probe_report(plan, report(plan, answers))
    assert _outcomes(metrics) == {k: 2 * v for k, v in expected.items()}


def test_requests_whose_pod_brought_nothing_back_count_as_no_result() -> None:
    plan = make_plan(posture(catalog_rules()))
    outside = [b for b in plan.batches if b.identity.role.value == "outside"]
    assert outside, "the plan has an outside batch"
    answers = {r.id: ALLOWED for b in plan.batches for r in b.requests}
    answers[outside[0].requests[0].id] = L4
    problems = {"outside": BatchProblem(Status.INCONCLUSIVE, "pod Pending at the deadline")}
    metrics = DaemonMetrics()
    metrics.record_probe_report(plan, report(plan, answers, problems))
    unreported = sum(len(b.requests) for b in outside)
    assert _outcomes(metrics) == {
        NO_RESULT: unreported,
        Outcome.ALLOWED.value: sum(len(b.requests) for b in plan.batches) - unreported,
    }
