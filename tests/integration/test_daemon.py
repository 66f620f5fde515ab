"""The daemon end to end: real API server, watch, Lease, ConfigMap state, Slack over HTTP.

A drift injected in the API server opens exactly one Slack alert; the fix resolves it in the
same thread; a restart in between sends nothing twice; two replicas: one alerts, and killing it
hands over. Timings are measured and printed (the closing note's figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.state import ConfigMapStateStore
from auditor.adapters.k8s.watcher import SnapshotWatcher, WatchTiming
from auditor.adapters.rules.loader import load_rules
from auditor.adapters.slack.notifier import SlackNotifier, build_web_client
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.daemon.sinks import DirectorySink
from auditor.devtools.controlplane import KubeAPI
from tests.cases import ROOT, Case, materialize
from tests.integration.live import AppliedCase
from tests.slack_server import SlackState, slack_server

pytestmark = pytest.mark.kube
RULES = ROOT / "rules" / "retail-store.yaml"
EXAMPLE = ROOT / "examples" / "retail-store"
PERMISSIVE_ORDERS = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: orders-debug, namespace: default}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: orders}}
  mtls: {mode: PERMISSIVE}
"""


def _eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail("the daemon never got there")


@pytest.fixture
def retail(kube_api: KubeAPI, tmp_path: Path) -> Iterator[KubeAPI]:
    case = Case(name="retail", directory=EXAMPLE, description="", base=EXAMPLE, remove=(), rules=RULES, env={})
    with AppliedCase(kube_api, materialize(case, tmp_path), tmp_path):
        yield kube_api


@pytest.fixture
def slack() -> Iterator[tuple[str, SlackState]]:
    with slack_server() as served:
        yield served


@contextmanager
def running_daemon(
    kube: KubeAPI, namespace: str, identity: str, slack_base: str, reports: Path, lease_s: int = 2
) -> Iterator[Daemon]:
    posture = load_rules([str(RULES)])
    values = {("default/catalog", "x-auth-token"): "internal-retail-token"}
    with kube.new_client() as api:
        holder: list[Daemon] = []
        watcher = SnapshotWatcher(
            api, timing=WatchTiming(resync=60), on_change=lambda: holder[0].snapshot_changed() if holder else None
        )
        daemon = Daemon(
            config=DaemonConfig(identity=identity, static_debounce_s=0.3, leader_tick_s=0.5, full_static_every_s=30),
            snapshots=watcher,
            posture=posture,
            header_values=values,
            elector=LeaseElector(api, namespace, identity, duration_s=lease_s),
            state=ConfigMapStateStore(api, namespace),
            notifier=SlackNotifier(build_web_client("xoxb-test", base_url=slack_base + "api/"), "C0MESH"),
            sinks=[DirectorySink(reports)],
        )
        holder.append(daemon)
        daemon.start()
        try:
            assert watcher.wait_synced(20)
            yield daemon
        finally:
            daemon.stop()


def _alert_texts(state: SlackState) -> list[str]:
    return [m["text"] for m in state.top_level()]


def test_drift_opens_one_alert_restart_sends_nothing_twice_fix_resolves_in_thread(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    base, state = slack
    reports = tmp_path / "reports"
    with running_daemon(retail, kube_namespace, "replica-a", base, reports) as daemon:
        _eventually(lambda: daemon.leading and len(DirectorySink(reports).documents()) >= 1)
        assert state.messages == []  # the compliant example alerts nothing
        injected = time.monotonic()
        retail.apply_text(PERMISSIVE_ORDERS)
        latency = _eventually(lambda: len(state.top_level()) == 1)
        print(f"\nFIGURE drift-to-slack seconds: {time.monotonic() - injected:.2f} (poll {latency:.2f})")
        assert _alert_texts(state) == ["Drift: strict-mtls on default/orders"]
    # restart: a new process with the same state sends nothing again
    with running_daemon(retail, kube_namespace, "replica-a2", base, reports) as daemon:
        _eventually(lambda: daemon.leading)
        daemon.static_audit()
        assert len(state.messages) == 1
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
        [alert] = state.top_level()
        _eventually(
            lambda: [m["text"] for m in state.replies(alert["ts"])] == ["Resolved: strict-mtls on default/orders"]
        )
    assert len(state.top_level()) == 1
    statuses = [d["summary"]["by_target"]["default/orders"]["strict-mtls"] for d in DirectorySink(reports).documents()]
    assert "fail" in statuses
    assert statuses[-1] == "pass"


def test_two_replicas_one_alerts_and_killing_it_hands_over(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    base, state = slack
    with (
        running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "a") as a,
        running_daemon(retail, kube_namespace, "replica-b", base, tmp_path / "b") as b,
    ):
        _eventually(lambda: a.leading or b.leading)
        time.sleep(1.5)  # several election rounds
        assert [a.leading, b.leading].count(True) == 1
        leader, standby = (a, b) if a.leading else (b, a)
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 1)
        # kill the leader: its jobs stop, and it never releases the lease
        leader._scheduler.shutdown(wait=False)
        took = _eventually(lambda: standby.leading, timeout=15)
        print(f"\nFIGURE takeover seconds: {took:.2f}")
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
        [alert] = state.top_level()
        _eventually(lambda: any(m["text"].startswith("Resolved") for m in state.replies(alert["ts"])))
    assert len(state.top_level()) == 1  # the drift was announced once, by one replica
