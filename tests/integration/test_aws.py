"""AWS sinks through real boto3 against moto's server on loopback (Stubber only where moto lacks
the field or the behaviour: EKS computeConfig, Security Hub refusing a finding).

moto accepts any ASFF update, so the Security Hub rules a finding provider must follow are
asserted here on every record sent, and each record is checked with botocore's validator.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from botocore.validate import ParamValidator
from kubernetes.client import ApiClient
from moto.server import ThreadedMotoServer
from structlog.testing import capture_logs

from auditor.adapters.aws.archive import ArchiveOptions, S3Archive
from auditor.adapters.aws.eks import DEFINITIVE_FOR_S, RETRY_FIRST_S, AutoModeCheck, auto_mode_finding
from auditor.adapters.aws.metrics import NAMESPACE, CloudWatchMetrics
from auditor.adapters.aws.securityhub import HubOptions, SecurityHubSink
from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules
from auditor.app.daemon import _auto_mode
from auditor.core.checks.automode import NodePoolRef, NodePools
from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION
from auditor.core.model import Finding, Status
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.daemon.sinks import AwsSink
from auditor.settings import AwsSettings
from testrigs.fakes import FakeElector, FakeSnapshots, MemoryStateStore, RecordingNotifier
from tests.cases import ROOT, run_report

REGION = "us-west-2"
ACCOUNT = "123456789012"
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _client(service: str, endpoint: str | None = None) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client(service, endpoint_url=endpoint)


def _options(bucket: str) -> ArchiveOptions:
    return ArchiveOptions(bucket=bucket, cluster="ambient", account_id=ACCOUNT, region=REGION, retention_days=30)


def test_s3_archive_locks_each_record_under_its_fleet_partition(moto_endpoint: str) -> None:
    s3 = _client("s3", moto_endpoint)
    s3.create_bucket(
        Bucket="locked", CreateBucketConfiguration={"LocationConstraint": REGION}, ObjectLockEnabledForBucket=True
    )
    key = S3Archive(s3, _options("locked")).put_run({"summary": {}}, "run-1", NOW)
    head = s3.head_object(Bucket="locked", Key=key)
    assert key == f"mesh-auditor/reports/{ACCOUNT}/{REGION}/ambient/2026/11/26/run-1.json"
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"].date() == dt.date(2026, 12, 26)
    body = json.loads(s3.get_object(Bucket="locked", Key=key)["Body"].read())
    assert body["source"] == {"cluster": "ambient", "account": ACCOUNT, "region": REGION}


def test_s3_archive_writes_plainly_and_says_so_without_object_lock(moto_endpoint: str) -> None:
    s3 = _client("s3", moto_endpoint)
    s3.create_bucket(Bucket="plain", CreateBucketConfiguration={"LocationConstraint": REGION})
    archive = S3Archive(s3, _options("plain"))
    with capture_logs() as logs:
        key = archive.put_run({"summary": {"exit_code": 0}}, "run-2", NOW)
        archive.put_run({"summary": {"exit_code": 0}}, "run-3", NOW)
    head = s3.head_object(Bucket="plain", Key=key)
    assert "ObjectLockMode" not in head
    assert json.loads(s3.get_object(Bucket="plain", Key=key)["Body"].read())["summary"] == {"exit_code": 0}
    assert [entry["event"] for entry in logs] == ["bucket has no Object Lock: archived reports are not immutable"]


# --- Security Hub ------------------------------------------------------------------------------

# Fields a provider may send when it updates a finding it created: never Workflow, never the
# top-level Severity/Types (FindingProviderFields instead).
UPDATE_FIELDS = {
    "SchemaVersion",
    "Id",
    "ProductArn",
    "GeneratorId",
    "AwsAccountId",
    "CreatedAt",
    "UpdatedAt",
    "FirstObservedAt",
    "LastObservedAt",
    "Title",
    "Description",
    "Remediation",
    "FindingProviderFields",
    "Resources",
    "Compliance",
    "RecordState",
    "ProductFields",
}
CREATE_FIELDS = UPDATE_FIELDS | {"Severity", "Types", "Workflow"}
FINDING_ID = "mesh-auditor/lifecycle/strict-mtls.captured/default/orders"
LIFECYCLE_ARN = f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/lifecycle"


def _recording(hub: Any) -> list[list[dict[str, Any]]]:
    """Every BatchImportFindings request the client sends, checked with botocore's validator."""
    sent: list[list[dict[str, Any]]] = []
    shape = hub.meta.service_model.operation_model("BatchImportFindings").input_shape

    def record(params: dict[str, Any], **_: Any) -> None:
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()
        sent.append(json.loads(json.dumps(params["Findings"])))

    hub.meta.events.register("provide-client-params.securityhub.BatchImportFindings", record)
    return sent


