"""Slack delivery over real HTTP (slack-sdk -> a local Slack-compatible server on loopback).

Threads and updates, retries through 500s and 429s, an outage longer than the retries, and a
crash between sending and saving: every transition arrives once, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk.webhook import WebhookClient
from structlog.testing import capture_logs

from auditor.adapters.slack.notifier import SlackNotifier, WebhookNotifier, build_web_client
from auditor.core.alerting.drift import DriftBook, DriftPolicy, Transition
from auditor.core.alerting.outbox import EntryState, Outbox
from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION
from auditor.core.model import Finding, Status
from auditor.daemon.delivery import DeliveryLoop
from auditor.render.slack import enqueue
from tests.slack_server import SlackState, slack_server

CHANNEL = "C0MESHAUDIT"


@pytest.fixture
def slack() -> Iterator[tuple[str, SlackState]]:
    with slack_server() as served:
        yield served


def _evaluate(
    book: DriftBook, status: Status, now: float, message: str = "port 8080 accepts plaintext"
) -> tuple[DriftBook, tuple[Transition, ...]]:
    finding = Finding(PEER_AUTHENTICATION, "default/orders", status, message)
    return book.evaluate([finding], now=now, policy=DriftPolicy())


def _notifier(base: str) -> SlackNotifier:
    return SlackNotifier(build_web_client("xoxb-test-token", base_url=base + "api/"), CHANNEL)


def test_open_change_resolve_share_one_thread(slack: tuple[str, SlackState]) -> None:
    base, state = slack
    notifier = _notifier(base)
    saved: list[Outbox] = []
    book, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    outbox = DeliveryLoop(notifier).flush(enqueue(Outbox(), opened), saved.append)
    book, changed = _evaluate(book, Status.FAIL, 60.0, "port 8080 and 9090 accept plaintext")
    outbox = DeliveryLoop(notifier).flush(enqueue(outbox, changed), saved.append)
    book, resolved = _evaluate(book, Status.PASS, 120.0, "STRICT")
    outbox = DeliveryLoop(notifier).flush(enqueue(outbox, resolved), saved.append)
    [alert] = state.top_level()
    assert alert["text"] == "Drift: strict-mtls on default/orders"
    assert [m["text"] for m in state.replies(alert["ts"])] == [
        "Still drifting: strict-mtls on default/orders",
        "Resolved: strict-mtls on default/orders",
    ]
    assert [u["ts"] for u in state.updates] == [alert["ts"], alert["ts"]]
    assert outbox.next_unsent() is None
    assert saved[-1] == outbox  # persisted after the last step


class FakeTime:
    """Epoch seconds that a test advances, so backoff is exercised without waiting."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_outage_of_500s_then_429s_delays_but_delivers_once(slack: tuple[str, SlackState]) -> None:
    """2x500 then 2x429 (Retry-After: 1): each is retried by the outbox after its backoff; after a
    500 (Slack may have stored it) the entry is looked up before it is posted again: one message."""
    base, state = slack
    state.fail_next(2, 500)
    state.fail_next(2, 429, retry_after=1)
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    clock, notifier = FakeTime(), _notifier(base)
    outbox = enqueue(Outbox(), opened)
    waits: list[float] = []
    for _ in range(6):
        outbox = DeliveryLoop(notifier).flush(outbox, lambda _: None, now=clock)
        if outbox.next_unsent() is None:
            break
        entry = outbox.next_unsent()
        assert entry is not None
        waits.append(entry.not_before - clock.now)
        clock.now = entry.not_before
    assert waits == [1.0, 2.0, 1.0, 1.0]  # backoff 1 s, 2 s; then Retry-After 1 s twice
    assert len(state.top_level()) == 1
    # after the first 500 (Slack may have stored it) every attempt looks the message up first
    assert state.requests == [
        "chat.postMessage",
        "conversations.history",
        "conversations.history",
        "conversations.history",
        "conversations.history",
        "chat.postMessage",
    ]


