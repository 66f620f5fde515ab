"""Verdicts: which observations, static findings and missing reports give which probe finding."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from auditor.core.checks.catalog import (
    ALLOWED_ADMITTED,
    HEADERS_ENFORCED,
    INTRUDERS_REFUSED,
    PEER_AUTHENTICATION,
    WAYPOINT_BOUND,
)
from auditor.core.model import Finding, Method, Status
from auditor.core.probing.probereport import BatchProblem, Observation, RunReport
from auditor.core.probing.verdict import probe_findings
from probes.wire import Outcome
from tests.unit.probing.builders import (
    ALLOWED,
    CATALOG,
    L4,
    TOKEN,
    WAYPOINT_HEADERS,
    catalog_rules,
    compliant,
    make_plan,
    posture,
    report,
    static_finding,
)

OUTSIDE = "default/catalog:outside:plaintext"
INTRUDER = "default/catalog:intruder:with-headers"
CONTROL = "default/catalog:control:with-headers"
CONTROL_AGAIN = "default/catalog:control:again:with-headers"
NO_TOKEN = "default/catalog:control:without:x-auth-token"
NEAR_MISS = "default/catalog:control:near-miss:x-auth-token"


def _verdicts(
    changes: Mapping[str, Observation | None] | None = None,
    *,
    control: bool = True,
    static: tuple[Finding, ...] = (),
    problems: dict[str, BatchProblem] | None = None,
    marker: str | None = None,
) -> dict[str, Finding]:
    """Probe findings by check id for catalog, starting from a compliant mesh and applying changes."""
    plan = make_plan(posture(catalog_rules()), control_allowed=control, marker=marker)
    outcomes = {k: v for k, v in {**compliant(plan), **(changes or {})}.items() if v is not None}
    found = probe_findings(plan, report(plan, outcomes, problems or {}), static)
    assert all(f.method is Method.PROBE and f.target == CATALOG for f in found)
    return {f.check.id: f for f in found}


def _statuses(verdicts: dict[str, Finding]) -> dict[str, Status]:
    return {check: f.status for check, f in verdicts.items()}


def test_compliant_mesh_with_a_passing_control_passes_every_promise() -> None:
    """Every expected denial met, the control allowed through the waypoint: four PASSes."""
    assert _statuses(_verdicts()) == {
        "strict-mtls.probe": Status.PASS,
        "principal-allowlist.probe": Status.PASS,
        "required-headers.probe": Status.PASS,
        "waypoint-enrollment.probe": Status.PASS,
    }


def test_denials_without_a_control_are_never_a_pass() -> None:
    """Control switched off: the same denials are INCONCLUSIVE, each message names the missing control."""
    verdicts = _verdicts(control=False)
    assert _statuses(verdicts) == dict.fromkeys(verdicts, Status.INCONCLUSIVE)
    assert "without a passing control" in verdicts["strict-mtls.probe"].message
    assert "AUDITOR_PROBES__CONTROL_ENABLED" in verdicts["required-headers.probe"].message


@pytest.mark.parametrize(
    "control",
    [
        Observation(Outcome.UPSTREAM_ERROR, 503),
        Observation(Outcome.TIMEOUT),
        Observation(Outcome.ALLOWED, 204, WAYPOINT_HEADERS),  # not the expected status
        None,  # no result for the control request
    ],
    ids=["503", "timeout", "wrong-status", "missing"],
)
def test_a_control_that_did_not_succeed_makes_denials_inconclusive(control: Observation | None) -> None:
    """The intruder's and outsider's denials only count next to a control that got its expected status."""
    statuses = _statuses(_verdicts({CONTROL: control}))
    assert statuses["strict-mtls.probe"] is Status.INCONCLUSIVE
    assert statuses["principal-allowlist.probe"] is Status.INCONCLUSIVE
    assert statuses["required-headers.probe"] is Status.INCONCLUSIVE


def test_plaintext_accepted_while_strict_is_configured_fails_with_both_evidences() -> None:
    """Config says STRICT (static PASS), traffic got 200: FAIL naming the disagreement, both evidences."""
    static = (static_finding(PEER_AUTHENTICATION, Status.PASS),)
    finding = _verdicts({OUTSIDE: ALLOWED}, static=static)["strict-mtls.probe"]
    assert finding.status is Status.FAIL
    assert finding.message.startswith(
        "config and traffic disagree: the config passes (strict-mtls.peer-authentication)"
    )
    objects = [e.object for e in finding.evidence]
    assert f"probe request {OUTSIDE}" in objects
    assert "config of strict-mtls.peer-authentication" in objects


def test_plaintext_accepted_fails_even_without_a_control() -> None:
    """An answered plaintext request is proof on its own: FAIL, no control needed."""
    finding = _verdicts({OUTSIDE: Observation(Outcome.APP_DENIED, 401)}, control=False)["strict-mtls.probe"]
    assert finding.status is Status.FAIL


def test_static_drift_confirmed_by_traffic_says_so() -> None:
    """Static FAIL and traffic agreeing: FAIL that says the traffic confirms the drift."""
    static = (static_finding(INTRUDERS_REFUSED, Status.FAIL),)
    finding = _verdicts({INTRUDER: ALLOWED}, static=static)["principal-allowlist.probe"]
    assert finding.status is Status.FAIL
    assert finding.message.startswith("traffic confirms the drift of principal-allowlist.intruders-refused")
    assert "config of principal-allowlist.intruders-refused" in [e.object for e in finding.evidence]


def test_intruder_admitted_fails_principal_allowlist() -> None:
    """The intruder with the right headers got 200: FAIL, config/traffic disagreement when static passed."""
    static = (static_finding(INTRUDERS_REFUSED, Status.PASS),)
    finding = _verdicts({INTRUDER: ALLOWED}, static=static)["principal-allowlist.probe"]
    assert finding.status is Status.FAIL
    assert "config and traffic disagree" in finding.message


def test_allowed_identity_refused_fails_principal_allowlist() -> None:
    """The control refused by ztunnel (the waypoint identity pitfall): FAIL with allowed-admitted's evidence."""
    static = (static_finding(ALLOWED_ADMITTED, Status.PASS),)
    finding = _verdicts({CONTROL: L4, CONTROL_AGAIN: L4}, static=static)["principal-allowlist.probe"]
    assert finding.status is Status.FAIL
    assert "the allowed identity was refused" in finding.message
    assert "config of principal-allowlist.allowed-admitted" in [e.object for e in finding.evidence]


