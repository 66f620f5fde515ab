"""Manifest-derived strings cannot become Slack mentions, and every message keeps Block Kit's limits.

Limits are checked with slack-sdk's own block classes (``Block.parse(...).validate_json()``), so a
message that passes here is one Slack accepts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from slack_sdk.models.blocks import Block

from auditor.core.alerting.drift import DriftBook, DriftPolicy, Transition, TransitionKind
from auditor.core.checks.catalog import HEADERS_ENFORCED, INTRUDERS_REFUSED
from auditor.core.model import Evidence, Finding, Method, Status
from auditor.render.escape import slack_clip, slack_text
from auditor.render.slack import FALLBACK_LIMIT, MAX_BLOCKS, alert_message, digest_message, thread_reply

HOSTILE_PRINCIPAL = "cluster.local/ns/<!channel>/sa/<@U123>"
# Slack's syntax: <!channel>, <!here>, <@U…>, <#C…>, <http://…|label>; any "<" starts one.
_SLACK_CONTROL = re.compile(r"<[^>]*>")


def _finding(*, target: str = "default/orders", message: str = "", evidence: tuple[Evidence, ...] = ()) -> Finding:
    return Finding(
        check=INTRUDERS_REFUSED,
        target=target,
        status=Status.FAIL,
        message=message or f"identity {HOSTILE_PRINCIPAL} reaches the Service",
        evidence=evidence
        or (Evidence("AuthorizationPolicy default/allow", "principals", HOSTILE_PRINCIPAL, "<!here>"),),
        method=Method.STATIC,
    )


def _lifecycle(finding: Finding) -> list[Transition]:
    """Opened, then changed (new message), then resolved: every kind of message an alert gets."""
    book, opened = DriftBook().evaluate([finding], now=0.0, policy=DriftPolicy())
    changed_finding = Finding(
        finding.check, finding.target, Status.FAIL, finding.message + " <!everyone>", finding.evidence
    )
    book, changed = book.evaluate([changed_finding], now=1.0, policy=DriftPolicy())
    passed = Finding(finding.check, finding.target, Status.PASS, "refused <@U999>", finding.evidence)
    _, resolved = book.evaluate([passed], now=2.0, policy=DriftPolicy())
    return [*opened, *changed, *resolved]


def _texts(payload: dict[str, Any]) -> list[str]:
    """Every string Slack parses in a payload: the fallback text and each text object's text."""
    found = [payload["text"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") in {"mrkdwn", "plain_text"}:
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(payload["blocks"])
    return found


def _assert_valid(payload: dict[str, Any]) -> None:
    assert len(payload["blocks"]) <= MAX_BLOCKS
    assert len(payload["text"]) <= FALLBACK_LIMIT
    for block in payload["blocks"]:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.validate_json()  # raises SlackObjectFormationError past a limit
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
        assert len(block.get("elements", [])) <= 10


def test_a_principal_with_mentions_reaches_no_message_as_slack_syntax() -> None:
    """<!channel>, <!here>, <!everyone> and <@U…> in a principal, message or note are shown, never parsed."""
    transitions = _lifecycle(_finding())
    assert [t.kind for t in transitions] == [TransitionKind.OPENED, TransitionKind.CHANGED, TransitionKind.RESOLVED]
    payloads = [p for t in transitions for p in (alert_message(t), thread_reply(t))]
    payloads.append(digest_message(transitions[:1]))
    for payload in payloads:
        for text in _texts(payload):
            assert not _SLACK_CONTROL.search(text), text
    alert = json.dumps(alert_message(transitions[0]))
    assert "&lt;!channel&gt;" in alert
    assert "&lt;@U123&gt;" in alert
    assert "&lt;!here&gt;" in alert
    assert "&lt;!everyone&gt;" in json.dumps(thread_reply(transitions[1]))


def test_the_header_placeholder_is_escaped_in_required_header_findings() -> None:
    """Request.describe()'s `x-auth-token: <set>` would be read by Slack as its <…> syntax."""
    finding = Finding(
        HEADERS_ENFORCED,
        "default/orders",
        Status.FAIL,
        "GET / port 80 with x-auth-token: <set> is admitted & served",
        method=Method.STATIC,
    )
    _, opened = DriftBook().evaluate([finding], now=0.0, policy=DriftPolicy())
    text = json.dumps(alert_message(opened[0]))
    assert "x-auth-token: &lt;set&gt; is admitted &amp; served" in text
    assert "<set>" not in text


def test_control_characters_in_names_are_shown_not_sent() -> None:
    finding = _finding(target="default/orders\n*FAKE* resolved\x1b[2K")
    _, opened = DriftBook().evaluate([finding], now=0.0, policy=DriftPolicy())
    text = alert_message(opened[0])["text"]
    assert text == "Drift: principal-allowlist on default/orders\\n*FAKE* resolved\\x1b[2K"


def test_huge_hostile_input_keeps_every_block_within_slack_limits() -> None:
    """Escaping grows text (< becomes &lt;): limits hold after escaping, entities are never cut."""
    evidence = tuple(Evidence("<" * 5000, "f<", "<!channel>" * 500, "&" * 4000) for _ in range(30))
    finding = _finding(target="<" * 3000, message="<!channel>" * 2000, evidence=evidence)
    for transition in _lifecycle(finding):
        for payload in (alert_message(transition), thread_reply(transition)):
            _assert_valid(payload)
            for text in _texts(payload):
                assert not re.search(
                    r"&[a-z]{0,3}(?![a-z;])", text.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
                )
    assert "… and 22 more (see the report)" in json.dumps(alert_message(_lifecycle(finding)[0]), ensure_ascii=False)


def test_a_digest_of_many_long_targets_is_cut_at_fifty_blocks_with_and_n_more() -> None:
    transitions: list[Transition] = []
    for index in range(2000):
        target = f"ns-{index}/" + "<" * 200
        finding = Finding(INTRUDERS_REFUSED, target, Status.FAIL, "m", method=Method.STATIC)
        transitions += DriftBook().evaluate([finding], now=0.0, policy=DriftPolicy())[1]
    digest = digest_message(transitions)
    _assert_valid(digest)
    last = digest["blocks"][-1]["text"]["text"]
    shown = sum(block["text"]["text"].count("• ") for block in digest["blocks"][1:])
    assert last.endswith(f"… and {2000 - shown} more (see the report)")
    assert 0 < shown < 2000


def test_clipping_never_splits_an_entity() -> None:
    escaped = slack_text("a<b")  # a&lt;b
    assert [slack_clip(escaped, n) for n in range(2, 6)] == ["a…", "a…", "a…", "a…"]
    assert slack_clip(escaped, 6) == escaped
