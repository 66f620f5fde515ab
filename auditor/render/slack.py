"""Slack Block Kit messages for drift transitions: pure functions from transitions to payloads.

The Slack adapter only sends what these build (``chat.postMessage``/``chat.update``/thread
replies). Texts respect Block Kit's limits (slack_sdk.models.blocks and
https://api.slack.com/reference/block-kit/blocks: 50 blocks a message, a header's text 150
characters, a section's text 3,000, a section's fields 10 of 2,000 each, a context's elements 10;
the fallback ``text`` is kept to 4,000, Slack's recommended size) and say "and N more" where a
list is cut. Every string taken from a finding (names, values, messages: manifest-derived, hence
hostile) goes through ``escape.slack_text``: ``& < >`` become entities, so ``<!channel>`` in a
principal is shown, never a mention, and control characters are shown as ``\\x1b``-style escapes.
Texts carry only what findings carry: header values and tokens never appear in findings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from auditor.core.alerting.drift import Phase, Transition, TransitionKind
from auditor.core.alerting.outbox import Entry, EntryKind, Outbox
from auditor.core.model import Evidence
from auditor.render.escape import slack_clip, slack_text
from auditor.render.fixes import fix_yaml

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
FALLBACK_LIMIT = 4000
MAX_BLOCKS = 50
MAX_EVIDENCE = 8
# One evidence line: 8 of them plus the title fit one section.
EVIDENCE_LINE_LIMIT = 360
_ICON = {
    TransitionKind.OPENED: ":rotating_light:",
    TransitionKind.CHANGED: ":warning:",
    TransitionKind.RESOLVED: ":white_check_mark:",
    TransitionKind.DEGRADED: ":grey_question:",
    TransitionKind.CLOSED: ":heavy_minus_sign:",
}
_VERB = {
    TransitionKind.OPENED: "Drift",
    TransitionKind.CHANGED: "Still drifting",
    TransitionKind.RESOLVED: "Resolved",
    TransitionKind.DEGRADED: "Cannot verify",
    TransitionKind.CLOSED: "Closed",
}

Block = dict[str, Any]


def _clip(text: str, limit: int) -> str:
    return slack_clip(text, limit)


def _mrkdwn(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, SECTION_LIMIT)}}


def _field(title: str, value: str) -> Block:
    return {"type": "mrkdwn", "text": _clip(f"*{title}*\n{value}", FIELD_LIMIT)}


def _esc(text: str) -> str:
    return slack_text(text)


def headline(transition: Transition) -> str:
    """The one-line summary, escaped for Slack (also the notification's fallback ``text``)."""
    finding = transition.finding
    return _clip(f"{_VERB[transition.kind]}: {finding.property.value} on {_esc(finding.target)}", FALLBACK_LIMIT)


def alert_message(transition: Transition) -> dict[str, Any]:
    """The message that opens (or, via chat.update, re-renders) one alert."""
    finding, meta = transition.finding, transition.finding.check
    blocks: list[Block] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _clip(f"{_ICON[transition.kind]} {headline(transition)}", HEADER_LIMIT),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "fields": [
                _field("Check", f"`{_esc(meta.id)}`"),
                _field("Severity", _esc(meta.severity.value)),
                _field("Target", f"`{_esc(finding.target)}`"),
                _field("Found by", _method(finding.method.value)),
            ],
        },
        _mrkdwn(f"*{_esc(meta.title)}*\n{_esc(finding.message)}"),
    ]
    blocks += _evidence_blocks(finding.evidence)
    if transition.kind not in {TransitionKind.RESOLVED, TransitionKind.CLOSED}:
        note = f"\n_This finding:_ {_esc(finding.fix.note)}" if finding.fix.note else ""
        blocks.append(_mrkdwn(f"*Fix*\n{_esc(meta.remediation)}{note}"))
        text = fix_yaml(finding.fix)
        if text:
            yaml_text = slack_text(text.rstrip(), multiline=True)
            blocks.append(_mrkdwn(f"```{_clip(yaml_text, SECTION_LIMIT - 6)}```"))
    references = ", ".join(_esc(r) for r in meta.references)
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip("References: " + references, SECTION_LIMIT)}]}
    )
    return {"text": headline(transition), "blocks": blocks[:MAX_BLOCKS]}