def _stored(hub: Any) -> dict[str, dict[str, Any]]:
    # moto keeps one in-process backend for every server: page through everything, find ours by id
    return {f["Id"]: f for page in hub.get_paginator("get_findings").paginate() for f in page.get("Findings", [])}


def _resource(record: dict[str, Any]) -> dict[str, Any]:
    [resource] = record["Resources"]
    return dict(resource)


def test_security_hub_lifecycle_fail_pass_fail_follows_the_provider_rules(moto_endpoint: str) -> None:
    """FAIL creates; PASS resolves (PASSED + ARCHIVED); FAIL again reactivates; a restarted sink
    keeps CreatedAt; no update carries Workflow or top-level Severity/Types."""
    hub = _client("securityhub", moto_endpoint)
    sent = _recording(hub)
    options = HubOptions(account_id=ACCOUNT, region=REGION, cluster="lifecycle")
    sink = SecurityHubSink(hub, options)
    t1, t2, t3, t4 = (NOW + dt.timedelta(hours=h) for h in range(4))
    failing = Finding(CAPTURED, "default/orders", Status.FAIL, "opts out of ambient")
    passing = Finding(CAPTURED, "default/orders", Status.PASS, "captured")

    assert sink.publish([failing], t1) == []
    [[created]] = sent
    assert set(created) == CREATE_FIELDS
    assert created["Id"] == FINDING_ID
    assert created["Workflow"] == {"Status": "NEW"}
    assert created["CreatedAt"] == created["UpdatedAt"] == created["FirstObservedAt"] == "2026-11-26T12:00:00.000Z"
    assert (created["Compliance"]["Status"], created["RecordState"]) == ("FAILED", "ACTIVE")
    assert (
        created["Severity"]
        == created["FindingProviderFields"]["Severity"]
        == {
            "Label": "CRITICAL",
            "Original": "CRITICAL",
        }
    )
    assert created["ProductArn"] == f"arn:aws:securityhub:{REGION}:{ACCOUNT}:product/{ACCOUNT}/default"
    assert _resource(created) == {
        "Type": "AwsEksCluster",
        "Id": LIFECYCLE_ARN,
        "Partition": "aws",
        "Region": REGION,
        "Details": {"AwsEksCluster": {"Name": "lifecycle", "Arn": LIFECYCLE_ARN}},
    }
    assert created["ProductFields"]["mesh-auditor/cluster"] == "lifecycle"
    assert created["ProductFields"]["mesh-auditor/account"] == ACCOUNT
    assert created["ProductFields"]["mesh-auditor/region"] == REGION
    assert created["ProductFields"]["mesh-auditor/target"] == "default/orders"

    assert sink.publish([passing], t2) == []
    resolved = sent[-1][0]
    assert set(resolved) == UPDATE_FIELDS
    assert resolved["CreatedAt"] == resolved["FirstObservedAt"] == "2026-11-26T12:00:00.000Z"
    assert resolved["UpdatedAt"] == resolved["LastObservedAt"] == "2026-11-26T13:00:00.000Z"
    assert (resolved["Compliance"]["Status"], resolved["RecordState"]) == ("PASSED", "ARCHIVED")
    assert resolved["FindingProviderFields"]["Severity"]["Label"] == "INFORMATIONAL"
    assert _resource(resolved)["Id"] == LIFECYCLE_ARN

    assert sink.publish([failing], t3) == []
    reopened = sent[-1][0]
    assert set(reopened) == UPDATE_FIELDS
    assert reopened["CreatedAt"] == "2026-11-26T12:00:00.000Z"
    assert reopened["UpdatedAt"] == "2026-11-26T14:00:00.000Z"
    assert (reopened["Compliance"]["Status"], reopened["RecordState"]) == ("FAILED", "ACTIVE")
    assert reopened["FindingProviderFields"]["Severity"]["Label"] == "CRITICAL"

    stored = _stored(hub)[FINDING_ID]
    assert (stored["CreatedAt"], stored["Compliance"]["Status"], stored["RecordState"]) == (
        "2026-11-26T12:00:00.000Z",
        "FAILED",
        "ACTIVE",
    )
    assert stored["Workflow"] == {"Status": "NEW"}  # only ever set at creation

    before = len(sent)
    assert sink.publish([failing], t3 + dt.timedelta(minutes=5)) == []
    assert len(sent) == before  # unchanged within a day: nothing re-imported

    restarted = SecurityHubSink(hub, options)  # a new process (restart or new leader) learns CreatedAt
    assert restarted.publish([failing], t4) == []
    again = sent[-1][0]
    assert set(again) == UPDATE_FIELDS
    assert again["CreatedAt"] == "2026-11-26T12:00:00.000Z"


