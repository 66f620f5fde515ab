"""How the runner reads a finished pod's status into a batch report (a fake pod API, no server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from auditor.adapters.probepods.kube import PodApi
from auditor.adapters.probepods.runner import PodProbeRunner, RunnerOptions
from auditor.core.model import Status
from auditor.core.probing.probereport import BatchReport
from tests.unit.probing.builders import RUN, catalog_rules, make_plan, posture

OUTSIDE = "default/catalog:outside:plaintext"


class FinishedPods(PodApi):
    """Every created pod is at once in the state ``status`` describes; watching must not be needed."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        self.pods: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        name = f"pod-{len(self.pods)}"
        self.pods[name] = {"metadata": {**manifest["metadata"], "name": name}, "status": self.status}
        return self.pods[name]

    def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        items = [p for p in self.pods.values() if p["metadata"]["namespace"] == namespace and "run-id" in selector]
        return {"metadata": {"resourceVersion": "1"}, "items": items}

    def delete(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    def watch(self, namespace: str, selector: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        raise AssertionError("finished pods need no watch")


def _outside_report(status: dict[str, Any]) -> tuple[BatchReport, FinishedPods]:
    plan = make_plan(posture(catalog_rules()), control_allowed=False)
    pods = FinishedPods(status)
    report = PodProbeRunner(pods, RunnerOptions()).run(plan)
    return next(b for b in report.batches if b.batch.startswith("outside")), pods


def _terminated(phase: str, **terminated: Any) -> dict[str, Any]:
    return {"phase": phase, "containerStatuses": [{"name": "probe", "state": {"terminated": terminated}}]}


def test_compact_report_missing_trailing_results_is_marked_incomplete() -> None:
    """complete: false in the termination message: kept results stay, the report is flagged incomplete."""
    message = f'{{"schema_version": 1, "run_id": "{RUN}", "truncated": true, "complete": false, "results": []}}'
    batch, pods = _outside_report(_terminated("Succeeded", exitCode=0, message=message))
    assert batch.problem is None
    assert batch.incomplete is True
    assert batch.observations == {}
    assert sorted(pods.deleted) == sorted(pods.pods)


@pytest.mark.parametrize(
    ("status", "expected", "reason"),
    [
        (_terminated("Failed", exitCode=2, reason="Error"), Status.ERROR, "exit code 2"),
        (
            {"phase": "Failed", "reason": "DeadlineExceeded", "message": "too long"},
            Status.INCONCLUSIVE,
            "activeDeadlineSeconds",
        ),
        (_terminated("Succeeded", exitCode=0), Status.ERROR, "no termination message"),
        (_terminated("Succeeded", exitCode=0, message="not json"), Status.ERROR, "not a probe result"),
    ],
    ids=["exit-2", "deadline-exceeded", "no-message", "garbage"],
)
def test_unusable_pod_endings_become_batch_problems(status: dict[str, Any], expected: Status, reason: str) -> None:
    """A pod that ran but left nothing usable: a problem with the status and reason, and the pod deleted."""
    batch, pods = _outside_report(status)
    assert batch.problem is not None
    assert batch.problem.status is expected
    assert reason in batch.problem.reason
    assert sorted(pods.deleted) == sorted(pods.pods)


class PendingPods(FinishedPods):
    """Pods that never start (no capacity): the watch idles until its timeout, like a real one."""

    def __init__(self) -> None:
        super().__init__({"phase": "Pending"})
        self.watch_timeouts: list[int] = []

    def watch(self, namespace: str, selector: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        self.watch_timeouts.append(timeout_s)
        time.sleep(min(timeout_s, 0.2))
        return iter(())


def test_a_stop_cuts_a_probe_cycle_within_seconds_and_deletes_its_pods() -> None:
    """Issue #18.5: SIGTERM during a probe cycle (deadline 300 s): the runner stops waiting at its
    next look at the stop event (every 3 s at most), deletes every pod it created, and reports the
    batches as not run, never as a pass."""
    plan = make_plan(posture(catalog_rules()), control_allowed=False)
    pods, stop = PendingPods(), threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    report = PodProbeRunner(pods, RunnerOptions(deadline_s=300), stop=stop).run(plan)
    took = time.monotonic() - started
    print(f"\nFIGURE probe cycle cut after the stop: {took - 0.5:.2f} s")
    assert took < 0.5 + 3.5
    assert max(pods.watch_timeouts) <= 3
    assert sorted(pods.deleted) == sorted(pods.pods)
    assert all(b.problem is not None and b.problem.status is not Status.PASS for b in report.batches)
