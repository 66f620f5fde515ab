"""The daemon's evaluation loop with fakes at its seams: who alerts, when, and what survives a restart."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules
from auditor.core.model import Finding, Method, Status
from auditor.core.posture import Posture
from auditor.core.snapshot import Snapshot
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.testing import (
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
    assert notifier.sent == []
    snapshots.replace(_snapshot("retail-store-drifted"))
    daemon.static_audit()
    assert len(notifier.sent) == 5  # the five planted drifts, one message each
    restarted = _daemon(snapshots, state, notifier)
    restarted.leader_tick()
    restarted.static_audit()
    assert len(notifier.sent) == 5
    snapshots.replace(_snapshot("retail-store"))
    restarted.static_audit()
    resolved = [text for text in notifier.sent if text.startswith("reply: Resolved")]
    assert len(resolved) == 5


def test_a_standby_never_audits_or_alerts() -> None:
    daemon = _daemon(
        FakeSnapshots(_snapshot("retail-store-drifted")), MemoryStateStore(), RecordingNotifier(), leading=False
    )
    daemon.leader_tick()
    daemon.static_audit()
    daemon.probe_audit()
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
    assert notifier.sent == []
    daemon.probe_audit()
    assert [s.split(":")[0] for s in notifier.sent] == ["post"]
    daemon.probe_audit()  # inconclusive: reported once in the thread, nothing resolved
    assert not any("Resolved" in s for s in notifier.sent)
    daemon.probe_audit()
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
    assert notifier.sent == []  # nothing in scope, nothing alerted
    daemon.replace_posture(RULES, VALUES)
    daemon.static_audit()
    assert len(notifier.sent) == 5


def test_must_not_be_called_names_the_misuse() -> None:
    with pytest.raises(AssertionError, match=r"slack\.flush must not be used here"):
        MustNotBeCalled("slack").flush()


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
