"""The daemon's evaluation loop with fakes at its seams: who alerts, when, and what survives a restart."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.adapters.k8s.watcher import Changes
from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules
from auditor.core.alerting.outbox import Delivery, EntryKind, EntryState, Outbox
from auditor.core.audit import run_static_audit
from auditor.core.decode import Decoded, build_snapshot, decode_object
from auditor.core.incremental import Change, ObjectKey
from auditor.core.model import Finding, Method, Status
from auditor.core.posture import Posture
from auditor.core.snapshot import ReadProblem, Snapshot
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.ports import CorruptState
from testrigs.fakes import (
    FakeElector,
    FakeSnapshots,
    MemoryStateStore,
    MustNotBeCalled,
    RecordingNotifier,
    RecordingSink,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules([str(ROOT / "rules" / "retail-store.yaml")])
VALUES = {("default/catalog", "x-auth-token"): "internal-retail-token"}


def _snapshot(example: str) -> Snapshot:
    return read_manifests([str(ROOT / "examples" / example)], io.StringIO()).snapshot


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


def _daemon(
    snapshots: FakeSnapshots,
    state: MemoryStateStore,
    notifier: RecordingNotifier,
    *,
    leading: bool = True,
    posture: Posture = RULES,
) -> Daemon:
    return Daemon(
        config=DaemonConfig(identity="test"),
        snapshots=snapshots,
        posture=posture,
        header_values=VALUES,
        elector=FakeElector(leading=leading),
        state=state,
        notifier=notifier,
        sinks=[RecordingSink()],
        clock=Clock(),
    )


def test_drift_alerts_once_and_a_restart_does_not_repeat_it() -> None:
    snapshots, state, notifier = FakeSnapshots(_snapshot("retail-store")), MemoryStateStore(), RecordingNotifier()
    daemon = _daemon(snapshots, state, notifier)
    daemon.leader_tick()
    daemon.static_audit()
    daemon.drain()
    assert notifier.sent == []
    snapshots.replace(_snapshot("retail-store-drifted"))
    daemon.static_audit()
    daemon.drain()
    assert len(notifier.sent) == 5  # the five planted drifts, one message each
    restarted = _daemon(snapshots, state, notifier)
    restarted.leader_tick()
    restarted.static_audit()
    restarted.drain()
    assert len(notifier.sent) == 5
    snapshots.replace(_snapshot("retail-store"))
    restarted.static_audit()
    restarted.drain()
    resolved = [text for text in notifier.sent if text.startswith("reply: Resolved")]
    assert len(resolved) == 5


def test_a_standby_never_audits_or_alerts() -> None:
    daemon = _daemon(
        FakeSnapshots(_snapshot("retail-store-drifted")), MemoryStateStore(), RecordingNotifier(), leading=False
    )
    daemon.leader_tick()
    daemon.static_audit()
    daemon.drain()
    daemon.probe_audit()
    daemon.drain()
    assert not daemon.leading


def test_probe_failures_need_two_cycles_and_inconclusive_never_resolves() -> None:
    snapshots, state, notifier = FakeSnapshots(_snapshot("retail-store")), MemoryStateStore(), RecordingNotifier()
    outcomes = iter([Status.FAIL, Status.FAIL, Status.INCONCLUSIVE, Status.PASS])

    def cycle(snapshot: Snapshot, posture: Posture, values: object, static: tuple[Finding, ...]) -> tuple[Finding, ...]:
        meta = next(f.check for f in static if f.check.id == "strict-mtls.peer-authentication")
        return (Finding(meta, "default/orders", next(outcomes), "probe", method=Method.PROBE),)

    daemon = Daemon(
        config=DaemonConfig(identity="test"),
        snapshots=snapshots,
        posture=RULES,
        header_values=VALUES,
        elector=FakeElector(),
        state=state,
        notifier=notifier,
        probe_cycle=cycle,
        clock=Clock(),
    )
    daemon.leader_tick()
    daemon.probe_audit()
    daemon.drain()
    assert notifier.sent == []
    daemon.probe_audit()
    daemon.drain()
    assert [s.split(":")[0] for s in notifier.sent] == ["post"]
    daemon.probe_audit()  # inconclusive: reported once in the thread, nothing resolved
    daemon.drain()
    assert not any("Resolved" in s for s in notifier.sent)
    daemon.probe_audit()
    daemon.drain()
    assert any("Resolved" in s for s in notifier.sent)


def test_new_rules_take_effect_at_the_next_audit() -> None:
    snapshots, state, notifier = (
        FakeSnapshots(_snapshot("retail-store-drifted")),
        MemoryStateStore(),
        RecordingNotifier(),
    )
    narrow = load_rules([str(ROOT / "rules" / "retail-store.yaml")]).model_copy(update={"scope": (), "protected": ()})
    daemon = _daemon(snapshots, state, notifier, posture=narrow)
    daemon.leader_tick()
    daemon.static_audit()
    daemon.drain()
    assert notifier.sent == []  # nothing in scope, nothing alerted
    daemon.replace_posture(RULES, VALUES)
    daemon.static_audit()
    daemon.drain()
    assert len(notifier.sent) == 5


def test_must_not_be_called_names_the_misuse() -> None:
    with pytest.raises(AssertionError, match=r"slack\.deliver must not be used here"):
        MustNotBeCalled("slack").deliver()


@pytest.mark.parametrize(
    "stored",
    [
        CorruptState("state.json.gz is not gzip: Not a gzipped file"),
        {"drift": {"version": 99, "alerts": []}},  # an unknown state version
        {"drift": [1, 2, 3]},  # a wrong shape
        {"drift": {"version": 1, "alerts": [{"fingerprint": "x"}]}},  # fields missing
        {"outbox": {"version": 1, "entries": [{"id": "a", "kind": "telegram"}]}},
    ],
)
def test_a_corrupt_state_is_set_aside_said_loudly_and_every_drift_alerted_again(stored: object) -> None:
    """Issue #10.3: the leader sets the bad state aside, starts empty, says so (readiness, metric,
    Slack notice) and the next audit opens an alert for every drift it finds."""
    snapshots = FakeSnapshots(_snapshot("retail-store-drifted"))
    state, notifier = MemoryStateStore(raw=stored), RecordingNotifier()
    daemon = _daemon(snapshots, state, notifier)
    daemon.leader_tick()
    assert daemon.leading
    [(reason, _)] = state.set_aside_as
    ready, says = daemon.readiness()
    assert ready
    assert says.startswith("leader; state was reset at ")
    assert "the bad copy is in ConfigMap state-corrupt-1" in says
    assert daemon.metrics.state_resets._value.get() == 1
    daemon.static_audit()
    daemon.drain()
    assert notifier.sent[0].startswith("post: :warning: mesh-auditor lost its alert state")
    assert reason.split(":")[0] in notifier.sent[0]
    assert all(s.startswith("post: Drift: ") for s in notifier.sent[1:])
    assert len(notifier.sent) == 1 + 5  # the notice, then the five planted drifts


def test_a_state_that_cannot_be_read_gives_the_lease_up() -> None:
    """Never hold the Lease while unable to work: a standby may be able to."""
    elector = FakeElector()
    state = MemoryStateStore(raw=ConnectionError("API server unreachable"))
    daemon = Daemon(
        config=DaemonConfig(identity="test"),
        snapshots=FakeSnapshots(_snapshot("retail-store")),
        posture=RULES,
        header_values=VALUES,
        elector=elector,
        state=state,
        notifier=RecordingNotifier(),
        clock=Clock(),
    )
    daemon.leader_tick()
    assert not daemon.leading
    assert elector.released == 1
    assert daemon.readiness() == (
        True,
        "standby; not leading: cannot load the state: ConnectionError: API server unreachable",
    )


def test_a_permanently_refused_update_blocks_no_other_alert() -> None:
    """Issue #10.2: every update is refused for good; posts and replies still go out, in order."""
    snapshots, state = FakeSnapshots(_snapshot("retail-store")), MemoryStateStore()
    notifier = RecordingNotifier(failures={EntryKind.UPDATE: Delivery("drop", error="cant_update_message")})
    daemon = _daemon(snapshots, state, notifier)
    daemon.leader_tick()
    snapshots.replace(_snapshot("retail-store-drifted"))
    daemon.static_audit()
    daemon.drain()
    snapshots.replace(_snapshot("retail-store"))
    daemon.static_audit()
    daemon.drain()
    snapshots.replace(_snapshot("retail-store-drifted"))
    daemon.static_audit()
    daemon.drain()
    kinds = [s.split(":")[0] for s in notifier.sent]
    assert kinds == ["post"] * 5 + ["reply"] * 5 + ["post"] * 5
    assert notifier.attempts == 20  # the 5 refused updates were tried once each, then dropped
    dropped = [e for e in Outbox_from(state).entries if e.state is EntryState.DROPPED]
    assert {e.error for e in dropped} == {"cant_update_message"}


