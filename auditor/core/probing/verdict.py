"""Verdicts: what a probe run proves, per protected Service and promise, as ``method: probe`` findings.

Pure: a ``probeplan.RunPlan``, the ``probereport.RunReport`` the runner brought back and the
static findings of the same audit in; findings out. The rules, strictest first:

- Traffic that reached what it must not (plaintext answered, intruder admitted, a request
  without a required header admitted, an allowed request without a waypoint hop) is a FAIL. It
  carries the static finding's evidence beside the probe's, and says whether config and traffic
  disagree (the static check passed) or agree (the static check failed too).
- The allowed identity refused (``l4-denied``/``l7-denied``) is a FAIL of principal-allowlist.
- An expected denial is a PASS only when the positive control succeeded in the same run; without
  one it is INCONCLUSIVE (a broken Service also "denies", semantics §1 closing note).
- ztunnel's refusal (``l4-denied``: a close or reset without a byte) counts only when the
  request's confirmation (probeplan ``again:``, a new connection after the first ended) was
  refused too: a restarting ztunnel cuts connections exactly so. Disagreeing answers are
  INCONCLUSIVE ("inconsistent answers"); either answer getting through is still a FAIL.
- A denial of the wrong kind (503, timeout, refused, dns-failure, ztunnel where the waypoint was
  expected) is INCONCLUSIVE (§1.4-§1.6). A missing report is ERROR or INCONCLUSIVE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from auditor.core.checks.catalog import (
    ALLOWED_ADMITTED,
    ALLOWLIST_PROBE,
    CAPTURED,
    HEADERS_ENFORCED,
    HEADERS_PROBE,
    INTRUDERS_REFUSED,
    PEER_AUTHENTICATION,
    STRICT_MTLS_PROBE,
    WAYPOINT_BOUND,
    WAYPOINT_BYPASS,
    WAYPOINT_GATEWAY,
    WAYPOINT_PROBE,
)
from auditor.core.checks.fixes import explained, merge_fixes, none
from auditor.core.endpoints import ENDPOINT_INTRUDER, ENDPOINT_PLAINTEXT, FROM_SLICES, Endpoint
from auditor.core.model import NO_FIX, CheckMeta, Evidence, Finding, Fix, Method, Status
from auditor.core.posture import ProtectedService
from auditor.core.probing.probeplan import (
    AGAIN,
    NEAR_MISS,
    PLAINTEXT,
    WITH_HEADERS,
    WITHOUT,
    PlannedRequest,
    Role,
    RunPlan,
)
from auditor.core.probing.probereport import Observation, RunReport
from probes.wire import Outcome

WAYPOINT_SERVER = "istio-envoy"
UPSTREAM_TIME = "x-envoy-upstream-service-time"
# Outcomes that show the request reached the application: the promise under test was broken.
_REACHED = frozenset({Outcome.ALLOWED, Outcome.APP_DENIED})
_DENIED = frozenset({Outcome.L4_DENIED, Outcome.L7_DENIED})
INCONSISTENT = "inconsistent answers"
_WHY_AGAIN = (
    "ztunnel's refusal counts only when a second request of the same identity, on a new connection after the "
    "first ended, is refused too: a connection cut by a restarting ztunnel looks the same"
)


@dataclass(frozen=True, slots=True)
class Seen:
    """One planned request resolved against the report: an observation, or why there is none."""

    request: PlannedRequest | None
    observation: Observation | None
    missing: Status = Status.INCONCLUSIVE
    reason: str = ""
    pod: str = ""

    def evidence(self) -> Evidence:
        """The ``Evidence`` of this request: what it observed (or why there is no result) and what was expected.
        Never raises.
        """
        if self.request is None:
            return Evidence("probe (not planned)", "", "(no request)", self.reason)
        where = f"sent from {self.pod}" if self.pod else ""
        if self.observation is None:
            return Evidence(f"probe request {self.request.id}", where, "(no result)", self.reason)
        note = f"expected {_expected(self.request)}{_response_note(self.observation)}"
        return Evidence(f"probe request {self.request.id}", where, self.observation.describe(), note)


def _expected(request: PlannedRequest) -> str:
    status = f" (HTTP {request.expect_status})" if request.expect_status is not None else ""
    return f"{request.expect.value}{status}"


def _response_note(observation: Observation) -> str:
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(observation.headers.items()))
    return f"; response headers {shown}" if shown else ""


@dataclass(frozen=True, slots=True)
class TargetView:
    """What one protected Service's verdicts read: its requests, their results, its static findings."""

    protected: ProtectedService
    plan: RunPlan
    report: RunReport
    static: Mapping[tuple[str, str], Finding]

    def seen(self, role: Role, variant: str) -> Seen:
        """The planned request of ``role`` and ``variant`` for this Service, resolved as ``resolve`` does; a ``Seen``
        without request (INCONCLUSIVE, with why) when none was planned. Never raises.
        """
        request = next(
            (r for r in self.plan.requests_for(self.protected.target) if r.role is role and r.variant == variant),
            None,
        )
        if request is None:
            skipped = self.plan.not_planned_for(self.protected.target, role)
            return Seen(None, None, reason=skipped.reason if skipped else f"no {role.value} request was planned")
        return self.resolve(request)

    def resolve(self, request: PlannedRequest) -> Seen:
        """``request`` resolved against the report: its observation, or ERROR (no report, or no result in it) or the
        batch problem's status (INCONCLUSIVE or ERROR) with the reason. Never raises.
        """
        batch = self.plan.batch_of(request.id)
        report = self.report.batch(batch.key) if batch else None
        if report is None:
            return Seen(request, None, Status.ERROR, "the probe runner returned no report for this request's pod")
        if report.problem is not None:
            return Seen(request, None, report.problem.status, report.problem.reason, report.pod)
        observation = report.observations.get(request.id)
        if observation is None:
            cut = " (the termination message was cut to fit 4096 bytes)" if report.incomplete else ""
            return Seen(
                request, None, Status.ERROR, f"the probe's report has no result for this request{cut}", report.pod
            )
        return Seen(request, observation, pod=report.pod)

    def again(self, seen: Seen) -> Seen | None:
        """The confirmation of ``seen``'s request (probeplan ``again:``) resolved, or None when none was planned.
        Never raises."""
        if seen.request is None:
            return None
        first = seen.request
        variant = f"{AGAIN}{first.variant}"
        planned = self.plan.requests_for(self.protected.target)
        request = next((r for r in planned if r.role is first.role and r.variant == variant), None)
        return self.resolve(request) if request is not None else None

    def statics(self, *checks: CheckMeta) -> list[Finding]:
        """The static findings of ``checks`` for this Service, in ``checks`` order (absent ones left out)."""
        found = (self.static.get((self.protected.target, c.id)) for c in checks)
        return [f for f in found if f is not None]