def test_outage_longer_than_retries_loses_nothing(slack: tuple[str, SlackState]) -> None:
    """Slack down for good: the entry stays queued; after the outage the next flush sends it, once."""
    base, state = slack
    state.fail_next(20, 500)
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    clock = FakeTime()
    outbox = DeliveryLoop(_notifier(base)).flush(enqueue(Outbox(), opened), lambda _: None, now=clock)
    assert state.top_level() == []
    pending = outbox.next_unsent()
    assert pending is not None
    assert (pending.state, pending.error) == (EntryState.IN_FLIGHT, "fatal_error")
    with state.lock:
        state.outage.clear()
    clock.now += 3600
    outbox = DeliveryLoop(_notifier(base)).flush(
        Outbox.from_dict(outbox.to_dict()), lambda _: None, now=clock
    )  # as after a restart
    assert len(state.top_level()) == 1
    assert outbox.next_unsent() is None


def test_crash_between_send_and_save_does_not_send_twice(slack: tuple[str, SlackState]) -> None:
    """The message reached Slack but the daemon died before recording it: the restart adopts it."""
    base, state = slack
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    saved: list[Outbox] = []

    def save_then_crash(outbox: Outbox) -> None:
        saved.append(outbox)
        if outbox.next_unsent() is None:
            raise SystemExit("killed before the sent state was stored")

    with pytest.raises(SystemExit):
        DeliveryLoop(_notifier(base)).flush(enqueue(Outbox(), opened), save_then_crash)
    last_stored = saved[-2]  # the in-flight state: what a state store would hold
    outbox = DeliveryLoop(_notifier(base)).flush(Outbox.from_dict(last_stored.to_dict()), lambda _: None)
    assert len(state.top_level()) == 1
    assert outbox.next_unsent() is None
    assert outbox.threads["strict-mtls.peer-authentication|default/orders#1"] == state.top_level()[0]["ts"]


def test_many_alerts_at_once_send_a_digest_first(slack: tuple[str, SlackState]) -> None:
    base, state = slack
    findings = [Finding(CAPTURED, f"ns-{i}/svc", Status.FAIL, "not captured") for i in range(12)]
    _, opened = DriftBook().evaluate(findings, now=0.0, policy=DriftPolicy())
    DeliveryLoop(_notifier(base)).flush(enqueue(Outbox(), opened, digest_at=10), lambda _: None)
    texts = [m["text"] for m in state.top_level()]
    assert texts[0] == ":rotating_light: 12 drift alerts opened"
    assert len(texts) == 13


def test_webhook_mode_posts_new_messages_and_cannot_update(slack: tuple[str, SlackState]) -> None:
    base, state = slack
    book, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    notifier = WebhookNotifier(WebhookClient(base + "webhook/T000/B000/XXXX"))
    outbox = DeliveryLoop(notifier).flush(enqueue(Outbox(), opened), lambda _: None)
    _, resolved = _evaluate(book, Status.PASS, 60.0, "STRICT")
    outbox = DeliveryLoop(notifier).flush(enqueue(outbox, resolved), lambda _: None)
    texts: list[Any] = [m["text"] for m in state.messages]
    assert texts == ["Drift: strict-mtls on default/orders", "Resolved: strict-mtls on default/orders"]
    assert state.updates == []
    assert outbox.next_unsent() is None


def _orders(book: DriftBook, status: Status, now: float, message: str) -> tuple[DriftBook, tuple[Transition, ...]]:
    return _evaluate(book, status, now, message)


def test_deleted_alert_message_is_posted_afresh_and_blocks_nothing(slack: tuple[str, SlackState]) -> None:
    """Issue #10.2: someone deleted the alert in Slack; chat.update answers message_not_found.
    The update is posted as a fresh alert message (it anchors the thread from then on), the log
    names Slack's error code, and another alert opened meanwhile is delivered, once."""
    base, state = slack
    clock, notifier = FakeTime(), _notifier(base)
    book, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    outbox = DeliveryLoop(notifier).flush(enqueue(Outbox(), opened), lambda _: None, now=clock)
    [alert] = state.top_level()
    state.delete(alert["ts"])
    book, changed = _evaluate(book, Status.FAIL, 60.0, "port 8080 and 9090 accept plaintext")
    other = Finding(CAPTURED, "payments/api", Status.FAIL, "not captured")
    _, other_opened = DriftBook().evaluate([other], now=60.0, policy=DriftPolicy())
    with capture_logs() as logs:
        outbox = DeliveryLoop(notifier).flush(enqueue(outbox, (*changed, *other_opened)), lambda _: None, now=clock)
    assert outbox.next_unsent() is None
    # the reply found no thread: it became a fresh top-level message, which the update then
    # re-rendered as the full alert; the other alert went out unhindered
    fresh, other_alert = state.top_level()
    assert (fresh["text"], other_alert["text"]) == (
        "Still drifting: strict-mtls on default/orders",
        "Drift: strict-mtls on payments/api",
    )
    assert state.update_texts(fresh["ts"]) == ["Still drifting: strict-mtls on default/orders"]
    assert [b["type"] for b in state.updates[-1]["blocks"]][:2] == ["header", "section"]
    assert outbox.threads["strict-mtls.peer-authentication|default/orders#1"] == fresh["ts"]
    assert [(e["event"], e["slack_error"]) for e in logs if e.get("slack_error")] == [
        ("slack message to update or reply to is gone; posting a fresh one", "thread_not_found")
    ]  # the log names Slack's error code