def thread_reply(transition: Transition) -> dict[str, Any]:
    """A short reply in the alert's thread: a change, a resolution, or a degraded evaluation."""
    text = f"{_ICON[transition.kind]} *{_VERB[transition.kind]}* — {_esc(transition.finding.message)}"
    return {"text": headline(transition), "blocks": [_mrkdwn(text)]}


def digest_message(transitions: Sequence[Transition]) -> dict[str, Any]:
    """One message for many alerts opening at once (a bad rollout should not page 200 times).

    At most ``MAX_BLOCKS`` blocks: the lines that do not fit end in "… and N more".
    """
    lines = [
        _clip(f"• `{_esc(t.finding.target)}` {t.finding.property.value}: {_esc(t.finding.check.id)}", SECTION_LIMIT)
        for t in transitions
    ]
    title = f":rotating_light: {len(transitions)} drift alerts opened"
    blocks: list[Block] = [{"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}}]
    sections = _pack(lines, MAX_BLOCKS - len(blocks))
    blocks += [_mrkdwn(section) for section in sections]
    return {"text": title, "blocks": blocks}


def _pack(lines: Sequence[str], max_sections: int) -> list[str]:
    """Lines joined into at most ``max_sections`` section texts; the last says how many were cut."""
    groups: list[list[str]] = []
    for line in lines:
        if not groups or len("\n".join([*groups[-1], line])) > SECTION_LIMIT:
            groups.append([])
        groups[-1].append(line)
    if len(groups) > max_sections:
        groups = groups[:max_sections]
        kept = sum(map(len, groups))
        # The note shares the last section, so lines leave it until the note fits.
        while True:
            note = f"… and {len(lines) - kept} more (see the report)"
            if len("\n".join([*groups[-1], note])) <= SECTION_LIMIT:
                break
            groups[-1].pop()
            kept -= 1
        groups[-1].append(note)
    return ["\n".join(group) for group in groups]


def _method(method: str) -> str:
    return "real traffic (probe)" if method == "probe" else "config (static analysis)"


def _evidence_blocks(evidence: Sequence[Evidence]) -> list[Block]:
    if not evidence:
        return []
    shown = [_clip(_evidence_line(e), EVIDENCE_LINE_LIMIT) for e in evidence[:MAX_EVIDENCE]]
    if len(evidence) > MAX_EVIDENCE:
        shown.append(f"… and {len(evidence) - MAX_EVIDENCE} more (see the report)")
    return [_mrkdwn("*Evidence*\n" + "\n".join(shown))]


def _evidence_line(evidence: Evidence) -> str:
    note = f" — {_esc(evidence.note)}" if evidence.note else ""
    return f"• {_esc(evidence.object)} `{_esc(evidence.field)}` = `{_esc(evidence.value)}`{note}"


def enqueue(
    outbox: Outbox,
    transitions: Sequence[Transition],
    *,
    digest_at: int = 10,
    digest_threads: int | None = None,
    max_unsent: int | None = None,
) -> Outbox:
    """Turn transitions into outbox entries: post on open (or one digest when ``digest_at`` or more
    open at once, with its own thread for only the first ``digest_threads`` of them: the others
    are followed up in the digest's thread), update + thread reply on change and resolution, a
    thread reply when an open alert turns degraded. Each opening is its own incident, with its own
    message and thread (``AlertState.incident``). ``max_unsent`` bounds the outbox (see
    ``Outbox.bounded``)."""
    opened = [t for t in transitions if t.kind is TransitionKind.OPENED]
    threaded = {t.state.incident for t in opened}
    if len(opened) >= digest_at:
        ids = ",".join(sorted(t.state.incident for t in opened))
        digest_key = f"digest#{hashlib.sha256(ids.encode()).hexdigest()[:12]}"
        digest_id = f"{digest_key}|{opened[0].state.updated_at}"
        outbox = outbox.with_enqueued(
            Entry(digest_id, digest_key, EntryKind.DIGEST, digest_message(opened)), max_unsent
        )
        if digest_threads is not None:
            threaded = {t.state.incident for t in opened[:digest_threads]}
            outbox = outbox.with_aliases({t.state.incident: digest_key for t in opened[digest_threads:]})
    grouped: dict[str, list[Transition]] = {}
    for transition in transitions:
        if transition.kind is TransitionKind.OPENED and transition.state.incident not in threaded:
            continue  # announced by the digest only
        key = outbox.thread_key(transition.state.incident)
        if key != transition.state.incident and transition.kind is not TransitionKind.OPENED:
            grouped.setdefault(key, []).append(transition)  # followed up in its digest's thread
            continue
        outbox = _enqueue_one(outbox, transition, max_unsent)
    for key, group in grouped.items():
        if len(group) == 1:
            outbox = _enqueue_one(outbox, group[0], max_unsent)
            continue
        ids = ",".join(sorted(f"{t.state.incident}|{t.kind.value}" for t in group))
        entry_id = f"{key}|{group[0].state.updated_at}|followup|{hashlib.sha256(ids.encode()).hexdigest()[:12]}"
        outbox = outbox.with_enqueued(Entry(entry_id, key, EntryKind.REPLY, digest_followup(group)), max_unsent)
    return outbox


def digest_followup(transitions: Sequence[Transition]) -> dict[str, Any]:
    """One reply in a digest's thread for many of its alerts changing at once (resolved, closed...).

    At most ``MAX_BLOCKS`` blocks: the lines that do not fit end in "… and N more".
    """
    lines = [
        _clip(f"{_ICON[t.kind]} `{_esc(t.finding.target)}` {t.finding.property.value}: {_VERB[t.kind]}", SECTION_LIMIT)
        for t in transitions
    ]
    title = f"{len(transitions)} of these alerts changed"
    blocks: list[Block] = [_mrkdwn(f"*{title}*")]
    blocks += [_mrkdwn(section) for section in _pack(lines, MAX_BLOCKS - len(blocks))]
    return {"text": title, "blocks": blocks}


def _enqueue_one(outbox: Outbox, transition: Transition, max_unsent: int | None) -> Outbox:
    state = transition.state
    key = outbox.thread_key(state.incident)
    base = f"{state.incident}|{state.updated_at}"
    if transition.kind is TransitionKind.OPENED:
        # Each alert still gets its own message (its thread), even when a digest announced it.
        return outbox.with_enqueued(Entry(f"{base}|post", key, EntryKind.POST, alert_message(transition)), max_unsent)
    if transition.kind is TransitionKind.DEGRADED and (
        state.phase is not Phase.FIRING or state.incident not in _known(outbox)
    ):
        return outbox  # nothing open to report on: a degraded check alone is reported, not alerted
    outbox = outbox.with_enqueued(Entry(f"{base}|reply", key, EntryKind.REPLY, thread_reply(transition)), max_unsent)
    if transition.kind in _RE_RENDER and key == state.incident:
        outbox = outbox.with_enqueued(
            Entry(f"{base}|update", key, EntryKind.UPDATE, alert_message(transition)), max_unsent
        )
    return outbox


_RE_RENDER = frozenset({TransitionKind.CHANGED, TransitionKind.RESOLVED, TransitionKind.CLOSED})


def _known(outbox: Outbox) -> set[str]:
    return (
        set(outbox.threads) | set(outbox.aliases) | {e.fingerprint for e in outbox.entries if e.kind is EntryKind.POST}
    )
