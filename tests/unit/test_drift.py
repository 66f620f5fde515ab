"""The drift state machine: when alerts open, resolve, stay quiet, and what never resolves them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.core.alerting.drift import DriftBook, DriftPolicy, Phase, TransitionKind
from auditor.core.checks.catalog import PEER_AUTHENTICATION
from auditor.core.model import Finding, Method, Status

POLICY = DriftPolicy()
TARGET = "default/orders"


def finding(status: Status, method: Method = Method.STATIC, message: str = "m") -> Finding:
    return Finding(check=PEER_AUTHENTICATION, target=TARGET, status=status, message=message, method=method)


def run(
    statuses: list[Status], method: Method = Method.STATIC, policy: DriftPolicy = POLICY
) -> list[list[TransitionKind]]:
    book, kinds = DriftBook(), []
    for step, status in enumerate(statuses):
        book, transitions = book.evaluate([finding(status, method)], now=1000.0 + 60 * step, policy=policy)
        kinds.append([t.kind for t in transitions])
    return kinds


def test_static_drift_opens_on_the_first_fail_and_resolves_on_the_first_pass() -> None:
    assert run([Status.PASS, Status.FAIL, Status.FAIL, Status.PASS]) == [
        [],
        [TransitionKind.OPENED],
        [],
        [TransitionKind.RESOLVED],
    ]


def test_probe_drift_needs_two_consecutive_fails() -> None:
    """One failed probe can be a brand-new node (semantics §6); two in a row open the alert."""
    assert run([Status.FAIL, Status.PASS, Status.FAIL, Status.FAIL], Method.PROBE) == [
        [],
        [],
        [],
        [TransitionKind.OPENED],
    ]


def test_inconclusive_and_error_never_resolve_an_open_alert() -> None:
    kinds = run([Status.FAIL, Status.INCONCLUSIVE, Status.ERROR, Status.INCONCLUSIVE, Status.PASS])
    assert kinds == [[TransitionKind.OPENED], [TransitionKind.DEGRADED], [], [], [TransitionKind.RESOLVED]]


def test_inconclusive_never_opens_an_alert() -> None:
    assert run([Status.INCONCLUSIVE, Status.ERROR, Status.INCONCLUSIVE]) == [[TransitionKind.DEGRADED], [], []]


def test_a_missing_report_leaves_the_alert_open() -> None:
    book, _ = DriftBook().evaluate([finding(Status.FAIL)], now=0.0, policy=POLICY)
    book, transitions = book.evaluate([], now=60.0, policy=POLICY)
    assert transitions == ()
    assert [a.phase for a in book.alerts.values()] == [Phase.FIRING]


def test_flapping_alert_is_damped() -> None:
    """After three opens within the hour, the alert stays open (no new message) until three passes in a row."""
    flaps = [Status.FAIL, Status.PASS] * 3 + [Status.FAIL, Status.PASS, Status.PASS, Status.PASS]
    kinds = run(flaps)
    opened = [i for i, k in enumerate(kinds) if TransitionKind.OPENED in k]
    resolved = [i for i, k in enumerate(kinds) if TransitionKind.RESOLVED in k]
    assert opened == [0, 2, 4]  # the fail at 6 finds the alert still open: no second message
    assert resolved == [1, 3, 9]


def test_a_new_message_while_firing_is_a_change() -> None:
    book, _ = DriftBook().evaluate([finding(Status.FAIL, message="a")], now=0.0, policy=POLICY)
    _, transitions = book.evaluate([finding(Status.FAIL, message="b")], now=60.0, policy=POLICY)
    assert [t.kind for t in transitions] == [TransitionKind.CHANGED]


def test_state_round_trips_through_its_serialised_form() -> None:
    book, _ = DriftBook().evaluate([finding(Status.FAIL)], now=5.0, policy=POLICY)
    assert DriftBook.from_dict(book.to_dict()) == book


@given(st.lists(st.sampled_from(list(Status)), max_size=40), st.sampled_from(list(Method)))
@settings(max_examples=300)
def test_opens_and_resolves_alternate_and_only_verdicts_cause_them(statuses: list[Status], method: Method) -> None:
    """Whatever the sequence: opens and resolves alternate, a resolve follows a PASS, an open a FAIL."""
    open_now = False
    for status, kinds in zip(statuses, run(statuses, method), strict=True):
        for kind in kinds:
            if kind is TransitionKind.OPENED:
                assert status is Status.FAIL
                assert not open_now
                open_now = True
            if kind is TransitionKind.RESOLVED:
                assert status is Status.PASS
                assert open_now
                open_now = False