def test_a_reply_whose_answer_was_lost_is_found_in_its_thread_not_repeated(slack: tuple[str, SlackState]) -> None:
    """Issue #18.3: Slack stored the Resolved reply but its answer was lost (500): the retry
    looks in conversations.replies (history never holds replies) and adopts it."""
    base, state = slack
    clock, notifier = FakeTime(), _notifier(base)
    book, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    outbox = DeliveryLoop(notifier).flush(enqueue(Outbox(), opened), lambda _: None, now=clock)
    state.lose_answers("chat.postMessage")
    _, resolved = _evaluate(book, Status.PASS, 60.0, "STRICT")
    outbox = DeliveryLoop(notifier).flush(enqueue(outbox, resolved), lambda _: None, now=clock)
    assert outbox.next_unsent() is not None
    clock.now += 10
    outbox = DeliveryLoop(notifier).flush(Outbox.from_dict(outbox.to_dict()), lambda _: None, now=clock)
    assert outbox.next_unsent() is None
    assert state.transcript() == [
        ("Drift: strict-mtls on default/orders", ["Resolved: strict-mtls on default/orders"]),
    ]
    assert "conversations.replies" in state.requests


@pytest.mark.parametrize(
    ("code", "action"),
    [
        ("channel_not_found", "kept, retried slowly"),
        ("not_in_channel", "kept, retried slowly"),
        ("invalid_auth", "kept, retried slowly"),
        ("msg_too_long", "sent as text only"),
        ("invalid_arguments", "dropped"),
    ],
)
def test_slack_error_codes_are_classified(slack: tuple[str, SlackState], code: str, action: str) -> None:
    """Issue #10.2: configuration errors keep the message (30 s backoff), content errors fall
    back to plain text, other request errors drop only that message; each records the code."""
    base, state = slack
    state.fail_method("chat.postMessage", code)
    clock = FakeTime()
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    outbox = DeliveryLoop(_notifier(base)).flush(enqueue(Outbox(), opened), lambda _: None, now=clock)
    [entry] = outbox.entries
    assert entry.error == (None if action == "sent as text only" else code)
    if action == "kept, retried slowly":
        assert (entry.state, entry.not_before - clock.now) == (EntryState.PENDING, 30.0)
        assert state.top_level() == []
    elif action == "sent as text only":
        assert entry.state is EntryState.SENT
        [message] = state.top_level()
        assert (message["text"], message["blocks"]) == ("Drift: strict-mtls on default/orders", None)
    else:
        assert entry.state is EntryState.DROPPED
        assert state.top_level() == []


def test_a_slow_answer_is_looked_up_not_posted_twice(slack: tuple[str, SlackState]) -> None:
    """Issue #18.3: Slack stores the message but answers after the client's timeout: the retry
    finds it by its outbox id and adopts it."""
    base, state = slack
    state.answer_delay_s = 2.0
    clock = FakeTime()
    notifier = SlackNotifier(build_web_client("xoxb-test-token", base_url=base + "api/", timeout=1), CHANNEL)
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    outbox = DeliveryLoop(notifier).flush(enqueue(Outbox(), opened), lambda _: None, now=clock)
    [entry] = outbox.entries
    assert (entry.state, entry.error) == (EntryState.IN_FLIGHT, "timeout")
    state.answer_delay_s = 0.0
    clock.now += 5
    outbox = DeliveryLoop(notifier).flush(outbox, lambda _: None, now=clock)
    assert outbox.next_unsent() is None
    assert state.transcript() == [("Drift: strict-mtls on default/orders", [])]
    assert state.requests == ["chat.postMessage", "conversations.history"]