def test_header_not_enforced_fails_required_headers() -> None:
    """Without the header the control still got 200: FAIL with required-headers.enforced's evidence."""
    static = (static_finding(HEADERS_ENFORCED, Status.PASS),)
    finding = _verdicts({NO_TOKEN: ALLOWED}, static=static)["required-headers.probe"]
    assert finding.status is Status.FAIL
    assert "without x-auth-token" in finding.message
    assert "config and traffic disagree" in finding.message


def test_near_miss_admitted_fails_required_headers() -> None:
    """Kind 1 B: the value plus a suffix got 200 (a prefix match such as values: ["i*"]): FAIL."""
    finding = _verdicts({NEAR_MISS: ALLOWED})["required-headers.probe"]
    assert finding.status is Status.FAIL
    assert "near miss of x-auth-token" in finding.message
    assert TOKEN not in finding.message


def test_waypoint_label_without_a_waypoint_hop_fails_with_both_evidences() -> None:
    """waypoint-enrollment.bound passes but the allowed response shows no Envoy: FAIL, both evidences."""
    static = (static_finding(WAYPOINT_BOUND, Status.PASS),)
    direct = Observation(Outcome.ALLOWED, 200, {"server": "uvicorn"})
    finding = _verdicts({CONTROL: direct}, static=static)["waypoint-enrollment.probe"]
    assert finding.status is Status.FAIL
    assert "config and traffic disagree" in finding.message
    assert "no waypoint hop" in finding.message
    assert {"config of waypoint-enrollment.bound", f"probe request {CONTROL}"} <= {e.object for e in finding.evidence}


def test_marker_header_is_required_when_configured() -> None:
    """With a marker configured, istio-envoy headers alone do not prove the hop; the marker does."""
    assert _verdicts(marker="x-route-marker")["waypoint-enrollment.probe"].status is Status.FAIL
    marked = Observation(Outcome.ALLOWED, 200, {"x-route-marker": "1"})
    assert _verdicts({CONTROL: marked}, marker="x-route-marker")["waypoint-enrollment.probe"].status is Status.PASS


