"""500 drifts at once through the running daemon to the Slack stand-in at Slack's rate (issue #18.7).

One digest listing all of them, individual threads for only the first ``digest_threads``, sends
paced at 1 message/s (the stand-in answers 429 beyond it, as Slack does); meanwhile the Lease is
renewed, audits run and ``alerts_open`` is right at once. Resolving them all answers in each
thread and once, as one list, in the digest's thread. The figure: delivery time for 500 drifts.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules
from auditor.adapters.slack.notifier import SlackNotifier, build_web_client
from auditor.core.checks.catalog import CAPTURED
from auditor.core.model import Finding, Status
from auditor.daemon.service import Daemon, DaemonConfig
from testrigs.fakes import FakeSnapshots, MemoryStateStore
from tests.cases import ROOT
from tests.slack_server import SlackState, slack_server

DRIFT = f"Drift: {CAPTURED.property.value} on ns-{{:03d}}/svc"
RESOLVED = f"Resolved: {CAPTURED.property.value} on ns-{{:03d}}/svc"


@dataclass
class CountingElector:
    renewals: int = 0
    duration_s: float = 15.0
    last_error: str | None = None

    def try_acquire_or_renew(self) -> bool:
        self.renewals += 1
        return True

    def release(self) -> None:
        return


@pytest.fixture
def slack() -> Iterator[tuple[str, SlackState]]:
    with slack_server() as served:
        yield served


def _eventually(predicate: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail("never got there")


def test_500_drifts_one_digest_paced_within_slacks_rate(slack: tuple[str, SlackState]) -> None:
    base, state = slack
    state.rate_limit("chat.postMessage", 1.0)  # Slack: about one message per second per channel
    status = {"now": Status.PASS}

    def drifts() -> tuple[Finding, ...]:
        return tuple(Finding(CAPTURED, f"ns-{i:03d}/svc", status["now"], "not captured") for i in range(500))

    snapshot = read_manifests([str(ROOT / "examples" / "retail-store")], io.StringIO()).snapshot
    snapshots, elector = FakeSnapshots(snapshot), CountingElector()
    daemon = Daemon(
        config=DaemonConfig(
            identity="load", static_debounce_s=0.1, leader_tick_s=0.2, slack_pace_s=1.0, digest_threads=5
        ),
        snapshots=snapshots,
        posture=load_rules([str(ROOT / "rules" / "retail-store.yaml")]),
        header_values={("default/catalog", "x-auth-token"): "internal-retail-token"},
        elector=elector,
        state=MemoryStateStore(),
        notifier=SlackNotifier(build_web_client("xoxb-test", base_url=base + "api/"), "C0MESH"),
        extra_findings=drifts,
    )
    snapshots.on_change = daemon.snapshot_changed
    daemon.start()
    try:
        _eventually(lambda: daemon.leading, 10)
        _eventually(lambda: daemon.metrics.last_success.labels("static")._value.get() > 0, 10)
        status["now"] = Status.FAIL
        renewals = elector.renewals
        snapshots.replace(snapshot)
        _eventually(lambda: daemon.metrics.alerts_open._value.get() == 500, 5)  # at once, not after delivery
        took = _eventually(lambda: len(state.top_level()) == 6, 60)
        print(f"\nFIGURE delivery of 500 drifts (digest + 5 threads at 1 message/s): {took:.2f} s")
        assert elector.renewals - renewals >= int(took / 0.2) - 3  # renewal never waited on delivery
        [digest, *alerts] = state.top_level()
        assert digest["text"] == ":rotating_light: 500 drift alerts opened"
        assert [m["text"] for m in alerts] == [DRIFT.format(i) for i in range(5)]
        assert state.rate_limited == 0  # paced within Slack's rate: never a 429
        status["now"] = Status.PASS
        snapshots.replace(snapshot)
        _eventually(lambda: daemon.metrics.alerts_open._value.get() == 0, 5)
        _eventually(lambda: all(len(state.replies(m["ts"])) == 1 for m in state.top_level()), 60)
        time.sleep(1.5)
        assert state.transcript() == [
            (":rotating_light: 500 drift alerts opened", ["495 of these alerts changed"]),
            *[(DRIFT.format(i), [RESOLVED.format(i)]) for i in range(5)],
        ]
        assert state.rate_limited == 0
    finally:
        daemon.stop()
