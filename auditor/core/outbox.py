"""The notification outbox: what must reach Slack, in order, exactly once, across restarts.

Transitions are enqueued (persisted with the drift state) before anything is sent; the sender
marks each entry sent with the message's ``ts``. An entry that was being sent when the daemon
died is retried as ``in-flight``: the sender first looks for it in the channel by its id (Slack
message metadata) and adopts the message if Slack already has it, so nothing is sent twice and
nothing is lost. Each alert's first message anchors its thread; later entries update it
(``chat.update``) and reply in the thread.

Pure and immutable; payloads are the renderer's dicts (``auditor.render.slack``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class EntryKind(StrEnum):
    POST = "post"  # a new alert message (anchors a thread)
    UPDATE = "update"  # re-render the alert message in place (chat.update)
    REPLY = "reply"  # a reply in the alert's thread
    DIGEST = "digest"  # one message for many alerts


class EntryState(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in-flight"
    SENT = "sent"


@dataclass(frozen=True, slots=True)
class Entry:
    id: str  # deterministic: fingerprint + transition sequence, so a replay enqueues the same id
    fingerprint: str
    kind: EntryKind
    payload: Mapping[str, Any]
    state: EntryState = EntryState.PENDING
    attempts: int = 0
    ts: str | None = None


@dataclass(frozen=True, slots=True)
class Outbox:
    entries: tuple[Entry, ...] = ()
    threads: Mapping[str, str] = field(default_factory=dict)  # fingerprint -> ts of its alert message

    def with_enqueued(self, entry: Entry) -> Outbox:
        if any(e.id == entry.id for e in self.entries):
            return self  # enqueueing is idempotent: a replayed transition is not sent twice
        return replace(self, entries=(*self.entries, entry))

    def next_unsent(self) -> Entry | None:
        return next((e for e in self.entries if e.state is not EntryState.SENT), None)

    def with_in_flight(self, entry_id: str) -> Outbox:
        return self._update(entry_id, lambda e: replace(e, state=EntryState.IN_FLIGHT, attempts=e.attempts + 1))

    def with_sent(self, entry_id: str, ts: str) -> Outbox:
        outbox = self._update(entry_id, lambda e: replace(e, state=EntryState.SENT, ts=ts))
        sent = next(e for e in outbox.entries if e.id == entry_id)
        if sent.kind is EntryKind.POST and sent.fingerprint not in outbox.threads:
            outbox = replace(outbox, threads={**outbox.threads, sent.fingerprint: ts})
        return outbox

    def pruned(self, keep_sent: int = 200) -> Outbox:
        """Drop the oldest sent entries beyond ``keep_sent`` (threads are kept)."""
        sent = [e for e in self.entries if e.state is EntryState.SENT]
        drop = {e.id for e in sent[: max(0, len(sent) - keep_sent)]}
        return replace(self, entries=tuple(e for e in self.entries if e.id not in drop))

    def _update(self, entry_id: str, change: Any) -> Outbox:
        return replace(self, entries=tuple(change(e) if e.id == entry_id else e for e in self.entries))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "threads": dict(self.threads),
            "entries": [
                {
                    "id": e.id,
                    "fingerprint": e.fingerprint,
                    "kind": e.kind.value,
                    "payload": dict(e.payload),
                    "state": e.state.value,
                    "attempts": e.attempts,
                    "ts": e.ts,
                }
                for e in self.entries
            ],
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Outbox:
        if data.get("version") != 1:
            raise ValueError(f"unknown outbox version {data.get('version')!r}")
        entries = tuple(
            Entry(
                id=str(e["id"]),
                fingerprint=str(e["fingerprint"]),
                kind=EntryKind(e["kind"]),
                payload=dict(e["payload"]),
                state=EntryState(e["state"]),
                attempts=int(e["attempts"]),
                ts=None if e["ts"] is None else str(e["ts"]),
            )
            for e in data.get("entries", [])
        )
        return Outbox(entries=entries, threads={str(k): str(v) for k, v in data.get("threads", {}).items()})
