"""Slack messages are built purely from transitions and check metadata, within Slack's limits."""

from __future__ import annotations

import json

from auditor.core.alerting.drift import DriftBook, DriftPolicy, Transition
from auditor.core.checks.catalog import INTRUDERS_REFUSED, PEER_AUTHENTICATION
from auditor.core.model import Evidence, Finding, Fix, FixDocument, Method, Status
from auditor.render.slack import HEADER_LIMIT, SECTION_LIMIT, alert_message, digest_message, thread_reply

_STRICT = Fix(
    (
        FixDocument(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "orders-debug", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"app": "orders"}}, "mtls": {"mode": "STRICT"}},
            }
        ),
    ),
    "Apply default/orders-debug with mode STRICT.",
)


def _transition(
    status: Status,
    *,
    message: str = "Deployment default/orders port 8080 accepts plaintext",
    book: DriftBook | None = None,
) -> tuple[DriftBook, Transition]:
    finding = Finding(
        check=PEER_AUTHENTICATION,
        target="default/orders",
        status=status,
        message=message,
        evidence=(
            Evidence("PeerAuthentication default/orders-debug", "spec.mtls.mode", "PERMISSIVE", "workload policy"),
        ),
        method=Method.STATIC,
        fix=_STRICT,
    )
    after, transitions = (book or DriftBook()).evaluate([finding], now=0.0, policy=DriftPolicy())
    return after, transitions[0]


def test_opened_alert_names_the_drift_the_target_the_evidence_and_the_fix() -> None:
    _, opened = _transition(Status.FAIL)
    message = alert_message(opened)
    text = json.dumps(message)
    assert message["text"] == "Drift: strict-mtls on default/orders"
    assert "strict-mtls.peer-authentication" in text
    assert "PeerAuthentication default/orders-debug" in text
    assert "kind: PeerAuthentication" in text  # the finding's own fix, filled in
    assert "name: orders-debug" in text
    assert "Apply default/orders-debug with mode STRICT." in text
    assert "config (static analysis)" in text


def test_resolution_reply_carries_no_fix() -> None:
    book, _ = _transition(Status.FAIL)
    _, resolved = _transition(Status.PASS, message="effective mode STRICT", book=book)
    reply = thread_reply(resolved)
    assert reply["text"] == "Resolved: strict-mtls on default/orders"
    assert "Fix" not in json.dumps(alert_message(resolved))


def test_long_texts_are_clipped_to_slack_limits() -> None:
    _, opened = _transition(Status.FAIL, message="x" * 10_000)
    for block in alert_message(opened)["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= HEADER_LIMIT
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= SECTION_LIMIT


def test_digest_lists_every_alert_within_fifty_blocks() -> None:
    transitions = []
    for index in range(300):
        finding = Finding(check=INTRUDERS_REFUSED, target=f"ns-{index}/svc", status=Status.FAIL, message="m")
        _, opened = DriftBook().evaluate([finding], now=0.0, policy=DriftPolicy())
        transitions.append(opened[0])
    digest = digest_message(transitions)
    text = json.dumps(digest)
    assert digest["text"] == ":rotating_light: 300 drift alerts opened"
    assert len(digest["blocks"]) <= 50
    assert "ns-0/svc" in text
    assert "ns-299/svc" in text