def test_each_opening_is_its_own_incident_with_its_own_thread() -> None:
    """Issue #18.1: open, resolve, open, resolve: two posts, each resolved in its own thread."""
    snapshots, state, notifier = FakeSnapshots(_snapshot("retail-store")), MemoryStateStore(), RecordingNotifier()
    daemon = _daemon(snapshots, state, notifier)
    daemon.leader_tick()
    for example in ("retail-store-drifted", "retail-store", "retail-store-drifted", "retail-store"):
        snapshots.replace(_snapshot(example))
        daemon.static_audit()
        daemon.drain()
    outbox = Outbox_from(state)
    posts = [e for e in outbox.entries if e.kind is EntryKind.POST]
    assert len(posts) == 10
    assert len({outbox.threads[e.fingerprint] for e in posts}) == 10  # ten threads
    for post in posts:
        replies = [e for e in outbox.entries if e.kind is EntryKind.REPLY and e.fingerprint == post.fingerprint]
        assert [e.payload["text"].split(":")[0] for e in replies] == ["Resolved"]
    assert daemon.metrics.alerts_open._value.get() == 0


def test_renewal_never_waits_for_the_evaluation_lock() -> None:
    """Issue #18.2: a job holding the lock (a slow state write) does not delay the Lease renewal."""
    elector = FakeElector()
    daemon = _daemon(FakeSnapshots(_snapshot("retail-store")), MemoryStateStore(), RecordingNotifier())
    daemon._elector = elector
    daemon.leader_tick()
    renewed = threading.Event()

    def renew() -> None:
        daemon.leader_tick()
        renewed.set()

    with daemon._lock:
        worker = threading.Thread(target=renew)
        worker.start()
        assert renewed.wait(2.0)
    worker.join()
    assert daemon.leading