def probe_findings(plan: RunPlan, report: RunReport, static: Sequence[Finding]) -> tuple[Finding, ...]:
    """The probe findings of one run, sorted like static ones."""
    by_key = {(f.target, f.check.id): f for f in static}
    findings: list[Finding] = []
    for protected in plan.targets:
        view = TargetView(protected, plan, report, by_key)
        findings += _target_findings(view)
    return tuple(sorted((explained(f) for f in findings), key=Finding.sort_key))


def _target_findings(view: TargetView) -> list[Finding]:
    protected = view.protected
    checks = [STRICT_MTLS_PROBE, ALLOWLIST_PROBE]
    checks += [HEADERS_PROBE] if protected.required_headers else []
    checks += [WAYPOINT_PROBE] if protected.waypoint is not None else []
    if protected.probe is None:
        message = "not probed: the rules give no probe target (protectedServices[].probe)"
        return [_finding(view, meta, Status.SKIPPED, message, []) for meta in checks]
    verdicts = {
        STRICT_MTLS_PROBE.id: strict_mtls_verdict,
        ALLOWLIST_PROBE.id: allowlist_verdict,
        HEADERS_PROBE.id: headers_verdict,
        WAYPOINT_PROBE.id: waypoint_verdict,
    }
    found = [verdicts[meta.id](view) for meta in checks]
    if endpoint_seens(view, ENDPOINT_INTRUDER):
        found.append(pod_ip_bypass_verdict(view))
    return found


