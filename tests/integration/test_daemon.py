"""The daemon end to end: real API server, watch, Lease, ConfigMap state, Slack over HTTP.

A drift injected in the API server opens exactly one Slack alert; the fix resolves it in the
same thread; a restart in between sends nothing twice; two replicas: one alerts, and killing it
hands over. Timings are measured and printed (the closing note's figures).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from auditor.adapters.aws.archive import ArchiveOptions, S3Archive
from auditor.adapters.aws.metrics import CloudWatchMetrics
from auditor.adapters.aws.securityhub import HubOptions, SecurityHubSink
from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.policyreports import PolicyReportWriter
from auditor.adapters.k8s.state import ConfigMapStateStore
from auditor.adapters.k8s.watcher import SnapshotWatcher, WatchTiming
from auditor.adapters.rules.loader import load_rules
from auditor.adapters.slack.notifier import SlackNotifier, build_web_client
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.daemon.sinks import AwsSink, DirectorySink, PolicyReportSink
from auditor.ports import ReportSink
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT, Case, materialize
from tests.crd_modules import policyreport_crds
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
    kube: KubeAPI,
    namespace: str,
    identity: str,
    slack_base: str,
    reports: Path,
    lease_s: int = 2,
    extra_sinks: Callable[[Any], list[ReportSink]] = lambda _api: [],
    **config: Any,
) -> Iterator[Daemon]:
    posture = load_rules([str(RULES)])
    values = {("default/catalog", "x-auth-token"): "internal-retail-token"}
    with kube.new_client() as api:
        holder: list[Daemon] = []
        watcher = SnapshotWatcher(
            api, timing=WatchTiming(resync=60), on_change=lambda: holder[0].snapshot_changed() if holder else None
        )
        daemon = Daemon(
            config=DaemonConfig(
                identity=identity,
                static_debounce_s=0.3,
                leader_tick_s=0.5,
                full_static_every_s=30,
                slack_pace_s=config.pop("slack_pace_s", 0.05),
                **config,
            ),
            snapshots=watcher,
            posture=posture,
            header_values=values,
            elector=LeaseElector(api, namespace, identity, duration_s=lease_s),
            state=ConfigMapStateStore(api, namespace),
            notifier=SlackNotifier(build_web_client("xoxb-test", base_url=slack_base + "api/"), "C0MESH"),
            sinks=[DirectorySink(reports), *extra_sinks(api)],
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


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _aws(service: str, endpoint: str) -> Any:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-west-2"
    )
    return session.client(service, endpoint_url=endpoint)


def _policy_report(kube: KubeAPI) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        kube.kubectl("get", "policyreport", "mesh-auditor", "--namespace=default", "-o", "json")
    )
    return report


def test_drift_opens_one_alert_restart_sends_nothing_twice_fix_resolves_in_thread(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path, moto_endpoint: str
) -> None:
    """Through a Slack outage (500s, then 429s), a restart, and every report sink."""
    base, state = slack
    reports = tmp_path / "reports"
    retail.apply(*policyreport_crds())
    retail.kubectl("wait", "--for=condition=Established", "crd/policyreports.wgpolicyk8s.io", "--timeout=30s")
    s3, hub = _aws("s3", moto_endpoint), _aws("securityhub", moto_endpoint)
    s3.create_bucket(
        Bucket="evidence",
        CreateBucketConfiguration={"LocationConstraint": "us-west-2"},
        ObjectLockEnabledForBucket=True,
    )

    def sinks(api: Any) -> list[ReportSink]:
        aws = AwsSink(
            archive=S3Archive(
                s3, ArchiveOptions(bucket="evidence", cluster="ambient", account_id="123456789012", region="us-west-2")
            ),
            hub=SecurityHubSink(hub, HubOptions("123456789012", "us-west-2", "ambient")),
            metrics=CloudWatchMetrics(_aws("cloudwatch", moto_endpoint), "ambient"),
        )
        return [PolicyReportSink(PolicyReportWriter(api)), aws]

    with running_daemon(retail, kube_namespace, "replica-a", base, reports, extra_sinks=sinks) as daemon:
        _eventually(lambda: daemon.leading and len(DirectorySink(reports).documents()) >= 1)
        assert state.messages == []  # the compliant example alerts nothing
        assert _policy_report(retail)["summary"]["fail"] == 0
        state.fail_next(2, 500)
        state.fail_next(2, 429, retry_after=1)
        injected = time.monotonic()
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 1)
        print(
            f"\nFIGURE drift-to-slack seconds through 2x500 + 2x429(Retry-After 1): {time.monotonic() - injected:.2f}"
        )
        assert _alert_texts(state) == ["Drift: strict-mtls on default/orders"]
        _eventually(lambda: _policy_report(retail)["summary"]["fail"] == 1)
        mean = _static_sample(daemon, "_sum") / max(1.0, _static_sample(daemon, "_count"))
        print(f"FIGURE static cycle seconds (retail example, mean): {mean:.3f}")
    with running_daemon(retail, kube_namespace, "replica-a2", base, reports, extra_sinks=sinks) as daemon:
        _eventually(lambda: daemon.leading)
        daemon.static_audit()
        assert len(state.top_level()) == 1  # the restart sent nothing again
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
        [alert] = state.top_level()
        _eventually(
            lambda: [m["text"] for m in state.replies(alert["ts"])] == ["Resolved: strict-mtls on default/orders"]
        )
        _eventually(lambda: _policy_report(retail)["summary"]["fail"] == 0)
        html = DirectorySink(reports).render_latest_html()
    assert len(state.top_level()) == 1
    statuses = [d["summary"]["by_target"]["default/orders"]["strict-mtls"] for d in DirectorySink(reports).documents()]
    assert "fail" in statuses
    assert statuses[-1] == "pass"
    strip = html.split("aria-label='history of default/orders strict-mtls'")[1].split("</svg>")[0]
    assert "#c62828" in strip  # the failing runs stay visible in the history
    assert "#2e7d32" in strip
    archived = s3.list_objects_v2(Bucket="evidence")["Contents"]
    assert len(archived) == len(DirectorySink(reports).documents())
    # moto keeps one in-process backend for every server: page through everything, find ours by id
    stored = {f["Id"]: f for page in hub.get_paginator("get_findings").paginate() for f in page.get("Findings", [])}
    resolved = stored["mesh-auditor/ambient/strict-mtls.peer-authentication/default/orders"]
    assert (resolved["Compliance"]["Status"], resolved["RecordState"]) == ("PASSED", "ARCHIVED")


def _static_sample(daemon: Daemon, suffix: str) -> float:
    for metric in daemon.metrics.cycle_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith(suffix) and sample.labels.get("kind") == "static":
                return float(sample.value)
    return 0.0


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
