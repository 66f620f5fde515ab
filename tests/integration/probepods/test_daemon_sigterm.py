"""``auditor daemon`` as a process, SIGTERM in the middle of a probe cycle (issue #18.5).

The daemon runs as the auditor's ServiceAccount with probes on; the stand-in kubelet runs its
probe pods; every probe target is a loopback socket that accepts connections and never answers,
with a 120 s request timeout, so a cycle would hold its pods for minutes. A second situation has
the pods Pending (no node matches their nodeSelector). SIGTERM while the pods exist: the process
exits 0 within ``shutdown_grace_s`` plus a small margin, it has deleted every probe pod of its
run (none is left once the kubelet confirms), the Lease is released (renewTime set past its
duration, what ``LeaseElector.release`` writes) and the state ConfigMap holds the outbox with the
alert the run had sent. The cycle must stop by itself (the daemon's "stopped" record says no job
was cut): a runner deaf to the stop signal is abandoned at the end of the grace (``os._exit``)
and leaves its pods, which this test catches. Exit times are printed as FIGURE lines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from auditor.adapters.k8s.state import ConfigMapStateStore
from auditor.adapters.probepods.podspec import MANAGED_BY, MANAGED_BY_VALUE
from auditor.settings import ProbeSettings
from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.podexecutor import PodExecutor
from tests.cases import ROOT
from tests.integration.live import AppliedCase
from tests.integration.test_daemon import PERMISSIVE_ORDERS
from tests.slack_server import slack_server

pytestmark = [pytest.mark.kube]
EXAMPLE = ROOT / "examples" / "retail-store"
NAMESPACE = "mesh-auditor"  # the auditor's RBAC names its Lease and state ConfigMap there
IDENTITY = "sigterm-probing"
GRACE_S = 5.0
MARGIN_S = 3.0  # interpreter shutdown, the last API calls, a loaded machine
PROBE_NAMESPACES = (ProbeSettings().in_mesh_namespace, ProbeSettings().outside_namespace, "default")


@pytest.fixture(scope="module")
def retail(deployed: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    documents = [d for p in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    manifest = tmp_path_factory.mktemp("retail") / "retail-store.yaml"
    manifest.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    with AppliedCase(deployed, manifest, tmp_path_factory.mktemp("applied")):
        yield deployed


@pytest.fixture
def silent_target() -> Iterator[str]:
    """A loopback socket whose backlog completes TCP handshakes that are never accepted or answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"never happened within {timeout:g} s: {what}")


def _probe_pods(kube: KubeAPI) -> list[dict[str, Any]]:
    """Every probe pod in every namespace a probe pod may run in, listed as the admin."""
    pods: list[dict[str, Any]] = []
    for namespace in PROBE_NAMESPACES:
        listed = kube.kubectl(
            "get", "pods", f"--namespace={namespace}", f"--selector={MANAGED_BY}={MANAGED_BY_VALUE}", "-o", "json"
        )
        pods.extend(json.loads(listed)["items"])
    return pods


def _in_phase(kube: KubeAPI, phase: str) -> list[dict[str, Any]]:
    return [p for p in _probe_pods(kube) if (p.get("status") or {}).get("phase") == phase]


def _lease(kube: KubeAPI) -> dict[str, Any]:
    lease: dict[str, Any] = json.loads(
        kube.kubectl("get", "lease", "mesh-auditor-leader", f"--namespace={NAMESPACE}", "-o", "json")
    )["spec"]
    return lease


def _leading(http: httpx.Client) -> bool:
    try:
        return "mesh_auditor_leader 1.0" in http.get("/metrics").text
    except httpx.TransportError:
        return False


@pytest.fixture
def orders_drift(retail: KubeAPI) -> Iterator[KubeAPI]:
    """A static drift (PERMISSIVE on default/orders): one alert in the outbox, sent to Slack."""
    retail.kubectl("delete", "configmap", "mesh-auditor-state", f"--namespace={NAMESPACE}", "--ignore-not-found")
    retail.apply_text(PERMISSIVE_ORDERS)
    try:
        yield retail
    finally:
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default", "--ignore-not-found")
        for namespace in PROBE_NAMESPACES:  # a failed run must not leave its pods to the next test
            retail.kubectl("delete", "pods", f"--namespace={namespace}", f"--selector={MANAGED_BY}={MANAGED_BY_VALUE}")