def _finding(
    view: TargetView, meta: CheckMeta, status: Status, message: str, evidence: list[Evidence], *, fix: Fix = NO_FIX
) -> Finding:
    return Finding(
        check=meta,
        target=view.protected.target,
        status=status,
        message=message,
        evidence=tuple(dict.fromkeys(evidence)),
        method=Method.PROBE,
        details={"run_id": view.plan.run_id},
        fix=fix,
    )


# --- the positive control ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Control:
    """Whether the allowed identity's request with the headers succeeded in this run."""

    seen: Seen
    passed: bool
    refused: bool
    summary: str


def control_of(view: TargetView) -> Control:
    """The positive control of this Service (semantics §1; never a PASS without it): passed only when the control
    request got ALLOWED with the expected HTTP status in this run; ``refused`` when it was denied. Never raises.
    """
    seen = view.seen(Role.CONTROL, WITH_HEADERS)
    observation, request = seen.observation, seen.request
    if request is None or observation is None:
        return Control(seen, passed=False, refused=False, summary=f"no positive control ({seen.reason})")
    if observation.outcome is Outcome.ALLOWED and observation.status == request.expect_status:
        return Control(seen, passed=True, refused=False, summary="the positive control succeeded in the same run")
    refused = observation.outcome in _DENIED
    summary = f"the positive control got {observation.describe()}, expected {_expected(request)}"
    again = view.again(seen)
    if refused and observation.outcome is Outcome.L4_DENIED and again is not None:
        # A cut connection looks like ztunnel's refusal: the second request must be refused too.
        second = again.observation
        if second is None or second.outcome is not Outcome.L4_DENIED:
            answer = second.describe() if second is not None else f"no answer ({again.reason})"
            summary = f"{summary}, but its second request got {answer}: {INCONSISTENT}"
            return Control(seen, passed=False, refused=False, summary=summary)
    return Control(seen, passed=False, refused=refused, summary=summary)


# --- per promise ---------------------------------------------------------------------------------


def strict_mtls_verdict(view: TargetView) -> Finding:
    """Plaintext by Service name, and to every endpoint probed by pod IP this run: one FAIL names
    the endpoint, its pod and its node; a PASS needs every endpoint's refusal too."""
    by_name = _strict_by_name(view)
    pairs = endpoint_seens(view, ENDPOINT_PLAINTEXT)
    coverage = view.plan.coverage.get(view.protected.target)
    if coverage is not None and coverage.gap and by_name.status is Status.PASS:
        # The endpoints are unknown: the plaintext refusal by Service name proves one pod at most.
        message = f"{by_name.message}; but the Service's endpoints are unknown: {coverage.gap}"
        evidence = (
            *by_name.evidence,
            Evidence(f"Service {view.protected.target}", "endpoints", "unknown", coverage.gap),
        )
        details = {**by_name.details, "endpoints": "unknown"}
        return dataclasses.replace(
            by_name, status=Status.INCONCLUSIVE, message=message, evidence=evidence, details=details
        )
    if not pairs:
        return by_name
    details = {**by_name.details, "endpoints": f"{coverage.probed}/{coverage.ready}" if coverage else str(len(pairs))}
    every = [(e, a) for e, s in pairs for a in _with_again(view, s)]
    answered = [(e, s) for e, s in every if s.observation is not None and _plaintext_answered(s.observation)]
    if answered:
        shown = "; ".join(f"{e.describe()}: {s.observation.describe()}" for e, s in answered if s.observation)
        traffic = f"plaintext from outside the mesh was answered by {shown}"
        failed = _contradiction(
            view, STRICT_MTLS_PROBE, (CAPTURED, PEER_AUTHENTICATION), traffic, [s for _, s in answered]
        )
        evidence = failed.evidence + tuple(_endpoint_evidence(e) for e, _ in answered) + _focus_evidence(view, pairs)
        return dataclasses.replace(failed, evidence=evidence, details=details)
    if by_name.status is not Status.PASS:
        return dataclasses.replace(by_name, details=details)
    unproven = [(e, s) for e, s in pairs if s.observation is None or s.observation.outcome is not Outcome.L4_DENIED]
    if unproven:
        endpoint, seen = unproven[0]
        why = seen.observation.describe() if seen.observation else seen.reason
        message = f"{by_name.message}; but {endpoint.describe()} is not proven: {why}"
        evidence = (*by_name.evidence, seen.evidence(), _endpoint_evidence(endpoint))
        return dataclasses.replace(
            by_name, status=Status.INCONCLUSIVE, message=message, evidence=evidence, details=details
        )
    for endpoint, seen in pairs:
        unconfirmed = _unconfirmed(view, STRICT_MTLS_PROBE, seen)
        if unconfirmed is not None:
            message = f"{by_name.message}; but {endpoint.describe()} is not proven: {unconfirmed.message}"
            evidence = (*by_name.evidence, *unconfirmed.evidence, _endpoint_evidence(endpoint))
            return dataclasses.replace(
                by_name, status=Status.INCONCLUSIVE, message=message, evidence=evidence, details=details
            )
    shown = coverage.describe() if coverage else f"{len(pairs)} endpoints probed by pod IP"
    message = f"{by_name.message}; {shown}, each refused plaintext"
    evidence = by_name.evidence + tuple(_endpoint_evidence(e) for e, _ in pairs) + _focus_evidence(view, pairs)
    if coverage is not None and coverage.source != FROM_SLICES:
        source = Evidence(f"Service {view.protected.target}", "endpoints from", coverage.source, "")
        evidence = (*evidence, source)
    return dataclasses.replace(by_name, message=message, evidence=evidence, details=details)


