"""The daemon through a real API server outage (issue #18.8), end to end.

A control plane of this test's own (the shared session server must not go down under other
tests), the retail example applied to it, ``auditor daemon`` as a process, Slack as the local
stand-in over HTTP. A drift is opened and resolved, a second one is left open; then the
kube-apiserver is really stopped for longer than ``cannot_audit_after_s`` and started again on
the same port with the same etcd data. Asserted: exactly one "cannot audit" alert and its
recovery reply in its thread; no note in any other thread (resolved or open); no audit from a
snapshot that is not in sync (no report document with an ERROR finding, none written while the
API was down); an error line in the JSON log. A second test hangs the API server instead
(SIGSTOP, then SIGCONT: connections accepted, nothing answered) with the same transcript.
Figures are printed as ``FIGURE`` lines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testrigs.devtools import controlplane
from testrigs.devtools.controlplane import KubeAPI
from tests.apiserver_outage import ApiServerOutage
from tests.cases import ROOT, Case, materialize
from tests.integration.live import AppliedCase
from tests.slack_server import SlackState, slack_server

pytestmark = pytest.mark.kube
EXAMPLE = ROOT / "examples" / "retail-store"
RULES = ROOT / "rules" / "retail-store.yaml"
NAMESPACE = "mesh-auditor"
CANNOT_AUDIT_AFTER_S = 3.0
OUTAGE_S = 10.0  # well past the threshold, and past a few watch retries (backoff 0.5, 1, 2, 4 s)
PERMISSIVE = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {app}-debug, namespace: default}}
spec:
  selector: {{matchLabels: {{app.kubernetes.io/name: {app}}}}}
  mtls: {{mode: PERMISSIVE}}
"""
ORDERS_DRIFT, ORDERS_RESOLVED = "Drift: strict-mtls on default/orders", "Resolved: strict-mtls on default/orders"
CHECKOUT_DRIFT = "Drift: strict-mtls on default/checkout"
CHECKOUT_RESOLVED = "Resolved: strict-mtls on default/checkout"
CANNOT_AUDIT = ":rotating_light: mesh-auditor cannot audit"
AUDITING_AGAIN = ":white_check_mark: mesh-auditor is auditing again"


