"""The notification outbox: what must reach Slack, in order per incident, exactly once, across restarts.

Transitions are enqueued (persisted with the drift state) before anything is sent; the sender
marks each entry sent with the message's ``ts``. An entry that was being sent when the daemon
died, or whose answer never came back, stays ``in-flight``: before sending it again the sender
looks for it in Slack by its id (message metadata; ``conversations.history`` for top-level
messages, ``conversations.replies`` for thread replies) and adopts the message if Slack already
has it, so nothing is sent twice and nothing is lost. Each incident's first message anchors its
thread (``threads``, keyed by the incident key); later entries of that incident update it
(``chat.update``) and reply in the thread.

Order holds per incident (``Entry.fingerprint`` is the incident key), never across incidents:
an entry Slack keeps refusing holds back only its own incident (``due``). Entries Slack rejects
for good are ``dropped`` with the error code. The outbox is bounded (``with_enqueued(max_unsent)``):
when full, the oldest unsent ``update`` entries are dropped first (a later update or the
resolution re-renders the same message), then the oldest replies, then the oldest posts; each
keeps its id and the reason ``outbox-full`` (its payload is cleared to save space).

Pure and immutable; time comes in as epoch seconds; payloads are the renderer's dicts
(``auditor.render.slack``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

OUTBOX_FULL = "outbox-full"
TEXT_LIMIT = 3000  # characters of a text-only fallback (Slack's section text limit)
Action = Literal["sent", "retry", "repost", "text_only", "drop"]


class EntryKind(StrEnum):
    """What sending an entry does in Slack."""

    POST = "post"  # a new alert message (anchors a thread)
    UPDATE = "update"  # re-render the alert message in place (chat.update)
    REPLY = "reply"  # a reply in the alert's thread
    DIGEST = "digest"  # one message for many alerts


class EntryState(StrEnum):
    """Where an entry is in its delivery."""

    PENDING = "pending"
    IN_FLIGHT = "in-flight"  # may have reached Slack: look it up before sending again
    SENT = "sent"
    DROPPED = "dropped"  # given up, with the reason in ``error``


_DONE = frozenset({EntryState.SENT, EntryState.DROPPED})
# When the outbox is full, what goes first: a stale re-render, then a thread reply, then a post.
_DROP_ORDER = (EntryKind.UPDATE, EntryKind.REPLY, EntryKind.DIGEST, EntryKind.POST)


@dataclass(frozen=True, slots=True)
class Entry:
    """One message to deliver: ``payload`` is the renderer's dict (``text``, ``blocks``);
    ``not_before`` is epoch seconds."""

    id: str  # deterministic: incident + transition time + kind, so a replay enqueues the same id
    fingerprint: str  # the incident key: entries of one incident go out in order, in one thread
    kind: EntryKind
    payload: Mapping[str, Any]
    state: EntryState = EntryState.PENDING
    attempts: int = 0
    ts: str | None = None
    not_before: float = 0.0  # epoch seconds: retry no earlier (backoff, Retry-After)
    error: str | None = None  # Slack's error code of the last failure, or why it was dropped

    @property
    def done(self) -> bool:
        """True once the entry is sent or dropped (it is never attempted again). Never raises."""
        return self.state in _DONE


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one attempt to send an entry came to (the Slack adapter classifies; see its docstring).

    ``error`` is Slack's error code (or ``http_503``, ``timeout`` ...); ``retry_after`` the seconds
    Slack asked to wait (429); ``reached``: the request may have reached Slack (look it up before
    sending again); ``config``: the app's configuration is refused, so every message fails alike;
    ``adopted``: an earlier attempt had reached Slack and its message was found."""

    action: Action
    ts: str | None = None
    error: str = ""
    retry_after: float | None = None
    reached: bool = False
    config: bool = False
    adopted: bool = False


