"""Drift lifecycle: an immutable state machine per alert fingerprint (check id + target).

    OK --fail--> PENDING --(N consecutive fails)--> FIRING --pass--> OK     (notify: opened / resolved)
    any phase --error/inconclusive--> same phase, marked degraded            (never opens, never resolves)

N is per method (default 1 for static config drift, 2 for probes, where one failure can be a
fresh node's not-yet-ready ztunnel, semantics §6). Flapping is damped: an alert that opened
``flap_threshold`` times within ``flap_window`` seconds stays FIRING (one open alert, no new
messages) until it has passed ``quiet_passes`` times in a row.

Pure: time comes in as epoch seconds; serialisation (``to_dict``/``from_dict``) is kept apart
so the state store can persist it. Transitions are returned, never sent: notifying is a sink's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from auditor.core.checks import catalog
from auditor.core.model import CheckMeta, Finding, Method, Status


class Phase(StrEnum):
    """An alert's phase: ``ok``, ``pending`` (failing, fewer times than ``fails_to_open``), ``firing``."""

    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"


class TransitionKind(StrEnum):
    """What a transition tells Slack: opened, resolved, changed (still firing, new message or
    evidence), degraded (could not evaluate), closed (its target or check is gone)."""

    OPENED = "opened"
    RESOLVED = "resolved"
    CHANGED = "changed"  # still firing, but the message or evidence changed
    DEGRADED = "degraded"  # could not evaluate: reported, never an open or a resolve
    CLOSED = "closed"  # its target or check no longer exists: closed with a reason, not "resolved"


@dataclass(frozen=True, slots=True)
class DriftPolicy:
    """When an alert opens: ``fails_to_open`` consecutive FAILs per method; ``flap_threshold`` opens
    within ``flap_window`` seconds mark it flapping."""

    fails_to_open: Mapping[Method, int] = field(default_factory=lambda: {Method.STATIC: 1, Method.PROBE: 2})
    flap_threshold: int = 3  # opens within the window that make an alert "flapping"
    flap_window: float = 3600.0  # seconds
    quiet_passes: int = 3  # consecutive passes a flapping alert needs before it resolves


@dataclass(frozen=True, slots=True)
class AlertState:
    """One alert (a check on a target) across audits; times are epoch seconds."""

    fingerprint: str
    check: str
    target: str
    method: Method
    phase: Phase = Phase.OK
    failures: int = 0
    passes: int = 0
    degraded: bool = False
    opened_at: float | None = None
    updated_at: float = 0.0
    opens: tuple[float, ...] = ()  # when it opened, within the flap window
    message: str = ""
    openings: int = 0  # how many times it opened: each opening is its own incident (own thread)

    @property
    def incident(self) -> str:
        """The key of the current (or last) incident: ``fingerprint#openings``."""
        return f"{self.fingerprint}#{self.openings}"

    def with_evaluation(
        self, finding: Finding, now: float, policy: DriftPolicy
    ) -> tuple[AlertState, Transition | None]:
        """The state after one more finding for this alert (``now``: epoch seconds) and the transition
        it caused, if any. ERROR, INCONCLUSIVE and SKIPPED neither open nor resolve an alert: the first
        one is a ``degraded`` transition."""
        if finding.status in {Status.ERROR, Status.INCONCLUSIVE, Status.SKIPPED}:
            return self._degraded(finding, now)
        if finding.status is Status.FAIL:
            return self._failed(finding, now, policy)
        return self._passed(finding, now, policy)

    def _degraded(self, finding: Finding, now: float) -> tuple[AlertState, Transition | None]:
        state = replace(self, degraded=True, updated_at=now)
        first = not self.degraded
        return state, Transition(TransitionKind.DEGRADED, state, finding) if first else None

    def _failed(self, finding: Finding, now: float, policy: DriftPolicy) -> tuple[AlertState, Transition | None]:
        failures = self.failures + 1
        recent = tuple(t for t in self.opens if now - t < policy.flap_window)
        if self.phase is Phase.FIRING:
            state = replace(
                self, failures=failures, passes=0, degraded=False, updated_at=now, opens=recent, message=finding.message
            )
            changed = finding.message != self.message
            return state, Transition(TransitionKind.CHANGED, state, finding) if changed else None
        if failures < policy.fails_to_open.get(self.method, 1):
            return replace(self, phase=Phase.PENDING, failures=failures, passes=0, degraded=False, updated_at=now), None
        state = replace(
            self,
            phase=Phase.FIRING,
            failures=failures,
            passes=0,
            degraded=False,
            opened_at=now,
            updated_at=now,
            opens=(*recent, now),
            message=finding.message,
            openings=self.openings + 1,
        )
        return state, Transition(TransitionKind.OPENED, state, finding)

    def _passed(self, finding: Finding, now: float, policy: DriftPolicy) -> tuple[AlertState, Transition | None]:
        passes = self.passes + 1
        recent = tuple(t for t in self.opens if now - t < policy.flap_window)
        if self.phase is not Phase.FIRING:
            return replace(
                self, phase=Phase.OK, failures=0, passes=passes, degraded=False, updated_at=now, opens=recent
            ), None
        if len(recent) >= policy.flap_threshold and passes < policy.quiet_passes:
            # Flapping: keep the one open alert instead of a resolve now and a re-open next cycle.
            return replace(self, passes=passes, failures=0, degraded=False, updated_at=now, opens=recent), None
        state = replace(
            self,
            phase=Phase.OK,
            failures=0,
            passes=passes,
            degraded=False,
            opened_at=None,
            updated_at=now,
            opens=recent,
        )
        return state, Transition(TransitionKind.RESOLVED, state, finding)


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of an alert worth telling (``kind``), with the state after it and the finding that caused it."""

    kind: TransitionKind
    state: AlertState
    finding: Finding


def fingerprint(finding: Finding) -> str:
    """An alert's key: ``"<check id>|<target>"``. Never raises."""
    return f"{finding.check.id}|{finding.target}"


