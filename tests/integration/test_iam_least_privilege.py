"""IAM least privilege, proven: the daemon's AWS sinks against moto's server with IAM enforced,
as a principal holding exactly the policy of the Terraform module (infra/modules/cluster).

The policy is read from the file the module renders with ``templatefile()``, never a copy. Every
sink works with it; without any one statement exactly the sink that needs it fails, with an
error naming the action. moto's IAM has two gaps, bridged here and nowhere else (``_moto_dialect``):
it names CloudWatch's actions after the endpoint (``monitoring:``) rather than IAM's
``cloudwatch:``, and it matches ``Resource`` for S3 only (every other service's request is
checked against ``*``). The resource scoping and the CloudWatch namespace condition that moto
does not evaluate are asserted on the policy itself.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from auditor.adapters.aws.archive import ArchiveOptions, S3Archive
from auditor.adapters.aws.eks import auto_mode_finding
from auditor.adapters.aws.metrics import NAMESPACE, CloudWatchMetrics
from auditor.adapters.aws.securityhub import HubOptions, SecurityHubSink
from auditor.core.checks.catalog import CAPTURED
from auditor.core.model import Finding, Status
from tests.cases import ROOT

MODULE = ROOT / "infra" / "modules" / "cluster"
TEMPLATE = MODULE / "auditor-policy.json.tftpl"
REGION = "us-west-2"
ACCOUNT = "123456789012"  # moto's account
CLUSTER = "ambient"
BUCKET = "mesh-auditor-evidence"
PREFIX = "mesh-auditor/reports"
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
VALUES = {
    "partition": "aws",
    "account": ACCOUNT,
    "region": REGION,
    "cluster": CLUSTER,
    "bucket": BUCKET,
    "prefix": PREFIX,
    "metrics_namespace": NAMESPACE,
}
# Which sink each statement serves.
SINK_OF = {
    "ArchiveEvidence": "s3-archive",
    "ImportFindings": "security-hub",
    "ReadFindings": "security-hub",
    "PutMetrics": "cloudwatch",
    "DescribeCluster": "eks-auto-mode",
}


def module_policy() -> dict[str, Any]:
    """The policy document exactly as ``templatefile()`` renders it for the values above."""
    auditor_tf = (MODULE / "auditor.tf").read_text(encoding="utf-8")
    call = re.search(
        r'resource "aws_iam_role_policy" "auditor" \{.*?policy\s*=\s*templatefile\("\$\{path\.module\}/'
        r'auditor-policy\.json\.tftpl",\s*\{(?P<vars>.*?)\}\)',
        auditor_tf,
        re.DOTALL,
    )
    assert call is not None, "infra/modules/cluster/auditor.tf no longer renders auditor-policy.json.tftpl"
    passed = set(re.findall(r"^\s*(\w+)\s*=", call.group("vars"), re.MULTILINE))
    text = TEMPLATE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used == passed == set(VALUES), (used, passed)
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: VALUES[m.group(1)], text)
    policy: dict[str, Any] = json.loads(rendered)
    return policy


def _moto_dialect(policy: dict[str, Any]) -> dict[str, Any]:
    translated = copy.deepcopy(policy)
    for statement in translated["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = [re.sub(r"^cloudwatch:", "monitoring:", a) for a in actions]
        if not all(a.startswith("s3:") for a in actions):
            statement["Resource"] = "*"
    return translated


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def test_each_statement_is_scoped_to_the_one_thing_its_sink_touches() -> None:
    """What moto cannot check: resources, the namespace condition, no wildcard actions."""
    statements = {s["Sid"]: s for s in module_policy()["Statement"]}
    assert set(statements) == set(SINK_OF)
    assert all(s["Effect"] == "Allow" for s in statements.values())
    assert all("*" not in a for s in statements.values() for a in _actions(s))
    expected = {
        "ArchiveEvidence": f"arn:aws:s3:::{BUCKET}/{PREFIX}/{ACCOUNT}/{REGION}/{CLUSTER}/*",
        "ImportFindings": f"arn:aws:securityhub:{REGION}:{ACCOUNT}:product/{ACCOUNT}/default",
        "ReadFindings": f"arn:aws:securityhub:{REGION}:{ACCOUNT}:hub/default",
        "DescribeCluster": f"arn:aws:eks:{REGION}:{ACCOUNT}:cluster/{CLUSTER}",
        # PutMetricData has no resource-level permissions; the namespace condition limits it.
        "PutMetrics": "*",
    }
    assert {sid: s["Resource"] for sid, s in statements.items()} == expected
    assert statements["PutMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": NAMESPACE}}
    assert sorted(_actions(statements["ArchiveEvidence"])) == ["s3:PutObject", "s3:PutObjectRetention"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _client(endpoint: str, service: str, key: tuple[str, str] = ("testing", "testing")) -> Any:
    client = boto3.session.Session(aws_access_key_id=key[0], aws_secret_access_key=key[1], region_name=REGION).client(
        service, endpoint_url=endpoint
    )
    if service == "eks":
        # moto recomputes the signature of a bodyless rest-json GET over its parsed parameters; the
        # payload hash header (valid SigV4 that AWS accepts too) makes it use the real, empty body.
        def payload_hash(request: Any, **_: Any) -> None:
            request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(request.body or b"").hexdigest()

        client.meta.events.register_first("before-sign.eks", payload_hash)
    return client


@pytest.fixture(scope="module")
def enforced(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """moto with the evidence bucket, a cluster and one IAM user per policy variant; then IAM on.

    Yields the endpoint and the access key of each variant: "full" and "without <Sid>".
    """
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _client(endpoint, "s3").create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}, ObjectLockEnabledForBucket=True
        )
        _client(endpoint, "eks").create_cluster(
            name=CLUSTER, roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks", resourcesVpcConfig={}
        )
        iam = _client(endpoint, "iam")
        policy = module_policy()
        variants = {"full": policy}
        for statement in policy["Statement"]:
            reduced = copy.deepcopy(policy)
            reduced["Statement"] = [s for s in reduced["Statement"] if s["Sid"] != statement["Sid"]]
            variants[f"without {statement['Sid']}"] = reduced
        keys = {}
        for index, (name, document) in enumerate(variants.items()):
            user = f"auditor-{index}"
            iam.create_user(UserName=user)
            iam.put_user_policy(
                UserName=user, PolicyName="mesh-auditor", PolicyDocument=json.dumps(_moto_dialect(document))
            )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        # IAM enforcement from the next request on (moto's INITIAL_NO_AUTH_ACTION_COUNT = 0).
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        try:
            yield endpoint, keys
        finally:
            # The setting is process-wide: other moto servers in this test run must not inherit it.
            requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()
    finally:
        server.stop()


def _sinks(endpoint: str, key: tuple[str, str]) -> dict[str, Callable[[], None]]:
    """Each sink's work for one audit cycle; each raises an error text when it failed."""

    def archive() -> None:
        options = ArchiveOptions(bucket=BUCKET, cluster=CLUSTER, account_id=ACCOUNT, region=REGION, prefix=PREFIX)
        S3Archive(_client(endpoint, "s3", key), options).put_run({"summary": {}}, "run-1", NOW)

    def hub() -> None:
        sink = SecurityHubSink(_client(endpoint, "securityhub", key), HubOptions(ACCOUNT, REGION, CLUSTER))
        refused = sink.publish([Finding(CAPTURED, "default/orders", Status.FAIL, "opts out")], NOW)
        assert refused == []

    def metrics() -> None:
        findings = [Finding(CAPTURED, "default/orders", Status.FAIL, "opts out")]
        CloudWatchMetrics(_client(endpoint, "cloudwatch", key), CLUSTER).put_cycle(
            findings, alerts_open=1, duration_s=1.0
        )

    def eks() -> None:
        finding = auto_mode_finding(_client(endpoint, "eks", key), CLUSTER)
        if finding.status is Status.ERROR:  # moto's cluster has no computeConfig: FAIL means the call worked
            raise RuntimeError(finding.message)

    return {"s3-archive": archive, "security-hub": hub, "cloudwatch": metrics, "eks-auto-mode": eks}