def _eventually(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "the daemon") -> float:
    """Seconds until ``predicate`` held (polled every 50 ms); fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"{what} never got there within {timeout:g} s")


@dataclass
class ControlPlane:
    kube: KubeAPI
    outage: ApiServerOutage


@pytest.fixture
def own_control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for this test only (its own state dir and free ports), with the
    retail example applied and the daemon's namespace; torn down afterwards whatever happened."""
    try:
        binaries = controlplane.build()
    except controlplane.ControlPlaneError as error:
        pytest.fail(f"cannot build the test control plane: {error}")
    state_dir = tmp_path / "controlplane"
    try:
        try:
            kubeconfig = controlplane.up(state_dir)
        except controlplane.ControlPlaneError as error:
            pytest.fail(f"the dedicated control plane did not come up: {error}")
        kube = KubeAPI(kubeconfig, binaries.kubectl)
        case = Case(name="retail", directory=EXAMPLE, description="", base=EXAMPLE, remove=(), rules=RULES, env={})
        (tmp_path / "case").mkdir()
        # Never left: the whole control plane goes with the state dir.
        AppliedCase(kube, materialize(case, tmp_path / "case"), tmp_path / "case").__enter__()
        kube.kubectl("create", "namespace", NAMESPACE)
        yield ControlPlane(kube, ApiServerOutage(state_dir, binaries.kubectl, kubeconfig))
    finally:
        controlplane.down(state_dir)  # stops the restarted API server too (it is in the record)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def daemon_process(kube: KubeAPI, slack_base: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AUDITOR_LOGGING__FORMAT": "json",
        "AUDITOR_LOGGING__LEVEL": "info",
        "AUDITOR_DAEMON__RULES": json.dumps([str(RULES)]),
        "AUDITOR_DAEMON__NAMESPACE": NAMESPACE,
        "AUDITOR_DAEMON__IDENTITY": "replica-outage",
        "AUDITOR_DAEMON__KUBECONFIG": str(kube.kubeconfig),
        "AUDITOR_DAEMON__HEALTH_PORT": str(port),
        "AUDITOR_DAEMON__HEALTH_HOST": "127.0.0.1",
        "AUDITOR_DAEMON__REPORTS_DIR": str(tmp_path / "reports"),
        "AUDITOR_DAEMON__POLICY_REPORTS": "false",
        "AUDITOR_DAEMON__LEASE_DURATION_S": "3",
        "AUDITOR_DAEMON__STATIC_DEBOUNCE_S": "0.2",
        # A full audit every 2 s: any audit the daemon would run from an out-of-sync snapshot
        # during the outage or right after it gets many chances to show.
        "AUDITOR_DAEMON__FULL_STATIC_EVERY_S": "2",
        "AUDITOR_DAEMON__CANNOT_AUDIT_AFTER_S": str(CANNOT_AUDIT_AFTER_S),
        "AUDITOR_DAEMON__SHUTDOWN_GRACE_S": "3",
        "AUDITOR_SLACK__MODE": "bot",
        "AUDITOR_SLACK__BOT_TOKEN": "xoxb-test",
        "AUDITOR_SLACK__CHANNEL": "C0MESH",
        "AUDITOR_SLACK__BASE_URL": slack_base + "api/",
        "AUDITOR_SLACK__PACE_S": "0.1",
    }
    with (tmp_path / "daemon.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "auditor", "daemon"], env=env, stdout=log, stderr=log)
        try:
            yield process, port
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@dataclass
class Sample:
    at: float
    ready: int  # /readyz status, 0 when the health server did not answer
    reason: str
    leader: bool


@dataclass
class HealthSampler:
    """Polls the daemon's /readyz and /metrics every 100 ms from a thread."""

    port: int
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", trust_env=False, timeout=2) as http:
            while not self._stop.is_set():
                at = time.monotonic()
                try:
                    ready = http.get("/readyz")
                    metrics = http.get("/metrics").text
                    sample = Sample(at, ready.status_code, ready.text.strip(), "mesh_auditor_leader 1.0" in metrics)
                except httpx.TransportError:
                    sample = Sample(at, 0, "", False)
                self.samples.append(sample)
                self._stop.wait(0.1)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def led_out_of_sync_s(self) -> float:
        """The longest stretch of samples in which the daemon said it led while its snapshot was
        not in sync (readyz 503 "snapshot not in sync")."""
        longest, since = 0.0, None
        for sample in self.samples:
            bad = sample.leader and sample.ready == 503 and "not in sync" in sample.reason
            if bad and since is None:
                since = sample.at
            if not bad:
                since = None
            if since is not None:
                longest = max(longest, sample.at - since + 0.1)
        return longest


def _ready_leader(sampler: HealthSampler) -> bool:
    latest = sampler.latest()
    return latest is not None and latest.ready == 200 and latest.leader


def _reports(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def _json_records(path: Path) -> list[dict[str, Any]]:
    """Every JSON object in the log, in order. Tolerates two objects on one line: structlog's
    own lines and the stdlib loggers' lines are written by different threads without a shared
    lock, and under load they interleave (issue #18.9, seen here; not this test's subject)."""
    decoder, records = json.JSONDecoder(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        rest = line.strip()
        while rest:
            record, end = decoder.raw_decode(rest)
            records.append(record)
            rest = rest[end:].strip()
    return records


def _texts(state: SlackState) -> list[tuple[str, list[str]]]:
    """The transcript with the operational messages cut to their fixed beginning (they carry durations)."""

    def cut(text: str) -> str:
        for start in (CANNOT_AUDIT, AUDITING_AGAIN):
            if text.startswith(start):
                return start
        return text

    return [(cut(top), [cut(r) for r in replies]) for top, replies in state.transcript()]


def test_an_api_outage_sends_one_cannot_audit_alert_and_its_recovery_and_audits_nothing_out_of_sync(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    kube, outage = own_control_plane.kube, own_control_plane.outage
    reports = tmp_path / "reports"
    with slack_server() as (base, state), daemon_process(kube, base, tmp_path) as (process, port):
        with HealthSampler(port) as sampler:
            _eventually(lambda: _ready_leader(sampler) and len(_reports(reports)) >= 1, 60, "the first audit")
            _one_resolved_one_open(kube, state)
            messages_before = len(state.messages)

            stopping: list[tuple[float, float]] = []  # (SIGTERM, gone): the stop waits out the API server's grace
            stopper = threading.Thread(target=lambda: stopping.append(outage.stop()), daemon=True)
            stopper.start()
            _eventually(lambda: len(state.top_level()) == 3, CANNOT_AUDIT_AFTER_S + 20, "the cannot-audit alert")
            alerted = time.monotonic()
            stopper.join()
            [(stopped, gone)] = stopping
            to_alert = alerted - stopped
            ops_ts = state.top_level()[2]["ts"]
            remaining = OUTAGE_S - (time.monotonic() - stopped)
            time.sleep(max(0.0, remaining))
            during_outage = [m["text"] for m in state.messages[messages_before:]]
            down_until = time.monotonic()
            reports_during = [r for r in _reports(reports) if gone < _monotonic_of(r) < down_until]

            started = outage.start()
            api_ready = outage.wait_ready()
            _eventually(lambda: len(state.replies(ops_ts)) == 1, 60, "the recovery reply")
            to_recovery = time.monotonic() - started
            _eventually(lambda: _ready_leader(sampler), 60, "an in-sync leader")
            # Nothing more arrives: no second "cannot audit" alert while the watches relist.
            time.sleep(CANNOT_AUDIT_AFTER_S + 3.0)
            led_out_of_sync = sampler.led_out_of_sync_s()

            # Still auditing: the open drift is resolved in its own thread.
            kube.kubectl("delete", "peerauthentication", "checkout-debug", "--namespace=default")
            _eventually(lambda: len(state.replies(state.top_level()[1]["ts"])) == 1, what="the checkout resolution")
            time.sleep(1.0)
        process.terminate()
        assert process.wait(timeout=15) == 0

    print(f"\nFIGURE API stop to the cannot-audit alert (threshold {CANNOT_AUDIT_AFTER_S:g} s): {to_alert:.2f} s")
    print(
        f"FIGURE API start to the recovery reply: {to_recovery:.2f} s (API /readyz ok after {api_ready - started:.2f} s)"
    )
    print(f"FIGURE longest time the daemon said it led while its snapshot was not in sync: {led_out_of_sync:.2f} s")
    assert CANNOT_AUDIT_AFTER_S <= to_alert < CANNOT_AUDIT_AFTER_S + 5
    assert during_outage == [state.top_level()[2]["text"]]  # the alert, and nothing else while down
    assert _texts(state) == [
        (ORDERS_DRIFT, [ORDERS_RESOLVED]),
        (CHECKOUT_DRIFT, [CHECKOUT_RESOLVED]),
        (CANNOT_AUDIT, [AUDITING_AGAIN]),
    ]
    alert = state.top_level()[2]["text"]
    assert "Drift is not being detected until this clears." in alert
    assert not any("Cannot verify" in m["text"] for m in state.messages)
    # No audit from a snapshot that is not in sync: none was written while the API was down,
    # and no report has an ERROR finding (what a check reports for a resource it could not read).
    assert reports_during == []
    errors = [
        (r["run"]["at"], f["target"], f["check"], f.get("detail", ""))
        for r in _reports(reports)
        for f in r["findings"]
        if f["status"] == "ERROR"
    ]
    assert errors == []
    _assert_logged_the_outage(tmp_path / "daemon.log")


def _one_resolved_one_open(kube: KubeAPI, state: SlackState) -> None:
    """A drift opened and resolved (its thread must get nothing more), and one left open over the
    outage (an audit from an out-of-sync snapshot would note "Cannot verify" in its thread)."""
    kube.apply_text(PERMISSIVE.format(app="orders"))
    _eventually(lambda: len(state.top_level()) == 1, what="the orders alert")
    kube.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
    _eventually(lambda: len(state.replies(state.top_level()[0]["ts"])) == 1, what="the orders resolution")
    kube.apply_text(PERMISSIVE.format(app="checkout"))
    _eventually(lambda: len(state.top_level()) == 2, what="the checkout alert")
    time.sleep(1.0)
    assert _texts(state) == [(ORDERS_DRIFT, [ORDERS_RESOLVED]), (CHECKOUT_DRIFT, [])]


def _assert_logged_the_outage(path: Path) -> None:
    """An error line when the trouble began, an info line when auditing resumed, one each."""
    log = _json_records(path)
    troubles = [r for r in log if r.get("event") in {"cannot audit", "auditing again"}]
    # The start-up (not listed yet) is a trouble too; the outage is the last one, logged once
    # when it began (with the unreachable server in the reason) and once when it cleared.
    assert [(r["level"], r["event"]) for r in troubles[-2:]] == [("error", "cannot audit"), ("info", "auditing again")]
    # Whichever noticed first gives the reason: a watch (naming the server) or the Lease renewal.
    reason = str(troubles[-2]["reason"])
    assert "host='127.0.0.1'" in reason or "the Lease cannot be read or written: connection refused" in reason, reason
    assert float(troubles[-1]["after_s"]) >= OUTAGE_S - CANNOT_AUDIT_AFTER_S


def _monotonic_of(report: dict[str, Any]) -> float:
    """Where a report's wall-clock time falls on this test's monotonic clock."""
    at = dt.datetime.fromisoformat(str(report["run"]["at"])).timestamp()
    return time.monotonic() - (time.time() - at)


HUNG_S = 45.0  # past the API client's read timeout (30 s), so every kind of call has failed once


def test_a_hung_api_server_sends_one_cannot_audit_alert_and_its_recovery(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The second way an API server fails: it hangs (SIGSTOP): connections open, nothing answers."""
    kube, outage = own_control_plane.kube, own_control_plane.outage
    reports = tmp_path / "reports"
    with slack_server() as (base, state), daemon_process(kube, base, tmp_path) as (process, port):
        with HealthSampler(port) as sampler:
            _eventually(lambda: _ready_leader(sampler) and len(_reports(reports)) >= 1, 60, "the first audit")
            _one_resolved_one_open(kube, state)
            hung = outage.hang()
            try:
                _eventually(lambda: len(state.top_level()) == 3, HUNG_S, "the cannot-audit alert")
                to_alert = time.monotonic() - hung
                ops_ts = state.top_level()[2]["ts"]
                time.sleep(max(0.0, HUNG_S - (time.monotonic() - hung)))
            finally:
                resumed = outage.resume()
            _eventually(lambda: len(state.replies(ops_ts)) == 1, 90, "the recovery reply")
            to_recovery = time.monotonic() - resumed
            _eventually(lambda: _ready_leader(sampler), 60, "an in-sync leader")
            time.sleep(CANNOT_AUDIT_AFTER_S + 3.0)
            kube.kubectl("delete", "peerauthentication", "checkout-debug", "--namespace=default")
            _eventually(lambda: len(state.replies(state.top_level()[1]["ts"])) == 1, what="the checkout resolution")
            time.sleep(1.0)
        process.terminate()
        assert process.wait(timeout=15) == 0
    print(
        f"\nFIGURE API hung (SIGSTOP) to the cannot-audit alert (threshold {CANNOT_AUDIT_AFTER_S:g} s): {to_alert:.2f} s"
    )
    print(f"FIGURE API resumed (SIGCONT) to the recovery reply: {to_recovery:.2f} s")
    print(f"FIGURE longest time it said it led while not in sync (hung): {sampler.led_out_of_sync_s():.2f} s")
    assert _texts(state) == [
        (ORDERS_DRIFT, [ORDERS_RESOLVED]),
        (CHECKOUT_DRIFT, [CHECKOUT_RESOLVED]),
        (CANNOT_AUDIT, [AUDITING_AGAIN]),
    ]
    errors = [(r["run"]["at"], f["target"]) for r in _reports(reports) for f in r["findings"] if f["status"] == "ERROR"]
    assert errors == []