def endpoint_seens(view: TargetView, prefix: str) -> list[tuple[Endpoint, Seen]]:
    """The run's requests to this Service's endpoints by pod IP (``prefix``: which identity's)."""
    endpoints = {e.key: e for e in view.plan.endpoints if e.target == view.protected.target}
    pairs = []
    for request in view.plan.requests_for(view.protected.target):
        if request.variant.startswith(prefix):
            endpoint = endpoints.get(request.variant.removeprefix(prefix))
            if endpoint is not None:
                pairs.append((endpoint, view.resolve(request)))
    return pairs


def _focus_evidence(view: TargetView, pairs: list[tuple[Endpoint, Seen]]) -> tuple[Evidence, ...]:
    """Why this run probed these endpoints first: the node trigger's change on their node(s)."""
    nodes = sorted({e.node for e, _ in pairs if e.node in view.plan.focus_nodes})
    if not nodes or not view.plan.focus_reason:
        return ()
    return (Evidence("Probe cycle", "triggered by", view.plan.focus_reason, f"endpoints on {', '.join(nodes)}"),)


def _endpoint_evidence(endpoint: Endpoint) -> Evidence:
    named = f"Pod {endpoint.pod}" if endpoint.pod else f"endpoint {endpoint.ip} (no Pod in its EndpointSlice)"
    return Evidence(named, "node", endpoint.node or "(unknown)", f"endpoint {endpoint.ip}:{endpoint.port}")


def _expect(seen: Seen) -> Outcome:
    return seen.request.expect if seen.request is not None else Outcome.L4_DENIED


def pod_ip_bypass_verdict(view: TargetView) -> Finding:
    """The intruder's request to each endpoint by pod IP, around the waypoint (semantics §4.6)."""
    meta = dataclasses.replace(WAYPOINT_BYPASS, severity=view.plan.bypass_severity)
    pairs = endpoint_seens(view, ENDPOINT_INTRUDER)
    every = [(e, a) for e, s in pairs for a in _with_again(view, s)]
    reached = [(e, s) for e, s in every if s.observation is not None and s.observation.outcome in _REACHED]
    if reached:
        shown = "; ".join(f"{e.describe()}: {s.observation.describe()}" for e, s in reached if s.observation)
        message = f"an identity on no allow-list reached the Service's pods by pod IP, around the waypoint: {shown}"
        evidence = [s.evidence() for _, s in reached] + [_endpoint_evidence(e) for e, _ in reached]
        fix = view.plan.bypass_fixes.get(view.protected.target, NO_FIX)
        return _finding(view, meta, Status.FAIL, message, evidence, fix=fix)
    missing = [s for _, s in pairs if s.observation is None]
    if missing:
        return _not_observed(view, meta, missing[0])
    # The refusal each request expects: ztunnel's (L4), or the pod's own waypoint's (L7, §4.8).
    wrong = [s for _, s in pairs if s.observation is not None and s.observation.outcome is not _expect(s)]
    if wrong:
        return _wrong_kind(view, meta, wrong[0])
    for endpoint, seen in pairs:
        unconfirmed = _unconfirmed(view, meta, seen)
        if unconfirmed is not None:
            evidence = [*unconfirmed.evidence, _endpoint_evidence(endpoint)]
            message = f"{endpoint.describe()}: {unconfirmed.message}"
            return _finding(view, meta, Status.INCONCLUSIVE, message, evidence)
    own = sorted({e.waypoint for e, s in pairs if e.waypoint and _expect(s) is Outcome.L7_DENIED})
    where = "ztunnel" + (f" or the pod's own waypoint ({', '.join(own)})" if own else "")
    what = f"{where} refused the intruder by pod IP at each of {len(pairs)} endpoint(s)"
    return _denial(view, meta, what, [s for _, s in every])