def Outbox_from(state: MemoryStateStore) -> Outbox:  # noqa: N802 - reads like the constructor it wraps
    return Outbox.from_dict(state.document["outbox"])


def test_alerts_whose_target_is_deleted_are_closed_with_the_reason_in_their_thread() -> None:
    """Issue #18.4: the drifting Services are deleted: each alert is closed, said so in its thread,
    and no longer counted as open."""
    drifted = _snapshot("retail-store-drifted")
    snapshots, state, notifier = FakeSnapshots(drifted), MemoryStateStore(), RecordingNotifier()
    daemon = _daemon(snapshots, state, notifier)
    daemon.leader_tick()
    daemon.static_audit()
    daemon.drain()
    assert daemon.metrics.alerts_open._value.get() == 5
    targets = {a["target"] for a in state.document["drift"]["alerts"] if a["phase"] == "firing"}
    gone = dataclasses.replace(
        drifted, services=tuple(s for s in drifted.services if f"{s.meta.namespace}/{s.meta.name}" not in targets)
    )
    snapshots.replace(gone)
    daemon.static_audit()
    daemon.drain()
    replies = [s for s in notifier.sent if s.startswith("reply:")]
    assert len(replies) == 5
    assert all(s.startswith("reply: Closed: ") for s in replies)
    outbox = Outbox_from(state)
    closing = [e.payload["blocks"][0]["text"]["text"] for e in outbox.entries if e.kind is EntryKind.REPLY]
    assert all("no longer" in text for text in closing)
    assert daemon.metrics.alerts_open._value.get() == 0


