"""The Auto Mode check on a cluster whose built-in NodePools are disabled: it reads the real
NodePool API (Karpenter's CRD from its Go module) as the auditor's ServiceAccount, with deploy/'s
RBAC, and passes only when a NodePool uses an existing Auto Mode NodeClass."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from auditor.adapters.aws.eks import auto_mode_finding
from auditor.adapters.k8s.nodepools import read_node_pools
from auditor.adapters.kubeapi import build_api_client
from auditor.core.model import Finding, Status
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT
from tests.crd_modules import nodepool_crd

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def auditor_kubeconfig(kube_api: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kube_api.apply(nodepool_crd(), ROOT / "tests" / "fixtures" / "crds" / "eks-nodeclasses.yaml")
    for crd in ("nodepools.karpenter.sh", "nodeclasses.eks.amazonaws.com"):
        kube_api.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    for name in ("namespaces.yaml", "serviceaccounts.yaml", "rbac.yaml"):
        kube_api.apply(ROOT / "deploy" / name)
    token = kube_api.kubectl("create", "token", "mesh-auditor", "--namespace=mesh-auditor", "--duration=1h").strip()
    config = copy.deepcopy(yaml.safe_load(kube_api.kubeconfig.read_text(encoding="utf-8")))
    config["users"] = [{"name": "mesh-auditor", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "mesh-auditor"
    path = tmp_path_factory.mktemp("auditor") / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _node_pool(name: str, group: str, kind: str, node_class: str) -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "nodeClassRef": {"group": group, "kind": kind, "name": node_class},
                    "requirements": [
                        {"key": "eks.amazonaws.com/instance-category", "operator": "In", "values": ["c", "m"]}
                    ],
                }
            }
        },
    }


def _audit(kubeconfig: Path) -> Finding:
    eks = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-west-2"
    ).client("eks")
    with Stubber(eks) as stub, build_api_client(str(kubeconfig), None) as api:
        stub.add_response(
            "describe_cluster",
            {"cluster": {"name": "custom", "computeConfig": {"enabled": True, "nodePools": []}}},
            {"name": "custom"},
        )
        return auto_mode_finding(eks, "custom", lambda: read_node_pools(api))


def test_custom_node_pools_on_an_auto_mode_node_class_pass(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    pools = [
        _node_pool(f"oss-{suffix}", "karpenter.k8s.aws", "EC2NodeClass", "default"),
        _node_pool(f"custom-{suffix}", "eks.amazonaws.com", "NodeClass", f"private-{suffix}"),
    ]
    node_class = {"apiVersion": "eks.amazonaws.com/v1", "kind": "NodeClass", "metadata": {"name": f"private-{suffix}"}}
    try:
        kube_api.apply_text(yaml.safe_dump_all(pools))
        finding = _audit(auditor_kubeconfig)
        assert finding.status is Status.FAIL, finding.message  # its NodeClass does not exist yet
        kube_api.apply_text(yaml.safe_dump(node_class))
        finding = _audit(auditor_kubeconfig)
        assert finding.status is Status.PASS, finding.message
        assert f"custom-{suffix}" in finding.message
        assert f"oss-{suffix}" not in finding.message  # open-source Karpenter's node class does not count
    finally:
        for pool in pools:
            kube_api.kubectl("delete", "nodepool", pool["metadata"]["name"], "--ignore-not-found")
        kube_api.kubectl("delete", "nodeclass", f"private-{suffix}", "--ignore-not-found")


def test_without_the_list_permission_the_check_errors_naming_it(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    kube_api.kubectl("delete", "clusterrolebinding", "mesh-auditor-automode")
    try:
        finding = _audit(auditor_kubeconfig)
    finally:
        kube_api.apply(ROOT / "deploy" / "rbac.yaml")
    assert finding.status is Status.ERROR, finding.message
    assert "list nodepools.karpenter.sh" in finding.message
    assert "403" in finding.message
