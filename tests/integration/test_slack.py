"""Slack delivery over real HTTP (slack-sdk -> a local Slack-compatible server on loopback).

Threads and updates, retries through 500s and 429s, an outage longer than the retries, and a
crash between sending and saving: every transition arrives once, in order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk.webhook import WebhookClient

from auditor.adapters.slack.notifier import SlackNotifier, WebhookNotifier, build_web_client
from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION
from auditor.core.drift import DriftBook, DriftPolicy, Transition
from auditor.core.model import Finding, Status
from auditor.core.outbox import EntryState, Outbox
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
    outbox = notifier.flush(enqueue(Outbox(), opened), saved.append)
    book, changed = _evaluate(book, Status.FAIL, 60.0, "port 8080 and 9090 accept plaintext")
    outbox = notifier.flush(enqueue(outbox, changed), saved.append)
    book, resolved = _evaluate(book, Status.PASS, 120.0, "STRICT")
    outbox = notifier.flush(enqueue(outbox, resolved), saved.append)
    [alert] = state.top_level()
    assert alert["text"] == "Drift: strict-mtls on default/orders"
    assert [m["text"] for m in state.replies(alert["ts"])] == [
        "Still drifting: strict-mtls on default/orders",
        "Resolved: strict-mtls on default/orders",
    ]
    assert [u["ts"] for u in state.updates] == [alert["ts"], alert["ts"]]
    assert outbox.next_unsent() is None
    assert saved[-1] == outbox  # persisted after the last step


def test_outage_of_500s_then_429s_delays_but_delivers_once(slack: tuple[str, SlackState]) -> None:
    """slack-sdk's retry handlers ride out 2x500 then 2x429 (Retry-After: 1): one message, later."""
    base, state = slack
    state.fail_next(2, 500)
    state.fail_next(2, 429, retry_after=1)
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    started = time.monotonic()
    outbox = _notifier(base).flush(enqueue(Outbox(), opened), lambda _: None)
    assert time.monotonic() - started >= 2.0  # two Retry-After waits were honoured
    assert len(state.top_level()) == 1
    assert state.requests.count("chat.postMessage") == 5
    assert outbox.next_unsent() is None


def test_outage_longer_than_retries_loses_nothing(slack: tuple[str, SlackState]) -> None:
    """Slack down for good: the entry stays queued; after the outage the next flush sends it, once."""
    base, state = slack
    state.fail_next(20, 500)
    _, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    outbox = _notifier(base).flush(enqueue(Outbox(), opened), lambda _: None)
    assert state.top_level() == []
    pending = outbox.next_unsent()
    assert pending is not None
    assert pending.state is EntryState.IN_FLIGHT
    with state.lock:
        state.outage.clear()
    outbox = _notifier(base).flush(Outbox.from_dict(outbox.to_dict()), lambda _: None)  # as after a restart
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
        _notifier(base).flush(enqueue(Outbox(), opened), save_then_crash)
    last_stored = saved[-2]  # the in-flight state: what a state store would hold
    outbox = _notifier(base).flush(Outbox.from_dict(last_stored.to_dict()), lambda _: None)
    assert len(state.top_level()) == 1
    assert outbox.next_unsent() is None
    assert outbox.threads["strict-mtls.peer-authentication|default/orders"] == state.top_level()[0]["ts"]


def test_many_alerts_at_once_send_a_digest_first(slack: tuple[str, SlackState]) -> None:
    base, state = slack
    findings = [Finding(CAPTURED, f"ns-{i}/svc", Status.FAIL, "not captured") for i in range(12)]
    _, opened = DriftBook().evaluate(findings, now=0.0, policy=DriftPolicy())
    _notifier(base).flush(enqueue(Outbox(), opened, digest_at=10), lambda _: None)
    texts = [m["text"] for m in state.top_level()]
    assert texts[0] == ":rotating_light: 12 drift alerts opened"
    assert len(texts) == 13


def test_webhook_mode_posts_new_messages_and_cannot_update(slack: tuple[str, SlackState]) -> None:
    base, state = slack
    book, opened = _evaluate(DriftBook(), Status.FAIL, 0.0)
    notifier = WebhookNotifier(WebhookClient(base + "webhook/T000/B000/XXXX"))
    outbox = notifier.flush(enqueue(Outbox(), opened), lambda _: None)
    _, resolved = _evaluate(book, Status.PASS, 60.0, "STRICT")
    outbox = notifier.flush(enqueue(outbox, resolved), lambda _: None)
    texts: list[Any] = [m["text"] for m in state.messages]
    assert texts == ["Drift: strict-mtls on default/orders", "Resolved: strict-mtls on default/orders"]
    assert state.updates == []
    assert outbox.next_unsent() is None