def _ops_daemon(snapshots: FakeSnapshots, elector: FakeElector, notifier: RecordingNotifier) -> Daemon:
    return Daemon(
        config=DaemonConfig(identity="test", cannot_audit_after_s=0.0, slack_pace_s=0.0),
        snapshots=snapshots,
        posture=RULES,
        header_values=VALUES,
        elector=elector,
        state=MemoryStateStore(),
        notifier=notifier,
        clock=Clock(),
    )


def test_an_api_outage_sends_one_cannot_audit_alert_and_its_recovery_in_its_thread() -> None:
    """Issue #18.8: the leader loses the API (the Lease cannot be renewed): after the threshold one
    operational alert, once; when the API is back, its recovery in the same thread."""
    elector, notifier = FakeElector(), RecordingNotifier()
    daemon = _ops_daemon(FakeSnapshots(_snapshot("retail-store")), elector, notifier)
    daemon.leader_tick()
    assert daemon.leading
    elector.leading, elector.last_error = False, "the Lease cannot be read or written: connection refused"
    for _ in range(3):
        daemon.leader_tick()
        daemon.drain()
    assert [s.split(" (")[0] for s in notifier.sent] == ["post: :rotating_light: mesh-auditor cannot audit"]
    assert "connection refused" in notifier.sent[0]
    elector.leading, elector.last_error = True, None
    daemon.leader_tick()
    daemon.drain()
    daemon.drain()
    assert [s.split(" (")[0] for s in notifier.sent] == [
        "post: :rotating_light: mesh-auditor cannot audit",
        "reply: :white_check_mark: mesh-auditor is auditing again",
    ]


def test_no_audit_runs_from_a_snapshot_that_is_not_in_sync() -> None:
    problem = ReadProblem("PeerAuthentication", "security.istio.io/v1 peerauthentications", "not in sync: 503")
    drifted = _snapshot("retail-store-drifted")
    snapshots = FakeSnapshots(dataclasses.replace(drifted, problems=(problem,)))
    notifier = RecordingNotifier()
    daemon = _ops_daemon(snapshots, FakeElector(), notifier)
    daemon.leader_tick()
    daemon.static_audit()
    assert daemon.metrics.cycles_skipped.labels("static-not-in-sync")._value.get() == 1
    daemon.drain()
    assert [s.split(" (")[0] for s in notifier.sent] == ["post: :rotating_light: mesh-auditor cannot audit"]
    snapshots.replace(drifted)
    daemon.static_audit()
    daemon.drain()
    assert notifier.sent[1].startswith("reply: :white_check_mark: mesh-auditor is auditing again")
    assert len([s for s in notifier.sent if s.startswith("post: Drift")]) == 5


def test_no_cannot_verify_note_goes_to_a_resolved_alert() -> None:
    """Issue #18.8: an ERROR after the alert resolved is not posted into its closed thread."""
    snapshots, state, notifier = FakeSnapshots(_snapshot("retail-store")), MemoryStateStore(), RecordingNotifier()
    outcomes = iter([Status.FAIL, Status.FAIL, Status.PASS, Status.ERROR, Status.FAIL, Status.FAIL, Status.ERROR])

    def cycle(snapshot: Snapshot, posture: Posture, values: object, static: tuple[Finding, ...]) -> tuple[Finding, ...]:
        meta = next(f.check for f in static if f.check.id == "strict-mtls.peer-authentication")
        return (Finding(meta, "default/orders", next(outcomes), "probe", method=Method.PROBE),)

    daemon = Daemon(
        config=DaemonConfig(identity="test"),
        snapshots=snapshots,
        posture=RULES,
        header_values=VALUES,
        elector=FakeElector(),
        state=state,
        notifier=notifier,
        probe_cycle=cycle,
        clock=Clock(),
    )
    daemon.leader_tick()
    for _ in range(7):
        daemon.probe_audit()
        daemon.drain()
    assert [s.split(" on ")[0] for s in notifier.sent] == [
        "post: Drift: strict-mtls",
        "reply: Resolved: strict-mtls",
        "update: Resolved: strict-mtls",
        "post: Drift: strict-mtls",  # the second incident: its own message
        "reply: Cannot verify: strict-mtls",  # into the open second incident's thread only
    ]
    outbox = Outbox_from(state)
    [note] = [e for e in outbox.entries if e.payload.get("text", "").startswith("Cannot verify")]
    assert note.fingerprint.endswith("#2")