def _strict_by_name(view: TargetView) -> Finding:
    """``strict-mtls`` from traffic: FAIL when a plaintext request from outside the mesh was
    answered, PASS when ztunnel refused it, INCONCLUSIVE otherwise (not observed, wrong kind)."""
    seen = view.seen(Role.OUTSIDE, PLAINTEXT)
    answers = _with_again(view, seen)
    answered = [s for s in answers if s.observation is not None and _plaintext_answered(s.observation)]
    if answered:
        shown = "; ".join(s.observation.describe() for s in answered if s.observation)
        traffic = f"a plaintext request from outside the mesh was answered: {shown}"
        return _contradiction(view, STRICT_MTLS_PROBE, (CAPTURED, PEER_AUTHENTICATION), traffic, answered)
    observation = seen.observation
    if observation is None:
        return _not_observed(view, STRICT_MTLS_PROBE, seen)
    if observation.outcome is Outcome.L4_DENIED:
        unconfirmed = _unconfirmed(view, STRICT_MTLS_PROBE, seen)
        if unconfirmed is not None:
            return unconfirmed
        sent = f"one plaintext request ({_sent(seen)}) from a probe pod outside the mesh"
        what = f"{sent} was refused at L4{_repeated(answers)}"
        return _denial(view, STRICT_MTLS_PROBE, what, answers)
    return _wrong_kind(view, STRICT_MTLS_PROBE, seen)


def _plaintext_answered(observation: Observation) -> bool:
    # Any application answer means ztunnel let plaintext in; a 503 or an Envoy 403 would be a
    # proxy talking, which plaintext clients never meet (§4.6): those stay inconclusive.
    if observation.outcome in _REACHED:
        return True
    return observation.outcome is Outcome.OTHER and observation.status is not None


def allowlist_verdict(view: TargetView) -> Finding:
    """``principal-allowlist`` from traffic: FAIL when the intruder got through or the allowed
    identity was refused; PASS only when the intruder was refused and the control request succeeded."""
    seen = view.seen(Role.INTRUDER, WITH_HEADERS)
    answers = _with_again(view, seen)
    control = control_of(view)
    observation = seen.observation
    reached = _reached(answers)
    if reached:
        shown = "; ".join(s.observation.describe() for s in reached if s.observation)
        traffic = f"an identity on no allow-list got through: {shown}"
        return _contradiction(view, ALLOWLIST_PROBE, (INTRUDERS_REFUSED,), traffic, [*reached, control.seen])
    if control.refused:
        traffic = f"the allowed identity was refused: {control.summary}"
        return _contradiction(view, ALLOWLIST_PROBE, (ALLOWED_ADMITTED,), traffic, [control.seen, seen])
    if observation is None:
        return _not_observed(view, ALLOWLIST_PROBE, seen)
    assert seen.request is not None  # noqa: S101 - an observation always belongs to a request
    if observation.outcome is seen.request.expect:
        unconfirmed = _unconfirmed(view, ALLOWLIST_PROBE, seen)
        if unconfirmed is not None:
            return unconfirmed
        sent = f"one request ({_sent(seen)}) from the probe's intruder identity, on no allow-list,"
        what = f"{sent} was refused{_repeated(answers)}"
        return _denial(view, ALLOWLIST_PROBE, what, [*answers, control.seen], control)
    return _wrong_kind(view, ALLOWLIST_PROBE, seen)


