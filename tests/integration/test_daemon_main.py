"""`auditor daemon` as composed from settings: health endpoints, reports, rules reload (a bad
rules edit keeps the last good rules), graceful stop."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from auditor.app.daemon import run_daemon
from auditor.settings import DaemonSettings, Settings
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT
from tests.unit.test_input_limits import alias_bomb

pytestmark = pytest.mark.kube


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail("the daemon never got there")


def test_daemon_serves_health_audits_and_keeps_last_good_rules(
    kube_api: KubeAPI, kube_namespace: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    shutil.copy(ROOT / "rules" / "retail-store.yaml", rules)
    port = _free_port()
    settings = Settings(
        daemon=DaemonSettings(
            rules=[str(rules)],
            namespace=kube_namespace,
            identity="replica-main",
            kubeconfig=str(kube_api.kubeconfig),
            health_port=port,
            health_host="127.0.0.1",
            reports_dir=str(tmp_path / "reports"),
            policy_reports=False,
            rules_reload_s=0.3,
            static_debounce_s=0.2,
        )
    )
    stop = threading.Event()
    exit_code: list[int] = []
    thread = threading.Thread(target=lambda: exit_code.append(run_daemon(settings, stop=stop)), daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=2) as http:
            _eventually(lambda: _get(http, "/readyz") == 200)
            assert _get(http, "/healthz") == 200
            _eventually(lambda: len(list((tmp_path / "reports").glob("*.json"))) >= 1)
            rules.write_text("apiVersion: nope\n", encoding="utf-8")  # a broken ConfigMap edit
            time.sleep(1.0)
            assert thread.is_alive()
            assert _get(http, "/readyz") == 200
            rules.write_text(alias_bomb(), encoding="utf-8")  # issue 10: a hostile edit, reloaded 3 times
            time.sleep(1.0)
            assert thread.is_alive()
            assert _get(http, "/readyz") == 200
            assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 1024 * 1024  # KiB: far from 1.5 GB
            assert "mesh_auditor_leader 1.0" in http.get("/metrics").text
    finally:
        stop.set()
        thread.join(20)
    assert exit_code == [0]


def _get(http: httpx.Client, path: str) -> int:
    try:
        return http.get(path).status_code
    except httpx.TransportError:
        return 0


def test_sigterm_stops_the_daemon_gracefully_and_releases_the_lease(
    kube_api: KubeAPI, kube_namespace: str, tmp_path: Path
) -> None:
    """`auditor daemon` as a process: ready, then SIGTERM: exit 0 and a released Lease (a standby takes over at once)."""
    port = _free_port()
    env = {
        **os.environ,
        "AUDITOR_DAEMON__RULES": json.dumps([str(ROOT / "rules" / "retail-store.yaml")]),
        "AUDITOR_DAEMON__NAMESPACE": kube_namespace,
        "AUDITOR_DAEMON__IDENTITY": "replica-signal",
        "AUDITOR_DAEMON__KUBECONFIG": str(kube_api.kubeconfig),
        "AUDITOR_DAEMON__HEALTH_PORT": str(port),
        "AUDITOR_DAEMON__HEALTH_HOST": "127.0.0.1",
        "AUDITOR_DAEMON__REPORTS_DIR": str(tmp_path / "reports"),
        "AUDITOR_DAEMON__POLICY_REPORTS": "false",
    }
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "auditor", "daemon"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=2) as http:
            _eventually(lambda: _get(http, "/readyz") == 200)
            _eventually(lambda: "mesh_auditor_leader 1.0" in http.get("/metrics").text)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    lease = json.loads(
        kube_api.kubectl("get", "lease", "mesh-auditor-leader", f"--namespace={kube_namespace}", "-o", "json")
    )
    renewed = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    assert renewed < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=lease["spec"]["leaseDurationSeconds"])