def test_security_hub_does_not_import_a_pass_it_never_reported_failing(moto_endpoint: str) -> None:
    hub = _client("securityhub", moto_endpoint)
    sent = _recording(hub)
    sink = SecurityHubSink(hub, HubOptions(account_id=ACCOUNT, region=REGION, cluster="quiet"))
    assert sink.publish([Finding(CAPTURED, "default/orders", Status.PASS, "captured")], NOW) == []
    assert sent == []


def test_security_hub_imports_in_batches_of_100(moto_endpoint: str) -> None:
    hub = _client("securityhub", moto_endpoint)
    sent = _recording(hub)
    sink = SecurityHubSink(hub, HubOptions(account_id=ACCOUNT, region=REGION, cluster="big"))
    failing = [Finding(CAPTURED, f"ns-{i}/svc", Status.FAIL, "not captured") for i in range(250)]
    assert sink.publish(failing, NOW) == []
    assert [len(batch) for batch in sent] == [100, 100, 50]
    assert sum(f["Id"].startswith("mesh-auditor/big/") for f in _stored(hub).values()) == 250


@pytest.mark.parametrize(
    ("status", "compliance", "record_state"),
    [(Status.INCONCLUSIVE, "WARNING", "ACTIVE"), (Status.ERROR, "NOT_AVAILABLE", "ACTIVE")],
)
def test_unproven_findings_are_never_passed(
    moto_endpoint: str, status: Status, compliance: str, record_state: str
) -> None:
    hub = _client("securityhub", moto_endpoint)
    sent = _recording(hub)
    sink = SecurityHubSink(hub, HubOptions(account_id=ACCOUNT, region=REGION, cluster=f"unproven-{status.value}"))
    sink.publish([Finding(CAPTURED, "default/orders", status, "could not tell")], NOW)
    [[record]] = sent
    assert (record["Compliance"]["Status"], record["RecordState"]) == (compliance, record_state)