def _daemon_env(kubeconfig: Path, port: int, slack_base: str, target: str, tmp_path: Path) -> dict[str, str]:
    overrides = {f"{role}:default/catalog": target for role in ("outside", "intruder", "control")}
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AUDITOR_LOGGING__FORMAT": "json",
        "AUDITOR_LOGGING__LEVEL": "info",
        "AUDITOR_DAEMON__RULES": json.dumps([str(ROOT / "rules" / "retail-store.yaml")]),
        "AUDITOR_DAEMON__NAMESPACE": NAMESPACE,
        "AUDITOR_DAEMON__IDENTITY": IDENTITY,
        "AUDITOR_DAEMON__KUBECONFIG": str(kubeconfig),
        "AUDITOR_DAEMON__HEALTH_PORT": str(port),
        "AUDITOR_DAEMON__HEALTH_HOST": "127.0.0.1",
        "AUDITOR_DAEMON__REPORTS_DIR": str(tmp_path / "reports"),
        "AUDITOR_DAEMON__POLICY_REPORTS": "false",
        "AUDITOR_DAEMON__LEASE_DURATION_S": "5",
        "AUDITOR_DAEMON__STATIC_DEBOUNCE_S": "0.2",
        "AUDITOR_DAEMON__PROBES_ENABLED": "true",
        "AUDITOR_DAEMON__PROBE_EVERY_S": "2",
        "AUDITOR_DAEMON__PROBE_JITTER_S": "0",
        "AUDITOR_DAEMON__SHUTDOWN_GRACE_S": str(GRACE_S),
        "AUDITOR_PROBES__URL_OVERRIDES": json.dumps(overrides),
        # Without SIGTERM a cycle would wait minutes on targets that never answer.
        "AUDITOR_PROBES__REQUEST_TIMEOUT_S": "120",
        "AUDITOR_PROBES__DEADLINE_S": "300",
        "AUDITOR_PROBES__ACTIVE_DEADLINE_S": "300",
        "AUDITOR_SLACK__MODE": "bot",
        "AUDITOR_SLACK__BOT_TOKEN": "xoxb-test",
        "AUDITOR_SLACK__CHANNEL": "C0MESH",
        "AUDITOR_SLACK__BASE_URL": slack_base + "api/",
        "AUDITOR_SLACK__PACE_S": "0.1",
    }


def _assert_lease_released(kube: KubeAPI) -> None:
    """Released as ``LeaseElector.release`` writes it: renewTime past the duration, so a standby takes over at once."""
    lease = _lease(kube)
    renewed = dt.datetime.fromisoformat(lease["renewTime"].replace("Z", "+00:00"))
    assert renewed < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=lease["leaseDurationSeconds"]), lease


def _assert_outbox_persisted(kube: KubeAPI, ts: str) -> None:
    """The state ConfigMap holds the outbox: the alert sent before SIGTERM, sent, with Slack's ts."""
    with kube.new_client() as api:
        stored = ConfigMapStateStore(api, NAMESPACE).load()
    entries = stored["outbox"]["entries"]
    assert [e["ts"] for e in entries if e["state"] == "sent"] == [ts], entries
    assert all(e["state"] != "in-flight" for e in entries), entries


def _stopped(logged: str) -> dict[str, Any]:
    records = [json.loads(line) for line in logged.splitlines() if line.strip()]
    stopped = [r for r in records if r.get("event") == "stopped"]
    assert len(stopped) == 1, logged[-4000:]
    record: dict[str, Any] = stopped[0]
    return record


# Where the cycle is when SIGTERM comes: the probes are waiting on targets that never answer, or
# their pods are still Pending (no node matches their nodeSelector: Auto Mode still adding capacity).
SITUATIONS = {
    "Running": {},
    "Pending": {"AUDITOR_PROBES__NODE_SELECTOR": json.dumps({"example.invalid/pool": "none"})},
}


@pytest.mark.parametrize("phase", sorted(SITUATIONS))
def test_sigterm_during_a_probe_cycle_deletes_the_pods_and_releases_the_lease(
    orders_drift: KubeAPI,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    silent_target: str,
    tmp_path: Path,
    phase: str,
) -> None:
    kube, port, log_path = orders_drift, _free_port(), tmp_path / "daemon.log"
    with slack_server() as (slack_base, slack), log_path.open("wb") as log:
        env = _daemon_env(auditor_kubeconfig, port, slack_base, silent_target, tmp_path) | SITUATIONS[phase]
        process = subprocess.Popen([sys.executable, "-m", "auditor", "daemon"], env=env, stdout=log, stderr=log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=2) as http:
                _eventually(lambda: _leading(http), 60, "the daemon leads")
            _eventually(lambda: len(slack.top_level()) == 1, 60, "the drift's alert reached Slack")
            _eventually(lambda: len(_in_phase(kube, phase)) >= 2, 90, f"two probe pods {phase}")
            time.sleep(1.0)  # well into the cycle
            pods = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in _in_phase(kube, phase)}
            assert len(pods) >= 2, pods
            assert _lease(kube)["holderIdentity"] == IDENTITY
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            exit_s = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        alert_ts = slack.top_level()[0]["ts"]
    print(f"\nFIGURE exit after SIGTERM (probe cycle, {len(pods)} pods {phase}, grace {GRACE_S:g} s): {exit_s:.2f} s")
    logged = log_path.read_text(encoding="utf-8")
    assert "probe pod created" in logged
    assert code == 0, logged[-4000:]
    assert exit_s < GRACE_S + MARGIN_S, logged[-4000:]
    # The probe cycle reached its safe point by itself (not abandoned at the end of the grace).
    assert _stopped(logged)["jobs_cut"] is False
    assert _stopped(logged)["released_lease"] is True
    # The auditor deleted its pods before it exited: any still listed only await the kubelet's
    # confirmation of a deletion already requested.
    left = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in _probe_pods(kube)}
    assert all(left[key]["metadata"].get("deletionTimestamp") for key in pods if key in left), left
    _eventually(lambda: not _probe_pods(kube), 15, "no probe pod left in any probe namespace")
    _assert_lease_released(kube)
    _assert_outbox_persisted(kube, alert_ts)
