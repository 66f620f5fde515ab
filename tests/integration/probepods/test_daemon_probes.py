"""Two daemon replicas with probe cycles, as the auditor's ServiceAccount, against the real API
server, the stand-in kubelet and Envoys on loopback: exactly one replica probes and alerts; a
traffic drift (plaintext answered despite STRICT) needs two probe cycles to open one alert;
killing the leader hands probing over without a second alert."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.state import ConfigMapStateStore
from auditor.adapters.k8s.watcher import SnapshotWatcher, WatchTiming
from auditor.adapters.rules.loader import load_rules
from auditor.adapters.slack.notifier import SlackNotifier, build_web_client
from auditor.app.daemon import _probe_cycle
from auditor.daemon.metrics import DaemonMetrics
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.settings import ProbeSettings, Settings
from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.podexecutor import PodExecutor
from tests.cases import ROOT
from tests.integration.live import AppliedCase
from tests.integration.probepods.conftest import Mesh
from tests.slack_server import SlackState, slack_server

pytestmark = [pytest.mark.kube, pytest.mark.envoy]
EXAMPLE = ROOT / "examples" / "retail-store"


@pytest.fixture(scope="module")
def retail(control_role: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    documents = [d for p in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    manifest = tmp_path_factory.mktemp("retail") / "retail-store.yaml"
    manifest.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    with AppliedCase(control_role, manifest, tmp_path_factory.mktemp("applied")):
        yield control_role


def _eventually(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail("the daemons never got there")


def _probe_outcomes(daemon: Daemon) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in daemon.metrics.probe_outcomes.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def _probe_cycles(daemon: Daemon) -> int:
    for metric in daemon.metrics.cycle_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("kind") == "probe":
                return int(sample.value)
    return 0


@contextmanager
def replica(auditor_kubeconfig: Path, identity: str, settings: Settings, slack_base: str) -> Iterator[Daemon]:
    posture = load_rules([settings.daemon.rules[0]])
    values = {("default/catalog", "x-auth-token"): "internal-retail-token"}
    with KubeAPI(auditor_kubeconfig, Path("kubectl")).new_client() as api:
        holder: list[Daemon] = []
        metrics = DaemonMetrics()
        watcher = SnapshotWatcher(
            api, timing=WatchTiming(resync=60), on_change=lambda: holder[0].snapshot_changed() if holder else None
        )
        daemon = Daemon(
            config=DaemonConfig(
                identity=identity, leader_tick_s=0.5, static_debounce_s=0.3, probe_every_s=4, probe_jitter_s=0
            ),
            snapshots=watcher,
            posture=posture,
            header_values=values,
            elector=LeaseElector(api, "mesh-auditor", identity, duration_s=3),  # RBAC names this one Lease
            state=ConfigMapStateStore(api, "mesh-auditor"),
            notifier=SlackNotifier(build_web_client("xoxb-test", base_url=slack_base + "api/"), "C0MESH"),
            probe_cycle=_probe_cycle(settings, api, threading.Event(), metrics),
            metrics=metrics,
        )
        holder.append(daemon)
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


def test_one_replica_probes_and_alerts_and_hands_over(
    retail: KubeAPI, auditor_kubeconfig: Path, executor: PodExecutor, mesh: Mesh, tmp_path: Path
) -> None:
    document = yaml.safe_load((ROOT / "rules" / "retail-store.yaml").read_text())
    catalog = document["spec"]["protectedServices"][0]
    catalog["probe"]["path"] = "/ok"
    catalog["control"]["enabled"] = True
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(document), encoding="utf-8")
    overrides = {
        "outside:default/catalog": mesh.base(mesh.plaintext_open),  # the drift: STRICT configured, plaintext answered
        "intruder:default/catalog": mesh.base(mesh.l7_deny_all),
        "control:default/catalog": mesh.base(mesh.waypoint),
    }
    settings = Settings(
        probes=ProbeSettings(url_overrides=overrides, control_enabled=True, deadline_s=60, request_timeout_s=2),
    )
    settings = settings.model_copy(update={"daemon": settings.daemon.model_copy(update={"rules": [str(rules)]})})
    with (
        slack_server() as (base, state),
        replica(auditor_kubeconfig, "probe-a", settings, base) as a,
        replica(auditor_kubeconfig, "probe-b", settings, base) as b,
    ):
        _eventually(lambda: _probe_cycles(a) + _probe_cycles(b) >= 2)
        leader, standby = (a, b) if a.leading else (b, a)
        assert _probe_cycles(standby) == 0  # the standby never probes
        # Every result the leader's probes brought back is counted by what it observed: the
        # intruder's request refused by the waypoint, the outsider's plaintext answered (the drift).
        outcomes = _probe_outcomes(leader)
        assert outcomes.get("l7-denied", 0) >= 1, outcomes
        assert outcomes.get("allowed", 0) >= 1, outcomes
        assert _probe_outcomes(standby) == {}
        _eventually(lambda: len(_alerts(state)) == 1)
        assert _alerts(state) == ["Drift: strict-mtls on default/catalog"]
        alert = json.dumps(state.top_level()[0]["blocks"])
        assert "real traffic (probe)" in alert
        assert "internal-retail-token" not in alert
        leader._scheduler.shutdown(wait=False)
        _eventually(lambda: standby.leading and _probe_cycles(standby) >= 1)
        time.sleep(1.0)
        assert len(_alerts(state)) == 1  # the new leader knows the alert from the shared state


def _alerts(state: SlackState) -> list[str]:
    return [m["text"] for m in state.top_level()]