def _run(endpoint: str, key: tuple[str, str]) -> dict[str, str | None]:
    """Each sink's error text, or None when it worked."""
    outcome: dict[str, str | None] = {}
    for name, work in _sinks(endpoint, key).items():
        try:
            work()
            outcome[name] = None
        except (ClientError, RuntimeError) as error:
            outcome[name] = str(error)
    return outcome


def test_every_sink_works_with_exactly_the_module_policy(
    enforced: tuple[str, dict[str, tuple[str, str]]],
) -> None:
    endpoint, keys = enforced
    assert _run(endpoint, keys["full"]) == dict.fromkeys(SINK_OF.values())


@pytest.mark.parametrize("sid", list(SINK_OF))
def test_without_one_statement_exactly_its_sink_fails_naming_the_action(
    enforced: tuple[str, dict[str, tuple[str, str]]], sid: str
) -> None:
    endpoint, keys = enforced
    outcome = _run(endpoint, keys[f"without {sid}"])
    failed = {name for name, error in outcome.items() if error is not None}
    assert failed == {SINK_OF[sid]}, outcome
    error = outcome[SINK_OF[sid]] or ""
    statement = next(s for s in module_policy()["Statement"] if s["Sid"] == sid)
    operations = [a.split(":", 1)[1] for a in _actions(statement)]
    assert "AccessDenied" in error or "not authorized" in error, error
    assert any(operation in error for operation in operations), (operations, error)
    print(f"\nIAM without {sid}: {SINK_OF[sid]} fails: {error[:160]}")