def test_refused_findings_are_logged_and_counted_as_a_metric(moto_endpoint: str) -> None:
    """Security Hub answers FailedFindings (moto never does, so Stubber answers as the API would)."""
    hub = _client("securityhub")
    cloudwatch = _client("cloudwatch", moto_endpoint)
    options = HubOptions(account_id=ACCOUNT, region=REGION, cluster="refused")
    failing = Finding(PEER_AUTHENTICATION, "default/orders", Status.FAIL, "PERMISSIVE")
    finding_id = "mesh-auditor/refused/strict-mtls.peer-authentication/default/orders"
    with Stubber(hub) as stub:
        stub.add_response("get_findings", {"Findings": []})
        stub.add_response(
            "batch_import_findings",
            {
                "FailedCount": 1,
                "SuccessCount": 0,
                "FailedFindings": [{"Id": finding_id, "ErrorCode": "InvalidInput", "ErrorMessage": "bad field"}],
            },
        )
        sink = SecurityHubSink(hub, options)
        aws = AwsSink(hub=sink, metrics=CloudWatchMetrics(cloudwatch, "refused"))
        with capture_logs() as logs:
            aws.publish(run_report([failing], at=NOW))
    assert sink.refused_total == 1
    [entry] = [e for e in logs if e["event"] == "Security Hub refused a finding"]
    assert (entry["finding_id"], entry["error_code"], entry["error_message"]) == (
        finding_id,
        "InvalidInput",
        "bad field",
    )
    stats = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="SecurityHubFindingsRefused",
        Dimensions=[{"Name": "Cluster", "Value": "refused"}],
        StartTime=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        Period=3600,
        Statistics=["Sum"],
    )
    assert [p["Sum"] for p in stats["Datapoints"]] == [1.0]


def test_cloudwatch_metrics_per_property_and_status(moto_endpoint: str) -> None:
    cloudwatch = _client("cloudwatch", moto_endpoint)
    findings = [
        Finding(PEER_AUTHENTICATION, "default/orders", Status.FAIL, "PERMISSIVE"),
        Finding(CAPTURED, "default/orders", Status.PASS, "ok"),
    ]
    CloudWatchMetrics(cloudwatch, "metrics").put_cycle(findings, alerts_open=1, duration_s=2.5)
    listed = cloudwatch.list_metrics(Namespace=NAMESPACE, Dimensions=[{"Name": "Cluster", "Value": "metrics"}])
    names = {m["MetricName"] for m in listed["Metrics"]}
    assert names == {"Findings", "AlertsOpen", "CycleDuration", "SecurityHubFindingsRefused"}


def _cycle_durations(cloudwatch: Any, cluster: str) -> list[float]:
    stats = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="CycleDuration",
        Dimensions=[{"Name": "Cluster", "Value": cluster}],
        StartTime=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        Period=60,
        Statistics=["Maximum", "SampleCount"],
    )
    return [p["Maximum"] for p in stats["Datapoints"] for _ in range(int(p["SampleCount"]))]


def test_cloudwatch_cycle_duration_is_the_real_duration_of_the_daemons_cycle(moto_endpoint: str) -> None:
    """A static cycle that takes at least 0.3 s (its extra check sleeps) reports a CycleDuration of
    at least 0.3 s and less than the wall time of the whole call; the daily report is no cycle and
    adds no CycleDuration datum (it used to put 0)."""
    cloudwatch = _client("cloudwatch", moto_endpoint)
    sink = AwsSink(metrics=CloudWatchMetrics(cloudwatch, "timed"))

    def slow_check() -> tuple[Finding, ...]:
        time.sleep(0.3)
        return ()

    daemon = Daemon(
        config=DaemonConfig(identity="timed"),
        snapshots=FakeSnapshots(read_manifests([str(ROOT / "examples" / "retail-store")], io.StringIO()).snapshot),
        posture=load_rules([str(ROOT / "rules" / "retail-store.yaml")]),
        header_values={("default/catalog", "x-auth-token"): "internal-retail-token"},
        elector=FakeElector(),
        state=MemoryStateStore(),
        notifier=RecordingNotifier(),
        sinks=[sink],
        extra_findings=slow_check,
    )
    daemon.leader_tick()
    started = time.monotonic()
    daemon.static_audit()
    wall = time.monotonic() - started
    [duration] = _cycle_durations(cloudwatch, "timed")
    assert 0.3 <= duration < wall
    daemon.daily_report()
    assert len(_cycle_durations(cloudwatch, "timed")) == 1


# --- EKS Auto Mode -----------------------------------------------------------------------------