@dataclass(frozen=True, slots=True)
class DriftBook:
    """Every alert's state; ``evaluate`` returns the next book and the transitions to notify."""

    alerts: Mapping[str, AlertState] = field(default_factory=dict)

    def evaluate(
        self, findings: Iterable[Finding], now: float, policy: DriftPolicy
    ) -> tuple[DriftBook, tuple[Transition, ...]]:
        """The next book and its transitions after one audit's ``findings`` (``now``: epoch seconds);
        alerts of checks and targets not among ``findings`` are left as they are."""
        alerts = dict(self.alerts)
        transitions: list[Transition] = []
        for finding in findings:
            key = fingerprint(finding)
            current = alerts.get(key) or AlertState(key, finding.check.id, finding.target, finding.method)
            alerts[key], transition = current.with_evaluation(finding, now, policy)
            if transition is not None:
                transitions.append(transition)
        # Alerts whose checks did not report this time stay as they are: a missing report can
        # never resolve an open alert.
        return DriftBook(alerts), tuple(transitions)

    def close_unreported(
        self, findings: Iterable[Finding], method: Method, now: float, *, only_gone: bool = False
    ) -> tuple[DriftBook, tuple[Transition, ...]]:
        """Close the open ``method`` alerts that a complete audit (``findings``: every finding of
        one audit from an in-sync snapshot) no longer reports at all, with the reason: the check is
        no longer run, the target no longer exists, or the check no longer applies to it. An alert
        that is reported (even as ERROR or INCONCLUSIVE) is never closed here."""
        findings = tuple(findings)
        reported = {fingerprint(f) for f in findings}
        checks = {f.check.id for f in findings}
        targets = {f.target for f in findings}
        missing = {f.target for f in findings if f.check.id == catalog.TARGET_EXISTS.id and f.status is Status.FAIL}
        alerts = dict(self.alerts)
        transitions: list[Transition] = []
        for key, alert in self.alerts.items():
            if alert.phase is not Phase.FIRING or alert.method is not method or key in reported:
                continue
            if only_gone and alert.target in targets and alert.target not in missing:
                continue
            if alert.target not in targets or alert.target in missing:
                reason = f"{alert.target} no longer exists (its Service or namespace was deleted): alert closed"
            elif alert.check not in checks:
                reason = f"the check {alert.check} no longer runs (it left the rules or the catalog): alert closed"
            else:
                reason = (
                    f"{alert.check} no longer applies to {alert.target} (out of scope or not protected): alert closed"
                )
            closed = replace(
                alert, phase=Phase.OK, failures=0, passes=0, degraded=False, opened_at=None, updated_at=now
            )
            alerts[key] = closed
            finding = Finding(_meta(alert.check), alert.target, Status.SKIPPED, reason, method=method)
            transitions.append(Transition(TransitionKind.CLOSED, closed, finding))
        return DriftBook(alerts), tuple(transitions)

    @property
    def firing(self) -> tuple[AlertState, ...]:
        """The alerts in phase ``FIRING``, in book order. Never raises."""
        return tuple(a for a in self.alerts.values() if a.phase is Phase.FIRING)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the state ConfigMap (``version`` 1)."""
        return {
            "version": 1,
            "alerts": [_state_dict(a) for a in sorted(self.alerts.values(), key=lambda a: a.fingerprint)],
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> DriftBook:
        """The inverse of ``to_dict``. Raises ``ValueError``/``KeyError``/``TypeError`` on another shape or version."""
        if data.get("version") != 1:
            raise ValueError(f"unknown drift state version {data.get('version')!r}")
        alerts = [_state_from(item) for item in data.get("alerts", [])]
        return DriftBook({a.fingerprint: a for a in alerts})


def _meta(check_id: str) -> CheckMeta:
    try:
        return catalog.by_id(check_id)
    except KeyError:  # a check this version no longer has: describe it by its id
        return replace(catalog.SNAPSHOT_READ, id=check_id, title=check_id, references=())


def _state_dict(state: AlertState) -> dict[str, Any]:
    return {
        "fingerprint": state.fingerprint,
        "check": state.check,
        "target": state.target,
        "method": state.method.value,
        "phase": state.phase.value,
        "failures": state.failures,
        "passes": state.passes,
        "degraded": state.degraded,
        "opened_at": state.opened_at,
        "updated_at": state.updated_at,
        "opens": list(state.opens),
        "message": state.message,
        "openings": state.openings,
    }


def _state_from(item: Mapping[str, Any]) -> AlertState:
    return AlertState(
        fingerprint=str(item["fingerprint"]),
        check=str(item["check"]),
        target=str(item["target"]),
        method=Method(item["method"]),
        phase=Phase(item["phase"]),
        failures=int(item["failures"]),
        passes=int(item["passes"]),
        degraded=bool(item["degraded"]),
        opened_at=None if item["opened_at"] is None else float(item["opened_at"]),
        updated_at=float(item["updated_at"]),
        opens=tuple(float(t) for t in item["opens"]),
        message=str(item["message"]),
        # Stored before incidents were counted: an open alert is in its first incident.
        openings=int(item.get("openings", 1 if item["phase"] == Phase.FIRING.value else 0)),
    )
