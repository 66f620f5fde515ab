"""The outbox: idempotent enqueueing, order, threads, and its serialised form."""

from __future__ import annotations

from auditor.core.alerting.outbox import Entry, EntryKind, EntryState, Outbox


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


def test_a_stuck_entry_holds_back_only_its_own_incident() -> None:
    outbox = (
        Outbox()
        .with_enqueued(_entry("a-post", fingerprint="a#1"))
        .with_enqueued(_entry("a-reply", EntryKind.REPLY, fingerprint="a#1"))
        .with_enqueued(_entry("b-post", fingerprint="b#1"))
    )
    outbox = outbox.with_in_flight("a-post").with_retry("a-post", 100.0, "fatal_error", reached=True)
    assert [e.id for e in outbox.due(50.0)] == ["b-post"]
    assert [e.id for e in outbox.due(100.0)] == ["a-post", "b-post"]


def test_a_full_outbox_drops_updates_first_then_replies_then_posts_and_says_why() -> None:
    outbox = Outbox()
    for index, kind in enumerate([EntryKind.POST, EntryKind.REPLY, EntryKind.UPDATE, EntryKind.UPDATE]):
        outbox = outbox.with_enqueued(_entry(f"e{index}", kind, fingerprint=f"f{index}"), max_unsent=3)
    assert [(e.id, e.state) for e in outbox.entries if e.state is EntryState.DROPPED] == [("e2", EntryState.DROPPED)]
    outbox = outbox.with_enqueued(_entry("e4", fingerprint="f4"), max_unsent=3)
    outbox = outbox.with_enqueued(_entry("e5", fingerprint="f5"), max_unsent=3)
    dropped = {e.id: (e.error, dict(e.payload)) for e in outbox.entries if e.state is EntryState.DROPPED}
    assert dropped == {"e2": ("outbox-full", {}), "e3": ("outbox-full", {}), "e1": ("outbox-full", {})}
    assert len(outbox.unsent) == 3


def test_version_1_threads_belong_to_the_first_incident() -> None:
    stored = {"version": 1, "threads": {"c|t": "1.0"}, "entries": []}
    assert Outbox.from_dict(stored).threads == {"c|t#1": "1.0"}
