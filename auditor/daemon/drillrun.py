"""Runs a chaos drill's steps (``core.drill.drill_steps``) against ports, with a clock.

Thin: every decision (what the canary is, what a drift changes, when a promise counts as
detected or resolved) is the pure core's; this module only performs the steps in order, polls
the audit, measures the seconds, and always ends with the sandbox reverted and swept, whatever
happened (an API error, the kill switch, a stop request). ``auditor.app.run_drill`` wires it to
the API server, the static audit of the live snapshot (plus a probe run against the canary when
probes are on: ``RunOptions.by_probes``) and Slack.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from auditor.core.drill import (
    Action,
    Canary,
    Drift,
    DrillAlerter,
    DrillOutcome,
    DrillResult,
    Judgement,
    SandboxWriter,
    Step,
    alert_text,
    judge,
    resolved_text,
)
from auditor.core.model import Finding

Audit = Callable[[], tuple[Finding, ...]]


@dataclass(frozen=True, slots=True)
class RunOptions:
    poll_s: float = 2.0
    timeout_s: float = 180.0
    kill_switch: bool = False  # the setting; the namespace label is read through the sandbox
    # The audit runs probes (in-cluster probe pods): the baseline needs passing probe verdicts and
    # a drift counts as detected only by a failing probe verdict on its promise (core.drill.judge).
    by_probes: bool = False


class DrillAborted(Exception):  # noqa: N818 - a condition to stop on, not a bug
    """The kill switch, a stop request, or a failed write: stop, revert, sweep."""


@dataclass
class _Record:
    drift: Drift
    injected_at: float | None = None
    detected_s: float | None = None
    alerted_s: float | None = None
    alerted: bool = False
    resolved: bool = False
    detected_by: tuple[str, ...] = ()
    detail: list[str] = field(default_factory=list)

    def outcome(self) -> DrillOutcome:
        return DrillOutcome(
            kind=self.drift.kind.name,
            promise=self.drift.kind.promise.value,
            detected=self.detected_s is not None,
            time_to_detect_s=None if self.detected_s is None else round(self.detected_s, 3),
            alerted=self.alerted,
            time_to_alert_s=None if self.alerted_s is None else round(self.alerted_s, 3),
            resolved=self.resolved,
            detail="; ".join(self.detail),
            detected_by=self.detected_by,
        )


class DrillRunner:
    """One drill: ``run(steps)`` performs them and returns the ``DrillResult``."""

    def __init__(
        self,
        canary: Canary,
        sandbox: SandboxWriter,
        audit: Audit,
        alerter: DrillAlerter,
        options: RunOptions,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._canary = canary
        self._sandbox = sandbox
        self._audit = audit
        self._alerter = alerter
        self._options = options
        self._stop = stop or threading.Event()
        self._clock = clock
        self._log = structlog.get_logger("auditor.drill")
        self._records: dict[str, _Record] = {}
        self._injected: Drift | None = None
        self._baseline: tuple[bool, str] = (False, "not reached")
        self._last: Judgement | None = None

    def run(self, steps: tuple[Step, ...]) -> DrillResult:
        aborted: str | None = None
        try:
            for step in steps:
                self._check_kill_switch()
                self._perform(step)
        except DrillAborted as error:
            aborted = str(error)
            self._log.warning("drill aborted", reason=aborted)
        except Exception as error:  # noqa: BLE001 - any adapter failure ends the drill; it still reverts and sweeps
            aborted = f"{type(error).__name__}: {error}"
            self._log.error("drill failed", error=aborted)
        finally:
            leftover = self._clean_up()
        return DrillResult(
            canary=self._canary.target,
            source=self._canary.source,
            baseline=self._baseline[0],
            baseline_detail=self._baseline[1],
            outcomes=tuple(r.outcome() for r in self._records.values()),
            leftover_objects=leftover,
            aborted=aborted,
        )

    def _check_kill_switch(self) -> None:
        if self._stop.is_set():
            raise DrillAborted("stop requested (the daemon is shutting down)")
        if self._options.kill_switch:
            raise DrillAborted("kill switch on (setting drill.kill_switch)")
        if self._sandbox.killed():
            raise DrillAborted("kill switch on (the sandbox namespace is labelled mesh-auditor.dev/drills=off)")

    def _perform(self, step: Step) -> None:
        self._log.info("drill step", action=step.action.value, drift=step.drift.kind.name if step.drift else None)
        drift = step.drift
        if step.action is Action.SWEEP:
            self._sandbox.sweep()  # what a crashed drill left behind
        elif step.action is Action.DEPLOY:
            for manifest in self._canary.objects:
                self._sandbox.create(manifest)
        elif step.action is Action.AWAIT_BASELINE:
            passed = self._await(lambda j: j.passes, "the baseline")
            self._baseline = (passed, self._describe_last())
            if not passed:
                raise DrillAborted(f"the canary never passed its baseline: {self._describe_last()}")
        elif drift is not None:
            self._perform_drift(step.action, drift)

    def _perform_drift(self, action: Action, drift: Drift) -> None:
        record = self._records.setdefault(drift.kind.name, _Record(drift))
        if action is Action.INJECT:
            self._sandbox.patch(drift.ref, drift.inject)
            self._injected = drift
            record.injected_at = self._clock()
        elif action is Action.AWAIT_DETECT:
            promise = drift.kind.promise
            if self._await(lambda j: j.detects(promise), f"detection of {drift.kind.name}"):
                record.detected_s = self._since(record)
                record.detected_by = self._last.detected_by(promise) if self._last is not None else ()
                self._log.info(
                    "drift detected",
                    drift=drift.kind.name,
                    seconds=round(record.detected_s or 0, 3),
                    detected_by=list(record.detected_by),
                )
            else:
                record.detected_by = self._last.detected_by(promise) if self._last is not None else ()
                if self._options.by_probes and "static" in record.detected_by:
                    record.detail.append(f"the static audit detected it on {promise.value}, no probe verdict did")
                record.detail.append(f"not detected within {self._options.timeout_s:g} s: {self._describe_last()}")
        elif action is Action.ALERT:
            if record.detected_s is None:
                record.detail.append("no alert sent: nothing was detected")
                return
            assert self._last is not None  # noqa: S101 - detection set it
            record.alerted = self._alerter.send(alert_text(self._canary, drift, self._last, record.detected_s))
            record.alerted_s = self._since(record) if record.alerted else None
            if not record.alerted:
                record.detail.append("the drill alert was not delivered (Slack off or refused)")
        elif action is Action.REVERT:
            self._sandbox.patch(drift.ref, drift.revert)
            self._injected = None
        elif action is Action.AWAIT_RESOLVE:
            record.resolved = self._await(lambda j: j.passes, f"resolution of {drift.kind.name}")
            if not record.resolved:
                record.detail.append(f"not resolved within {self._options.timeout_s:g} s: {self._describe_last()}")
            elif record.alerted:
                self._alerter.send(resolved_text(self._canary, drift))

    def _since(self, record: _Record) -> float:
        return self._clock() - (record.injected_at or self._clock())

    def _await(self, wanted: Callable[[Judgement], bool], what: str) -> bool:
        """Audit every ``poll_s`` until ``wanted`` holds or ``timeout_s`` passes."""
        deadline = self._clock() + self._options.timeout_s
        while True:
            try:
                self._last = judge(self._audit(), self._canary, by_probes=self._options.by_probes)
            except Exception as error:  # noqa: BLE001 - an audit that could not read the cluster is retried until the deadline
                self._log.warning("drill audit failed", awaiting=what, error=f"{type(error).__name__}: {error}")
                self._last = None
            if self._last is not None and wanted(self._last):
                return True
            if self._clock() >= deadline:
                return False
            if self._stop.wait(self._options.poll_s):
                raise DrillAborted("stop requested (the daemon is shutting down)")
            self._check_kill_switch()

    def _describe_last(self) -> str:
        return self._last.describe() if self._last is not None else "the audit could not read the cluster"

    def _clean_up(self) -> int:
        """Revert a drift still injected (so the canary is never left drifted), sweep, and count
        what is left once the canary's pods are gone (bounded by ``timeout_s``)."""
        try:
            if self._injected is not None:
                self._sandbox.patch(self._injected.ref, self._injected.revert)
                self._injected = None
        except Exception as error:  # noqa: BLE001 - the sweep below deletes the drifted object anyway
            self._log.warning("drift not reverted before the sweep", error=f"{type(error).__name__}: {error}")
        deadline = self._clock() + self._options.timeout_s
        while True:
            try:
                self._sandbox.sweep()
                left = self._sandbox.leftovers()
            except Exception as error:  # noqa: BLE001 - reported as leftovers; the next drill's sweep retries
                self._log.error("drill sandbox not swept", error=f"{type(error).__name__}: {error}")
                return -1
            if left == 0 or self._clock() >= deadline:
                return left
            time.sleep(min(self._options.poll_s, 1.0))