def _described(compute: dict[str, Any], node_pools: NodePools | None = None) -> Finding:
    """moto's EKS lacks computeConfig, so botocore's Stubber answers describe_cluster."""
    eks = _client("eks")
    with Stubber(eks) as stub:
        stub.add_response(
            "describe_cluster", {"cluster": {"name": "ambient", "computeConfig": compute}}, {"name": "ambient"}
        )
        return auto_mode_finding(eks, "ambient", (lambda: node_pools) if node_pools is not None else None)


AUTO_POOL = NodePoolRef("custom", "eks.amazonaws.com", "NodeClass", "private")
KARPENTER_POOL = NodePoolRef("oss", "karpenter.k8s.aws", "EC2NodeClass", "default")


@pytest.mark.parametrize(
    ("compute", "pools", "status"),
    [
        ({"enabled": True, "nodePools": ["general-purpose", "system"]}, None, Status.PASS),
        ({"enabled": False}, None, Status.FAIL),
        # Built-in NodePools disabled in favour of custom ones on an Auto Mode NodeClass: valid.
        ({"enabled": True, "nodePools": []}, NodePools((AUTO_POOL,), frozenset({"private"})), Status.PASS),
        # ...but not when the NodeClass it names does not exist, or it is another kind of class.
        ({"enabled": True, "nodePools": []}, NodePools((AUTO_POOL,), frozenset()), Status.FAIL),
        ({"enabled": True, "nodePools": []}, NodePools((KARPENTER_POOL,), frozenset({"default"})), Status.FAIL),
        ({"enabled": True, "nodePools": []}, NodePools(), Status.FAIL),
        # NodePools that could not be read prove nothing either way.
        ({"enabled": True, "nodePools": []}, NodePools(problem="HTTP 403 forbidden"), Status.ERROR),
        ({"enabled": True}, None, Status.ERROR),
    ],
    ids=[
        "built-in",
        "not-auto-mode",
        "custom-pools",
        "custom-pool-missing-class",
        "oss-karpenter-pool",
        "no-pools",
        "pools-unreadable",
        "pools-not-read",
    ],
)
def test_eks_auto_mode_verification(compute: dict[str, Any], pools: NodePools | None, status: Status) -> None:
    finding = _described(compute, pools)
    assert finding.status is status, finding.message
    assert finding.target == "cluster/ambient"


def test_eks_api_error_is_an_error_finding_naming_the_action() -> None:
    eks = _client("eks")
    with Stubber(eks) as stub:
        stub.add_client_error("describe_cluster", service_error_code="AccessDeniedException", http_status_code=403)
        finding = auto_mode_finding(eks, "ambient")
    assert finding.status is Status.ERROR
    assert "eks:DescribeCluster" in finding.message