def backoff_s(attempts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff after ``attempts`` failed attempts: base, 2*base, 4*base ... up to ``cap``."""
    return float(min(cap, base * 2 ** max(0, min(attempts - 1, 30))))


@dataclass(frozen=True, slots=True)
class Outbox:
    """The entries in enqueue order, each incident's thread ``ts`` and its aliases; immutable (every
    ``with_*`` returns a new outbox). Stored as ``to_dict`` (version 2)."""

    entries: tuple[Entry, ...] = ()
    threads: Mapping[str, str] = field(default_factory=dict)  # incident key -> ts of its alert message
    # incident key -> the key of the thread it is followed up in (a digest's), when it has none
    aliases: Mapping[str, str] = field(default_factory=dict)

    def thread_key(self, incident: str) -> str:
        """The key of the thread ``incident`` is followed up in: its alias when it has one, else itself. Never
        raises.
        """
        return self.aliases.get(incident, incident)

    def with_aliases(self, aliases: Mapping[str, str]) -> Outbox:
        """A copy with ``aliases`` (incident key -> thread key) added over the known ones. Never raises."""
        return replace(self, aliases={**self.aliases, **aliases})

    def with_enqueued(self, entry: Entry, max_unsent: int | None = None) -> Outbox:
        """Add ``entry`` unless an entry of its id is known (idempotent); bounded by ``max_unsent``."""
        if any(e.id == entry.id for e in self.entries):
            return self  # enqueueing is idempotent: a replayed transition is not sent twice
        outbox = replace(self, entries=(*self.entries, entry))
        return outbox if max_unsent is None else outbox.bounded(max_unsent)

    def bounded(self, max_unsent: int) -> Outbox:
        """Drop unsent entries (never in-flight ones) beyond ``max_unsent``, in ``_DROP_ORDER``."""
        excess = len(self.unsent) - max_unsent
        if excess <= 0:
            return self
        victims: list[str] = []
        for kind in _DROP_ORDER:
            candidates = [e.id for e in self.entries if e.state is EntryState.PENDING and e.kind is kind]
            victims += candidates[: excess - len(victims)]
            if len(victims) >= excess:
                break
        outbox = self
        for victim in victims:
            outbox = outbox.with_dropped(victim, OUTBOX_FULL)
        return outbox

    @property
    def unsent(self) -> tuple[Entry, ...]:
        """The entries neither sent nor dropped, in enqueue order. Never raises."""
        return tuple(e for e in self.entries if not e.done)

    def next_unsent(self) -> Entry | None:
        """The oldest entry neither sent nor dropped, else None. Never raises."""
        return next((e for e in self.entries if not e.done), None)

    def due(self, now: float) -> tuple[Entry, ...]:
        """The entries that may be sent at ``now``: each incident's first unsent entry, if its
        backoff has passed. One incident's stuck entry never holds back another incident."""
        heads: dict[str, Entry] = {}
        for entry in self.entries:
            if not entry.done and entry.fingerprint not in heads:
                heads[entry.fingerprint] = entry
        return tuple(e for e in heads.values() if e.not_before <= now)

    def with_in_flight(self, entry_id: str) -> Outbox:
        """Mark the entry as being sent (stored before the attempt: a crash then looks it up in Slack)."""
        return self._update(entry_id, lambda e: replace(e, state=EntryState.IN_FLIGHT, attempts=e.attempts + 1))

    def with_sent(self, entry_id: str, ts: str) -> Outbox:
        """Mark the entry sent as Slack's message ``ts``; a post anchors its incident's thread."""
        outbox = self._update(entry_id, lambda e: replace(e, state=EntryState.SENT, ts=ts, error=None))
        sent = next(e for e in outbox.entries if e.id == entry_id)
        if sent.kind in {EntryKind.POST, EntryKind.DIGEST}:
            # Every post anchors its own incident's thread (a re-posted alert re-anchors it).
            outbox = replace(outbox, threads={**outbox.threads, sent.fingerprint: ts})
        return outbox

    def with_retry(self, entry_id: str, not_before: float, error: str, *, reached: bool) -> Outbox:
        """Try again at ``not_before``; ``reached``: the request may have reached Slack (a timeout,
        a 5xx), so the entry stays in-flight and is looked up before it is sent again."""
        state = EntryState.IN_FLIGHT if reached else EntryState.PENDING
        return self._update(entry_id, lambda e: replace(e, state=state, not_before=not_before, error=error))

    def with_reposted(self, entry_id: str, error: str) -> Outbox:
        """An update or reply whose message is gone (deleted in Slack): post it as a fresh message
        that anchors the incident's thread from now on."""
        return self._update(
            entry_id, lambda e: replace(e, kind=EntryKind.POST, state=EntryState.PENDING, not_before=0.0, error=error)
        )

    def with_payload(self, entry_id: str, payload: Mapping[str, Any], error: str) -> Outbox:
        """Send a degraded payload instead (e.g. text only when Slack refused the blocks)."""
        return self._update(
            entry_id, lambda e: replace(e, payload=dict(payload), state=EntryState.PENDING, not_before=0.0, error=error)
        )

    def with_dropped(self, entry_id: str, error: str) -> Outbox:
        """Give the entry up for good, with the reason (Slack's error code or ``outbox-full``)."""
        return self._update(entry_id, lambda e: replace(e, state=EntryState.DROPPED, payload={}, error=error))

    def with_delivery(self, entry: Entry, delivery: Delivery, now: float) -> tuple[Outbox, float]:
        """Record one attempt at ``entry`` (as it was before the attempt); returns the outbox and,
        for a retry, the seconds until the next attempt (backoff: 1 s doubling to 5 min; 30 s
        doubling to 10 min for configuration errors; or Slack's ``Retry-After``)."""
        if delivery.action == "sent":
            return self.with_sent(entry.id, delivery.ts or ""), 0.0
        if delivery.action == "retry":
            attempts = entry.attempts + 1
            if delivery.config:
                wait = backoff_s(attempts, base=30.0, cap=600.0)
            else:
                wait = delivery.retry_after or backoff_s(attempts)
            # An entry that was in flight before this attempt stays so: the earlier attempt may
            # have reached Slack even if this one (or its lookup) did not.
            reached = delivery.reached or entry.state is EntryState.IN_FLIGHT
            return self.with_retry(entry.id, now + wait, delivery.error, reached=reached), wait
        if delivery.action == "repost":
            return self.with_reposted(entry.id, delivery.error), 0.0
        if delivery.action == "text_only":
            text = str(entry.payload.get("text", ""))[:TEXT_LIMIT]
            return self.with_payload(entry.id, {"text": text, "blocks": None}, delivery.error), 0.0
        return self.with_dropped(entry.id, delivery.error), 0.0

    def pruned(self, keep_done: int = 200, keep_aliases: int = 2000) -> Outbox:
        """Drop the oldest sent or dropped entries beyond ``keep_done`` and the oldest aliases
        beyond ``keep_aliases`` (threads are kept)."""
        done = [e for e in self.entries if e.done]
        drop = {e.id for e in done[: max(0, len(done) - keep_done)]}
        aliases = dict(list(self.aliases.items())[-keep_aliases:]) if keep_aliases else {}
        return replace(self, entries=tuple(e for e in self.entries if e.id not in drop), aliases=aliases)

    def _update(self, entry_id: str, change: Any) -> Outbox:
        return replace(self, entries=tuple(change(e) if e.id == entry_id else e for e in self.entries))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the state ConfigMap (``version`` 2): ``threads`` and ``aliases`` (str -> str) and
        ``entries`` (one dict per entry with its fields; enums as their values, ``not_before`` in epoch seconds).
        Never raises.
        """
        return {
            "version": 2,
            "threads": dict(self.threads),
            "aliases": dict(self.aliases),
            "entries": [
                {
                    "id": e.id,
                    "fingerprint": e.fingerprint,
                    "kind": e.kind.value,
                    "payload": dict(e.payload),
                    "state": e.state.value,
                    "attempts": e.attempts,
                    "ts": e.ts,
                    "not_before": e.not_before,
                    "error": e.error,
                }
                for e in self.entries
            ],
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Outbox:
        """Raises ``ValueError``/``KeyError``/``TypeError`` on a document of another shape or version."""
        version = data.get("version")
        if version not in (1, 2):
            raise ValueError(f"unknown outbox version {version!r}")
        # Version 1 keyed threads by fingerprint alone: such a thread belongs to the alert's first
        # (still open) incident.
        key = _incident_key if version == 1 else str
        entries = tuple(
            Entry(
                id=str(e["id"]),
                fingerprint=key(str(e["fingerprint"])),
                kind=EntryKind(e["kind"]),
                payload=dict(e["payload"]),
                state=EntryState(e["state"]),
                attempts=int(e["attempts"]),
                ts=None if e["ts"] is None else str(e["ts"]),
                not_before=float(e.get("not_before") or 0.0),
                error=None if e.get("error") is None else str(e["error"]),
            )
            for e in data.get("entries", [])
        )
        threads = {key(str(k)): str(v) for k, v in dict(data.get("threads", {})).items()}
        aliases = {str(k): str(v) for k, v in dict(data.get("aliases", {})).items()}
        return Outbox(entries=entries, threads=threads, aliases=aliases)


def _incident_key(key: str) -> str:
    return key if key == "digest" else f"{key}#1"
