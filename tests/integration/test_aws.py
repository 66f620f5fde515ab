"""AWS sinks through real boto3 against moto's server on loopback (Stubber only for EKS computeConfig)."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer

from auditor.adapters.aws.archive import ArchiveOptions, S3Archive
from auditor.adapters.aws.eks import auto_mode_finding
from auditor.adapters.aws.metrics import NAMESPACE, CloudWatchMetrics
from auditor.adapters.aws.securityhub import HubOptions, SecurityHubSink
from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION
from auditor.core.model import Finding, Status

REGION = "us-west-2"
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


def _client(service: str, endpoint: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client(service, endpoint_url=endpoint)


def test_s3_archive_locks_objects_when_the_bucket_has_object_lock(moto_endpoint: str) -> None:
    s3 = _client("s3", moto_endpoint)
    s3.create_bucket(
        Bucket="locked", CreateBucketConfiguration={"LocationConstraint": REGION}, ObjectLockEnabledForBucket=True
    )
    key = S3Archive(s3, ArchiveOptions(bucket="locked", retention_days=30)).put_run({"summary": {}}, "run-1", NOW)
    head = s3.head_object(Bucket="locked", Key=key)
    assert key == "mesh-auditor/reports/2026/11/26/run-1.json"
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"].date() == dt.date(2026, 12, 26)


def test_s3_archive_writes_plainly_without_object_lock(moto_endpoint: str) -> None:
    s3 = _client("s3", moto_endpoint)
    s3.create_bucket(Bucket="plain", CreateBucketConfiguration={"LocationConstraint": REGION})
    key = S3Archive(s3, ArchiveOptions(bucket="plain")).put_run({"summary": {"exit_code": 0}}, "run-2", NOW)
    head = s3.head_object(Bucket="plain", Key=key)
    assert "ObjectLockMode" not in head
    assert s3.get_object(Bucket="plain", Key=key)["Body"].read() == b'{"summary": {"exit_code": 0}}'


def test_security_hub_imports_in_batches_and_resolves_by_stable_id(moto_endpoint: str) -> None:
    hub = _client("securityhub", moto_endpoint)
    batches: list[int] = []
    hub.meta.events.register(
        "provide-client-params.securityhub.BatchImportFindings",
        lambda params, **_: batches.append(len(params["Findings"])),
    )
    sink = SecurityHubSink(hub, HubOptions(account_id="123456789012", region=REGION, cluster="ambient"))
    failing = [Finding(CAPTURED, f"ns-{i}/svc", Status.FAIL, "not captured") for i in range(250)]
    assert sink.publish(failing, NOW) == []
    assert sink.publish([Finding(CAPTURED, "ns-7/svc", Status.PASS, "captured")], NOW) == []
    assert batches == [100, 100, 50, 1]
    stored = _all_findings(hub)
    ns7 = stored["mesh-auditor/ambient/strict-mtls.captured/ns-7/svc"]
    assert len(stored) == 250  # one finding per fingerprint: the re-import updated, not duplicated
    assert ns7["Workflow"]["Status"] == "RESOLVED"
    assert ns7["Compliance"]["Status"] == "PASSED"
    assert stored["mesh-auditor/ambient/strict-mtls.captured/ns-8/svc"]["Compliance"]["Status"] == "FAILED"


def _all_findings(hub: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for page in hub.get_paginator("get_findings").paginate():
        found.update((f["Id"], f) for f in page.get("Findings", []))
    return found


def test_cloudwatch_metrics_per_property_and_status(moto_endpoint: str) -> None:
    cloudwatch = _client("cloudwatch", moto_endpoint)
    findings = [
        Finding(PEER_AUTHENTICATION, "default/orders", Status.FAIL, "PERMISSIVE"),
        Finding(CAPTURED, "default/orders", Status.PASS, "ok"),
    ]
    CloudWatchMetrics(cloudwatch, "ambient").put_cycle(findings, alerts_open=1, duration_s=2.5)
    names = {m["MetricName"] for m in cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"]}
    assert names == {"Findings", "AlertsOpen", "CycleDuration"}


@pytest.mark.parametrize(
    ("compute", "status"),
    [
        ({"enabled": True, "nodePools": ["general-purpose", "system"]}, Status.PASS),
        ({"enabled": False}, Status.FAIL),
        ({"enabled": True, "nodePools": []}, Status.FAIL),
    ],
)
def test_eks_auto_mode_verification(compute: dict[str, Any], status: Status) -> None:
    """moto's EKS lacks computeConfig, so botocore's Stubber answers describe_cluster."""
    eks = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("eks")
    with Stubber(eks) as stub:
        stub.add_response(
            "describe_cluster", {"cluster": {"name": "ambient", "computeConfig": compute}}, {"name": "ambient"}
        )
        finding = auto_mode_finding(eks, "ambient")
    assert finding.status is status
    assert finding.target == "cluster/ambient"


def test_eks_api_error_is_an_error_finding_not_a_pass() -> None:
    eks = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("eks")
    with Stubber(eks) as stub:
        stub.add_client_error("describe_cluster", service_error_code="AccessDeniedException", http_status_code=403)
        assert auto_mode_finding(eks, "ambient").status is Status.ERROR