def test_a_change_during_an_audit_gets_its_own_audit_right_after() -> None:
    """Issue #18.6: an edit made while an audit runs is audited right after it, not at the next full audit."""
    snapshots, state, notifier = FakeSnapshots(_snapshot("retail-store")), MemoryStateStore(), RecordingNotifier()
    audits: list[int] = []

    def during_audit() -> tuple[Finding, ...]:
        audits.append(len(audits))
        if len(audits) == 1:
            snapshots.current = _snapshot("retail-store-drifted")
            daemon.snapshot_changed()  # the watcher saw an edit while this audit ran
        return ()

    daemon = Daemon(
        config=DaemonConfig(identity="test", static_debounce_s=60.0, leader_tick_s=60.0, delivery_tick_s=0.05),
        snapshots=snapshots,
        posture=RULES,
        header_values=VALUES,
        elector=FakeElector(),
        state=state,
        notifier=notifier,
        extra_findings=during_audit,
    )
    snapshots.on_change = daemon.snapshot_changed
    daemon.start()
    try:
        deadline = time.monotonic() + 10
        while len(notifier.sent) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.stop()
    assert len(audits) >= 2  # the debounce is 60 s: only "audit again right after" explains it
    assert len([s for s in notifier.sent if s.startswith("post: Drift")]) == 5


