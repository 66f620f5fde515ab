"""The outbox: idempotent enqueueing, order, threads, and its serialised form."""

from __future__ import annotations

from auditor.core.outbox import Entry, EntryKind, EntryState, Outbox


def _entry(entry_id: str, kind: EntryKind = EntryKind.POST, fingerprint: str = "c|t") -> Entry:
    return Entry(entry_id, fingerprint, kind, {"text": entry_id, "blocks": []})


def test_enqueueing_the_same_id_twice_keeps_one_entry() -> None:
    outbox = Outbox().with_enqueued(_entry("a")).with_enqueued(_entry("a"))
    assert [e.id for e in outbox.entries] == ["a"]


def test_entries_go_out_in_order_and_the_first_post_anchors_the_thread() -> None:
    outbox = Outbox().with_enqueued(_entry("a")).with_enqueued(_entry("b", EntryKind.REPLY))
    first = outbox.next_unsent()
    assert first is not None
    assert first.id == "a"
    outbox = outbox.with_in_flight("a").with_sent("a", "111.1")
    second = outbox.next_unsent()
    assert second is not None
    assert second.id == "b"
    assert outbox.threads == {"c|t": "111.1"}


def test_in_flight_counts_attempts_and_round_trips() -> None:
    outbox = Outbox().with_enqueued(_entry("a")).with_in_flight("a").with_in_flight("a")
    [entry] = outbox.entries
    assert (entry.state, entry.attempts) == (EntryState.IN_FLIGHT, 2)
    assert Outbox.from_dict(outbox.to_dict()) == outbox


def test_pruning_keeps_unsent_entries_and_threads() -> None:
    outbox = Outbox()
    for index in range(5):
        outbox = outbox.with_enqueued(_entry(f"e{index}", fingerprint=f"f{index}")).with_sent(f"e{index}", f"{index}.0")
    outbox = outbox.with_enqueued(_entry("pending"))
    pruned = outbox.pruned(keep_done=2)
    assert [e.id for e in pruned.entries] == ["e3", "e4", "pending"]
    assert len(pruned.threads) == 5