def headers_verdict(view: TargetView) -> Finding:
    """``required-headers`` from traffic: FAIL when a request without a required header (or with a
    near-miss value) got through; PASS only when every such request got the waypoint's 403 and
    the control request succeeded."""
    names = [h.name for h in view.protected.required_headers]
    seens = [view.seen(Role.CONTROL, f"{WITHOUT}{name}") for name in names]
    # A plan made before near misses existed has none: only the planned ones are awaited.
    planned = {r.variant for r in view.plan.requests_for(view.protected.target)}
    seens += [view.seen(Role.CONTROL, f"{NEAR_MISS}{n}") for n in names if f"{NEAR_MISS}{n}" in planned]
    control = control_of(view)
    admitted = [s for s in seens if s.observation is not None and s.observation.outcome in _REACHED]
    if admitted:
        shown = ", ".join(s.request.degraded for s in admitted if s.request)
        traffic = f"the allowed identity got through {shown}"
        return _contradiction(view, HEADERS_PROBE, (HEADERS_ENFORCED,), traffic, [*admitted, control.seen])
    missing = [s for s in seens if s.observation is None]
    if missing:
        return _not_observed(view, HEADERS_PROBE, missing[0], needs_control=True)
    wrong = [s for s in seens if s.observation is not None and s.observation.outcome is not Outcome.L7_DENIED]
    if wrong:
        return _wrong_kind(view, HEADERS_PROBE, wrong[0])
    what = (
        f"the allowed identity's {len(seens)} request(s) without a required header, or with a near miss of its "
        "value where planned, were refused by the waypoint (L7)"
    )
    return _denial(view, HEADERS_PROBE, what, [*seens, control.seen])


def waypoint_verdict(view: TargetView) -> Finding:
    """``waypoint-enrollment`` from traffic: the control request's response must show the waypoint
    hop; anything else is INCONCLUSIVE or FAIL, never a pass."""
    control = control_of(view)
    seen, observation = control.seen, control.seen.observation
    if observation is None:
        return _not_observed(view, WAYPOINT_PROBE, seen, needs_control=True)
    if observation.outcome is not Outcome.ALLOWED:
        message = f"not proven: {control.summary}; only an allowed response can show the waypoint hop"
        return _finding(view, WAYPOINT_PROBE, Status.INCONCLUSIVE, message, [seen.evidence()])
    if observation.compact:
        message = "not proven: the report was cut to fit 4096 bytes and lost the response headers"
        return _finding(view, WAYPOINT_PROBE, Status.INCONCLUSIVE, message, [seen.evidence()])
    proof = waypoint_hop(observation, view.plan.marker_header)
    if proof is not None:
        return _finding(
            view,
            WAYPOINT_PROBE,
            Status.PASS,
            f"the allowed identity's request ({_sent(seen)}) went through the waypoint: {proof}",
            [seen.evidence()],
        )
    traffic = f"the allowed request's response shows no waypoint hop ({_hop_wanted(view.plan.marker_header)})"
    return _contradiction(view, WAYPOINT_PROBE, (WAYPOINT_BOUND, WAYPOINT_GATEWAY), traffic, [seen])


def _sent(seen: Seen) -> str:
    """The request line a probe sent (method and URL: no header, so no value)."""
    if seen.request is None:
        return "not planned"
    return f"{seen.request.wire.method} {seen.request.wire.url}"


def waypoint_hop(observation: Observation, marker: str | None) -> str | None:
    """The response header(s) that prove the waypoint hop (semantics §1.7a, §1.7c), or None."""
    headers = observation.headers
    if marker is not None:
        return f"marker header {marker} present" if marker in headers else None
    if headers.get("server") == WAYPOINT_SERVER and UPSTREAM_TIME in headers:
        return f"server: {WAYPOINT_SERVER} and {UPSTREAM_TIME} present"
    return None


def _hop_wanted(marker: str | None) -> str:
    if marker is not None:
        return f"no marker header {marker}"
    return f"no server: {WAYPOINT_SERVER} with {UPSTREAM_TIME}"


# --- shared outcomes -----------------------------------------------------------------------------


def _with_again(view: TargetView, seen: Seen) -> list[Seen]:
    """``seen`` and, when planned, its confirmation (probeplan ``again:``)."""
    again = view.again(seen)
    return [seen] if again is None else [seen, again]