@pytest.mark.parametrize(
    ("request_id", "observed", "check"),
    [
        (INTRUDER, Observation(Outcome.UPSTREAM_ERROR, 503), "principal-allowlist.probe"),  # 503 where 403 expected
        (INTRUDER, L4, "principal-allowlist.probe"),  # ztunnel where the waypoint was expected
        (INTRUDER, Observation(Outcome.TIMEOUT), "principal-allowlist.probe"),
        (OUTSIDE, Observation(Outcome.DNS_FAILURE), "strict-mtls.probe"),
        (OUTSIDE, Observation(Outcome.REFUSED), "strict-mtls.probe"),
        (OUTSIDE, Observation(Outcome.UPSTREAM_ERROR, 503), "strict-mtls.probe"),
        (NO_TOKEN, Observation(Outcome.UPSTREAM_ERROR, 503), "required-headers.probe"),
    ],
    ids=[
        "intruder-503",
        "intruder-l4",
        "intruder-timeout",
        "outside-dns",
        "outside-refused",
        "outside-503",
        "header-503",
    ],
)
def test_denials_of_the_wrong_kind_are_inconclusive(request_id: str, observed: Observation, check: str) -> None:
    """Even with a passing control, a denial the promise does not predict proves nothing."""
    finding = _verdicts({request_id: observed})[check]
    assert finding.status is Status.INCONCLUSIVE
    assert "not the denial the promise predicts" in finding.message


def test_missing_result_is_an_error_naming_the_request() -> None:
    """A report without the outsider's result: ERROR for strict-mtls, never a pass."""
    finding = _verdicts({OUTSIDE: None})["strict-mtls.probe"]
    assert finding.status is Status.ERROR
    assert "no result for this request" in finding.message


def test_batch_problems_carry_their_status_and_reason() -> None:
    """Pod Pending past the deadline: INCONCLUSIVE with the reason; a rejected report: ERROR."""
    pending = BatchProblem(Status.INCONCLUSIVE, "Pending past the 60 s deadline: Unschedulable")
    rejected = BatchProblem(Status.ERROR, "the report belongs to run other, not run-1")
    verdicts = _verdicts(problems={"outside": pending, "intruder": rejected})
    assert verdicts["strict-mtls.probe"].status is Status.INCONCLUSIVE
    assert "Unschedulable" in verdicts["strict-mtls.probe"].message
    assert verdicts["principal-allowlist.probe"].status is Status.ERROR
    assert "belongs to run other" in verdicts["principal-allowlist.probe"].message


def test_no_report_at_all_is_an_error_for_every_probed_promise() -> None:
    """A runner that returned nothing: every probe finding is ERROR."""
    plan = make_plan(posture(catalog_rules()))
    found = probe_findings(plan, RunReport(plan.run_id, ()), ())
    assert {f.check.id: f.status for f in found} == {
        "strict-mtls.probe": Status.ERROR,
        "principal-allowlist.probe": Status.ERROR,
        "required-headers.probe": Status.ERROR,
        "waypoint-enrollment.probe": Status.ERROR,
    }


def test_service_without_a_probe_target_is_skipped() -> None:
    """No probe block in the rules: SKIPPED for each promise it has, not pass."""
    plan = make_plan(posture(catalog_rules(probe=False)))
    found = probe_findings(plan, RunReport(plan.run_id, ()), ())
    assert {f.check.id: f.status for f in found} == {
        "strict-mtls.probe": Status.SKIPPED,
        "principal-allowlist.probe": Status.SKIPPED,
        "required-headers.probe": Status.SKIPPED,
        "waypoint-enrollment.probe": Status.SKIPPED,
    }


def test_findings_never_contain_header_values() -> None:
    """Whatever the outcome, no finding message or evidence carries the header's value."""
    for changes in ({}, {INTRUDER: ALLOWED, NO_TOKEN: ALLOWED, OUTSIDE: ALLOWED}):
        static = tuple(static_finding(c, Status.PASS) for c in (INTRUDERS_REFUSED, HEADERS_ENFORCED))
        for finding in _verdicts(changes, static=static).values():
            text = finding.message + repr(finding.evidence) + repr(finding.details)
            assert TOKEN not in text
