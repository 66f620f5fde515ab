"""ztunnel's refusal confirmed by a second request (#12: "ztunnel restarted mid-audit").

A connection that a restarting ztunnel cuts ends like ztunnel's refusal: closed or reset without a
byte (measured on the real node: a connection held across a restart ends in EOF, 0 bytes, which
the probe classifies ``l4-denied``). So every request that expects ``l4-denied``, and the
control's request, is planned twice (``again:``, sent after the first ended), and the verdict
counts the refusal only when both were refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from auditor.core.model import Finding, Status
from auditor.core.probing.probeplan import AGAIN
from auditor.core.probing.probereport import Observation
from auditor.core.probing.verdict import INCONSISTENT, probe_findings
from probes.wire import Outcome
from tests.unit.probing.builders import ALLOWED, L4, catalog_rules, compliant, make_plan, posture, report

OUTSIDE = "default/catalog:outside:plaintext"
OUTSIDE_AGAIN = "default/catalog:outside:again:plaintext"
INTRUDER = "default/catalog:intruder:with-headers"
INTRUDER_AGAIN = "default/catalog:intruder:again:with-headers"
CONTROL = "default/catalog:control:with-headers"
CONTROL_AGAIN = "default/catalog:control:again:with-headers"
REFUSED = Observation(Outcome.REFUSED, error="ConnectError: All connection attempts failed")
PLAIN_200 = Observation(Outcome.ALLOWED, 200, {})


def _l4_verdicts(changes: Mapping[str, Observation | None]) -> dict[str, Finding]:
    """catalog protected at L4 (no waypoint), a compliant mesh's answers with ``changes``."""
    plan = make_plan(posture(catalog_rules(waypoint=False)))
    outcomes = {k: v for k, v in {**compliant(plan), **changes}.items() if v is not None}
    return {f.check.id: f for f in probe_findings(plan, report(plan, outcomes), ())}


def test_each_l4_expectation_and_the_control_are_planned_twice_the_second_after_the_first() -> None:
    plan = make_plan(posture(catalog_rules(waypoint=False)))
    after = {r.id: r.wire.after for b in plan.batches for r in b.requests if r.variant.startswith(AGAIN)}
    assert after == {OUTSIDE_AGAIN: OUTSIDE, INTRUDER_AGAIN: INTRUDER, CONTROL_AGAIN: CONTROL}
    # Behind a waypoint the intruder's refusal is a 403 no restart produces: not repeated.
    with_waypoint = make_plan(posture(catalog_rules()))
    assert INTRUDER_AGAIN not in {r.id for b in with_waypoint.batches for r in b.requests}


def test_two_refusals_and_a_passing_control_pass() -> None:
    found = _l4_verdicts({})
    assert {c: f.status for c, f in found.items()} == {
        "strict-mtls.probe": Status.PASS,
        "principal-allowlist.probe": Status.PASS,
    }
    assert "and so was the same request on a new connection after it" in found["principal-allowlist.probe"].message
    assert {e.object for e in found["principal-allowlist.probe"].evidence} >= {
        f"probe request {INTRUDER}",
        f"probe request {INTRUDER_AGAIN}",
    }


@pytest.mark.parametrize(
    ("check", "first", "again"),
    [
        ("principal-allowlist.probe", INTRUDER, INTRUDER_AGAIN),
        ("strict-mtls.probe", OUTSIDE, OUTSIDE_AGAIN),
    ],
)
@pytest.mark.parametrize(
    ("second", "status"),
    [(REFUSED, Status.INCONCLUSIVE), (Observation(Outcome.TIMEOUT), Status.INCONCLUSIVE), (None, Status.ERROR)],
    ids=["refused", "timeout", "missing"],
)
def test_a_refusal_the_second_request_did_not_repeat_is_never_a_pass(
    check: str, first: str, again: str, second: Observation | None, status: Status
) -> None:
    """The first request cut (l4-denied), the second not refused: INCONCLUSIVE (or ERROR without a result)."""
    finding = _l4_verdicts({first: L4, again: second})[check]
    assert finding.status is status
    if second is not None:
        assert INCONSISTENT in finding.message
        assert f"probe request {again}" in {e.object for e in finding.evidence}


@pytest.mark.parametrize(
    ("check", "first", "again"),
    [
        ("principal-allowlist.probe", INTRUDER, INTRUDER_AGAIN),
        ("strict-mtls.probe", OUTSIDE, OUTSIDE_AGAIN),
    ],
)
def test_either_request_getting_through_is_a_fail(check: str, first: str, again: str) -> None:
    """The non-compliant mesh with the first request cut by a restart: the second got through, FAIL."""
    assert _l4_verdicts({first: L4, again: PLAIN_200})[check].status is Status.FAIL
    assert _l4_verdicts({first: PLAIN_200, again: L4})[check].status is Status.FAIL


def test_the_control_cut_once_is_not_a_refusal() -> None:
    """The allowed identity's request cut, its second one allowed: no FAIL, nothing passes either."""
    found = _l4_verdicts({CONTROL: L4, CONTROL_AGAIN: ALLOWED})
    allowlist = found["principal-allowlist.probe"]
    assert allowlist.status is Status.INCONCLUSIVE
    assert INCONSISTENT in allowlist.message
    assert found["strict-mtls.probe"].status is Status.INCONCLUSIVE
    # Refused twice, it is the allowed identity refused: FAIL.
    assert _l4_verdicts({CONTROL: L4, CONTROL_AGAIN: L4})["principal-allowlist.probe"].status is Status.FAIL
