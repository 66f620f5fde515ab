"""``auditor daemon`` as a process under SIGTERM (issue #18.5) and its log stream (#18.9).

In each situation (idle, a Slack backlog, a Slack call that does not answer) SIGTERM makes the
process exit 0 well inside the grace period, release the Lease, and send nothing afterwards; a
message cut short is sent exactly once by the next leader. Every line the process logs is one
JSON object. Exit times are printed as FIGURE lines.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT
from tests.integration.test_daemon import PERMISSIVE_ORDERS, _eventually, retail, slack
from tests.integration.test_daemon_faults import PERMISSIVE_CHECKOUT
from tests.slack_server import SlackState

pytestmark = pytest.mark.kube
__all__ = ["retail", "slack"]  # fixtures used by name
GRACE_S = 3.0


@pytest.fixture(autouse=True)
def _no_debug_policies_left(kube_api: KubeAPI) -> Iterator[None]:
    """The drifts these tests apply live in ``default``: a failing test must not leave them to the next."""
    yield
    for name in ("orders-debug", "checkout-debug"):
        kube_api.kubectl("delete", "peerauthentication", name, "--namespace=default", "--ignore-not-found")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def daemon_process(
    kube: KubeAPI, namespace: str, identity: str, slack_base: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client, Path]]:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AUDITOR_LOGGING__FORMAT": "json",
        "AUDITOR_LOGGING__LEVEL": "info",
        "AUDITOR_DAEMON__RULES": json.dumps([str(ROOT / "rules" / "retail-store.yaml")]),
        "AUDITOR_DAEMON__NAMESPACE": namespace,
        "AUDITOR_DAEMON__IDENTITY": identity,
        "AUDITOR_DAEMON__KUBECONFIG": str(kube.kubeconfig),
        "AUDITOR_DAEMON__HEALTH_PORT": str(port),
        "AUDITOR_DAEMON__HEALTH_HOST": "127.0.0.1",
        "AUDITOR_DAEMON__REPORTS_DIR": str(tmp_path / f"reports-{identity}"),
        "AUDITOR_DAEMON__POLICY_REPORTS": "false",
        "AUDITOR_DAEMON__LEASE_DURATION_S": "3",
        "AUDITOR_DAEMON__STATIC_DEBOUNCE_S": "0.2",
        "AUDITOR_DAEMON__SHUTDOWN_GRACE_S": str(GRACE_S),
        "AUDITOR_SLACK__MODE": "bot",
        "AUDITOR_SLACK__BOT_TOKEN": "xoxb-test",
        "AUDITOR_SLACK__CHANNEL": "C0MESH",
        "AUDITOR_SLACK__BASE_URL": slack_base + "api/",
        "AUDITOR_SLACK__PACE_S": "0.1",
    }
    log_path = tmp_path / f"{identity}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "auditor", "daemon"], env=env, stdout=log, stderr=log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=2) as http:
                yield process, http, log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _leading(http: httpx.Client) -> bool:
    try:
        return "mesh_auditor_leader 1.0" in http.get("/metrics").text
    except httpx.TransportError:
        return False


def _audited(http: httpx.Client) -> bool:
    try:
        text = http.get("/metrics").text
    except httpx.TransportError:
        return False
    return 'mesh_auditor_last_success_timestamp_seconds{kind="static"}' in text


def _terminate(process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    return time.monotonic() - started


def _lease_released(kube: KubeAPI, namespace: str) -> bool:
    lease = json.loads(kube.kubectl("get", "lease", "mesh-auditor-leader", f"--namespace={namespace}", "-o", "json"))
    renewed = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    return renewed < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=lease["spec"]["leaseDurationSeconds"])


def _json_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sigterm_exits_well_inside_the_grace_period_in_every_situation(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    base, state = slack
    figures: dict[str, float] = {}
    # 1. idle leader
    with daemon_process(retail, kube_namespace, "idle", base, tmp_path) as (process, http, log):
        _eventually(lambda: _leading(http) and _audited(http), timeout=30)
        figures["idle"] = _terminate(process)
    assert _lease_released(retail, kube_namespace)
    assert all(isinstance(record, dict) for record in _json_lines(log))  # #18.9: every line is JSON
    # 2. a Slack backlog: two drifts to post, every call takes 1 s; SIGTERM during the first
    state.delay_s = 1.0
    retail.apply_text(PERMISSIVE_ORDERS)
    retail.apply_text(PERMISSIVE_CHECKOUT)
    with daemon_process(retail, kube_namespace, "backlog", base, tmp_path) as (process, http, _log):
        _eventually(lambda: "chat.postMessage" in state.requests, timeout=30)
        figures["Slack backlog"] = _terminate(process)
        calls = len(state.requests)
    time.sleep(2.5)
    assert len(state.requests) == calls  # nothing sent after the exit
    assert _lease_released(retail, kube_namespace)
    # 3. a Slack call whose answer takes 60 s (Slack has the message): cut at the grace period
    state.delay_s, state.answer_delay_s = 0.0, 60.0
    before = len(state.requests)
    with daemon_process(retail, kube_namespace, "stuck", base, tmp_path) as (process, http, _log):
        _eventually(lambda: len(state.requests) > before, timeout=30)  # a Slack call is under way
        time.sleep(0.5)
        figures["Slack call hanging"] = _terminate(process)
    assert _lease_released(retail, kube_namespace)
    for situation, seconds in figures.items():
        print(f"\nFIGURE exit after SIGTERM ({situation}, grace {GRACE_S:g} s): {seconds:.2f} s")
        assert seconds < GRACE_S + 3
    # the next leader delivers what was cut short, each message once
    state.answer_delay_s = 0.0
    with daemon_process(retail, kube_namespace, "next", base, tmp_path) as (process, http, _log):
        _eventually(lambda: _leading(http) and _audited(http), timeout=30)  # signal handlers are in place
        _eventually(lambda: len(state.top_level()) == 2, timeout=30)
        time.sleep(2.0)
        _terminate(process)
    assert sorted(m["text"] for m in state.top_level()) == [
        "Drift: strict-mtls on default/checkout",
        "Drift: strict-mtls on default/orders",
    ]
    for path in tmp_path.glob("*.log"):  # #18.9: every line of every process's log is one JSON object
        assert all(isinstance(record, dict) for record in _json_lines(path)), path
    for name in ("orders-debug", "checkout-debug"):
        retail.kubectl("delete", "peerauthentication", name, "--namespace=default", "--ignore-not-found")


def test_kill_9_right_after_slack_stored_a_reply_does_not_repeat_it(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    """#18.3 as reported: SIGKILL while Slack's answer to the Resolved reply is on its way; the next
    replica takes over when the Lease expires, finds the reply in conversations.replies, adopts it."""
    base, state = slack
    with daemon_process(retail, kube_namespace, "killed", base, tmp_path) as (process, http, _log):
        _eventually(lambda: _leading(http) and _audited(http), timeout=30)
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 1, timeout=20)
        state.answer_delay_s = 30.0
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
        _eventually(lambda: len(state.replies(state.top_level()[0]["ts"])) == 1, timeout=20)
        process.kill()
        process.wait()
        killed = time.monotonic()
    state.answer_delay_s = 0.0
    with daemon_process(retail, kube_namespace, "next", base, tmp_path) as (process, http, _log):
        _eventually(lambda: _leading(http), timeout=30)
        print(
            f"\nFIGURE takeover after kill -9 (Lease 3 s, new process start included): {time.monotonic() - killed:.2f} s"
        )
        _eventually(lambda: len(state.updates) == 1, timeout=20)  # the update that follows the reply
        time.sleep(2.0)
        _terminate(process)
    assert state.transcript() == [("Drift: strict-mtls on default/orders", ["Resolved: strict-mtls on default/orders"])]
    assert "conversations.replies" in state.requests