class _Counting:
    """Counts describe_cluster calls (an unqueued call to a Stubber would be an ERROR finding too,
    so the count is what proves the check did not ask)."""

    def __init__(self, eks: Any) -> None:
        self.eks, self.calls = eks, 0

    def describe_cluster(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self.eks.describe_cluster(**kwargs)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


AUTO_MODE_ON = {"cluster": {"name": "ambient", "computeConfig": {"enabled": True, "nodePools": ["general-purpose"]}}}


@pytest.mark.parametrize(
    ("code", "http_status"),
    [("ThrottlingException", 400), ("ServiceUnavailableException", 503), ("ServerException", 500)],
)
def test_a_transient_eks_error_is_an_error_retried_with_backoff_never_cached(code: str, http_status: int) -> None:
    """moto cannot make EKS throttle or fail with a 5xx (and lacks computeConfig), so Stubber answers.
    The ERROR holds only until the retry delay (5 s, then 10 s); the answer after it is PASS, which
    is then reused for DEFINITIVE_FOR_S and asked again after it."""
    eks, clock = _client("eks"), _Clock()
    counting = _Counting(eks)
    check = AutoModeCheck(counting, "ambient", clock=clock)
    with Stubber(eks) as stub:
        for _ in range(2):
            stub.add_client_error("describe_cluster", service_error_code=code, http_status_code=http_status)
        stub.add_response("describe_cluster", AUTO_MODE_ON, {"name": "ambient"})
        stub.add_response(
            "describe_cluster", {"cluster": {"name": "ambient", "computeConfig": {}}}, {"name": "ambient"}
        )
        [first] = check()
        assert first.status is Status.ERROR
        assert "transient" in first.message
        assert code in first.message
        clock.now += RETRY_FIRST_S - 0.1
        assert check() == (first,)
        assert counting.calls == 1
        clock.now += 0.1
        [second] = check()
        assert second.status is Status.ERROR
        assert counting.calls == 2
        clock.now += RETRY_FIRST_S  # the delay doubled: 10 s
        assert check() == (second,)
        assert counting.calls == 2
        clock.now += RETRY_FIRST_S
        [answer] = check()
        assert answer.status is Status.PASS
        assert counting.calls == 3
        clock.now += DEFINITIVE_FOR_S - 1
        assert check() == (answer,)
        assert counting.calls == 3
        clock.now += 1
        [later] = check()  # a bounded cache: Auto Mode was switched off meanwhile, and that is seen
        assert later.status is Status.FAIL
        assert counting.calls == 4
        stub.assert_no_pending_responses()


def test_the_daemon_wires_the_check_that_retries_errors() -> None:
    aws = AwsSettings(verify_auto_mode=True, cluster_name="ambient", region=REGION)
    assert isinstance(_auto_mode(aws, api=ApiClient()), AutoModeCheck)


def test_an_unreachable_eks_endpoint_is_a_transient_error_and_the_next_audit_asks_again() -> None:
    """A real connection refused on loopback (botocore's own retries off, to keep the test short)."""
    eks = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("eks", endpoint_url=f"http://127.0.0.1:{_free_port()}", config=Config(retries={"max_attempts": 1}))
    clock = _Clock()
    counting = _Counting(eks)
    check = AutoModeCheck(counting, "ambient", clock=clock)
    [first] = check()
    assert first.status is Status.ERROR
    assert "transient" in first.message
    clock.now += RETRY_FIRST_S
    [second] = check()
    assert second.status is Status.ERROR
    assert counting.calls == 2


def test_a_refused_describe_cluster_is_an_error_that_is_not_called_transient() -> None:
    eks, clock = _client("eks"), _Clock()
    check = AutoModeCheck(eks, "ambient", clock=clock)
    with Stubber(eks) as stub:
        stub.add_client_error("describe_cluster", service_error_code="AccessDeniedException", http_status_code=403)
        stub.add_response("describe_cluster", AUTO_MODE_ON, {"name": "ambient"})
        [refused] = check()
        assert refused.status is Status.ERROR
        assert "transient" not in refused.message
        assert "IAM" in refused.message
        clock.now += RETRY_FIRST_S  # the role fixed: seen at the next audit after the delay
        assert check()[0].status is Status.PASS


def test_a_replica_that_leads_again_learns_the_findings_another_leader_created(moto_endpoint: str) -> None:
    hub = _client("securityhub", moto_endpoint)
    sent = _recording(hub)
    options = HubOptions(account_id=ACCOUNT, region=REGION, cluster="handover")
    failing = Finding(CAPTURED, "default/cart", Status.FAIL, "opts out")
    replica_a, replica_b = AwsSink(hub=SecurityHubSink(hub, options)), AwsSink(hub=SecurityHubSink(hub, options))
    replica_a.publish(run_report([], at=NOW))  # A leads first and learns there is nothing yet
    replica_b.publish(run_report([failing], at=NOW + dt.timedelta(hours=1)))  # B leads, creates it
    replica_a.became_leader()
    replica_a.publish(run_report([failing], at=NOW + dt.timedelta(hours=2)))
    created, updated = sent[-2][0], sent[-1][0]
    assert "Workflow" in created
    assert set(updated) == UPDATE_FIELDS  # not a second creation
    assert updated["CreatedAt"] == created["CreatedAt"] == "2026-11-26T13:00:00.000Z"