def _reached(seens: list[Seen]) -> list[Seen]:
    return [s for s in seens if s.observation is not None and s.observation.outcome in _REACHED]


def _repeated(answers: list[Seen]) -> str:
    return ", and so was the same request on a new connection after it" if len(answers) > 1 else ""


def _unconfirmed(view: TargetView, meta: CheckMeta, seen: Seen) -> Finding | None:
    """None when ``seen`` is not ztunnel's refusal, or is one that its confirmation repeated;
    else the INCONCLUSIVE finding saying why the refusal proves nothing (``_WHY_AGAIN``)."""
    first = seen.observation
    if first is None or first.outcome is not Outcome.L4_DENIED:
        return None
    again = view.again(seen)
    if again is None:
        message = f"not proven: {first.describe()} was not confirmed (no second request was planned); {_WHY_AGAIN}"
        return _finding(view, meta, Status.INCONCLUSIVE, message, [seen.evidence()])
    if again.observation is None:
        return _not_observed(view, meta, again)
    if again.observation.outcome is Outcome.L4_DENIED:
        return None
    message = (
        f"not proven: {INCONSISTENT}: the first request got {first.describe()}, the second "
        f"({_sent(again)}) got {again.observation.describe()}; {_WHY_AGAIN}"
    )
    return _finding(view, meta, Status.INCONCLUSIVE, message, [seen.evidence(), again.evidence()])


def _not_observed(view: TargetView, meta: CheckMeta, seen: Seen, *, needs_control: bool = False) -> Finding:
    prefix = "not proven (needs the positive control)" if needs_control and seen.request is None else "not proven"
    return _finding(view, meta, seen.missing, f"{prefix}: {seen.reason}", [seen.evidence()])


def _denial(view: TargetView, meta: CheckMeta, what: str, seens: list[Seen], control: Control | None = None) -> Finding:
    control = control or control_of(view)
    evidence = [s.evidence() for s in seens]
    if control.passed:
        return _finding(view, meta, Status.PASS, f"{what}, and {control.summary}", evidence)
    message = f"{what}, but {control.summary}: a denial without a passing control proves nothing"
    return _finding(view, meta, Status.INCONCLUSIVE, message, evidence)


def _wrong_kind(view: TargetView, meta: CheckMeta, seen: Seen) -> Finding:
    assert seen.request is not None  # noqa: S101 - only called with an observation
    assert seen.observation is not None  # noqa: S101 - callers resolved the request to an observation
    message = (
        f"expected {_expected(seen.request)}, got {seen.observation.describe()}: not the denial the "
        "promise predicts (a 503, timeout or refusal is never proof of policy, semantics §1.4-§1.6)"
    )
    return _finding(view, meta, Status.INCONCLUSIVE, message, [seen.evidence()])


def _contradiction(
    view: TargetView, meta: CheckMeta, static_checks: tuple[CheckMeta, ...], traffic: str, seens: list[Seen]
) -> Finding:
    """A FAIL proven by traffic, with the static findings' evidence beside the probe's."""
    statics = view.statics(*static_checks)
    failing = [f.check.id for f in statics if f.status is Status.FAIL]
    if statics and all(f.status is Status.PASS for f in statics):
        ids = ", ".join(f.check.id for f in statics)
        message = f"config and traffic disagree: the config passes ({ids}), but {traffic}"
    elif failing:
        message = f"traffic confirms the drift of {', '.join(failing)}: {traffic}"
    else:
        message = traffic
    evidence = [s.evidence() for s in seens] + [ev for f in statics for ev in f.evidence]
    return _finding(view, meta, Status.FAIL, message, evidence, fix=_traffic_fix(statics))


def _traffic_fix(statics: list[Finding]) -> Fix:
    """A FAIL proven by traffic is fixed where the config is wrong: the failing static findings' fixes."""
    failing = [f for f in statics if f.status is Status.FAIL]
    if failing:
        ids = ", ".join(f.check.id for f in failing)
        return merge_fixes((f.fix for f in failing), f"The config's drift ({ids}) is the cause; its fix:")
    return none(
        "the config passes the static checks, so no change to it can be derived: the cluster may differ from the "
        "audited config (a change since the snapshot) or do what the auditor's model does not; compare the probe's "
        "evidence with the objects the static findings name"
    )