def test_becoming_leader_tells_the_sinks_that_cache_what_a_leader_wrote() -> None:
    class CachingSink(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.reloads = 0

        def became_leader(self) -> None:
            self.reloads += 1

    sink, elector = CachingSink(), FakeElector(leading=True)
    daemon = Daemon(
        config=DaemonConfig(identity="test"),
        snapshots=FakeSnapshots(_snapshot("retail-store")),
        posture=RULES,
        header_values=VALUES,
        elector=elector,
        state=MemoryStateStore(),
        notifier=RecordingNotifier(),
        sinks=[sink],
        clock=Clock(),
    )
    daemon.leader_tick()
    daemon.leader_tick()  # still leading: nothing to reload
    elector.leading = False
    daemon.leader_tick()
    elector.leading = True
    daemon.leader_tick()  # leading again: another replica may have written meanwhile
    assert sink.reloads == 2


def test_auditing_again_is_said_only_once_the_snapshot_is_in_sync_again() -> None:
    """The API returns: the Lease comes back before the watches relisted. "Auditing again" waits
    for the snapshot, and no second "cannot audit" alert follows (seen end to end: #18.8)."""
    problem = ReadProblem("PeerAuthentication", "security.istio.io/v1 peerauthentications", "not in sync: refused")
    good = _snapshot("retail-store")
    snapshots, elector, notifier = FakeSnapshots(good), FakeElector(), RecordingNotifier()
    daemon = _ops_daemon(snapshots, elector, notifier)
    daemon.leader_tick()
    elector.leading, elector.last_error = False, "the Lease cannot be read or written: connection refused"
    snapshots.replace(dataclasses.replace(good, problems=(problem,)))
    daemon.leader_tick()
    daemon.drain()
    elector.leading, elector.last_error = True, None  # the Lease is back, the watches not yet
    for _ in range(3):
        daemon.leader_tick()
        daemon.static_audit()
        daemon.drain()
    assert [s.split(" (")[0] for s in notifier.sent] == ["post: :rotating_light: mesh-auditor cannot audit"]
    snapshots.replace(good)
    daemon.leader_tick()
    daemon.drain()
    assert [s.split(" (")[0] for s in notifier.sent] == [
        "post: :rotating_light: mesh-auditor cannot audit",
        "reply: :white_check_mark: mesh-auditor is auditing again",
    ]


def test_a_lease_renewal_that_does_not_answer_is_a_trouble_alerted_from_its_own_job() -> None:
    """A hung API server: the renewal call blocks (for the client's timeouts); the alert does not
    wait for it."""
    answer = threading.Event()

    @dataclasses.dataclass
    class HungElector(FakeElector):
        def try_acquire_or_renew(self) -> bool:
            answer.wait(5)
            return self.leading

    elector, notifier = HungElector(duration_s=0.1), RecordingNotifier()
    daemon = _ops_daemon(FakeSnapshots(_snapshot("retail-store")), elector, notifier)
    answer.set()
    daemon.leader_tick()
    answer.clear()
    renewal = threading.Thread(target=daemon.leader_tick)
    renewal.start()
    try:
        time.sleep(0.2)
        daemon.watch_operations()  # the first call notes the trouble, the next one alerts
        daemon.watch_operations()
        assert [s.split(" (")[0] for s in notifier.sent] == ["post: :rotating_light: mesh-auditor cannot audit"]
        assert "has not answered the Lease renewal" in notifier.sent[0]
    finally:
        answer.set()
        renewal.join()
    daemon.watch_operations()
    assert notifier.sent[1].startswith("reply: :white_check_mark: mesh-auditor is auditing again")


class _TellingSnapshots(FakeSnapshots):
    """A snapshot source that also tells its object changes (as ``SnapshotWatcher.changes_since``)."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        super().__init__()
        self.objects: dict[ObjectKey, tuple[Decoded, ...]] = {}
        self.log: list[Change] = []
        self.asked: list[int] = []
        for document in documents:
            self.put(document)
        self.log.clear()

    def put(self, document: dict[str, Any]) -> None:
        meta = document["metadata"]
        key = (str(document["kind"]), str(meta.get("namespace") or ""), str(meta["name"]))
        after = decode_object(document, source="test")
        self.log.append(Change(key, self.objects.get(key, ()), after))
        self.objects[key] = after
        self.current = build_snapshot([o for g in self.objects.values() for o in g])

    def changes_since(self, cursor: int) -> Changes:
        self.asked.append(cursor)
        if cursor <= 0:
            return Changes(len(self.log), None, dict(self.objects), ())
        return Changes(len(self.log), tuple(self.log[cursor:]), None, ())


def test_the_daemon_re_evaluates_only_what_changed_and_matches_a_full_audit() -> None:
    """#16: with a source that tells changes, audits after the first apply them; the findings are
    those of a full audit of the same snapshot, and the periodic audit starts afresh."""
    documents = [
        d
        for p in sorted((ROOT / "examples" / "retail-store").rglob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]
    snapshots = _TellingSnapshots(documents)
    sink = RecordingSink()
    daemon = Daemon(
        config=DaemonConfig(identity="test"),
        snapshots=snapshots,
        posture=RULES,
        header_values=VALUES,
        elector=FakeElector(leading=True),
        state=MemoryStateStore(),
        notifier=RecordingNotifier(),
        sinks=[sink],
        clock=Clock(),
    )
    daemon.leader_tick()
    daemon.static_audit()
    orders = copy.deepcopy(
        next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "orders")
    )
    orders["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"] = "none"  # opts out of ambient
    snapshots.put(orders)
    daemon.static_audit()
    daemon.full_static_audit()
    assert snapshots.asked == [0, len(snapshots.log) - 1, 0]
    first, changed, full = (run.findings for run in sink.runs)
    assert changed == run_static_audit(snapshots.snapshot(), RULES, VALUES)
    assert full == changed
    assert changed != first
    assert any(f.target == "default/orders" and f.status is Status.FAIL for f in changed)
