"""strict-mtls.node-ztunnel against the real API server (with istiod and the workload stand-in,
which binds pods to its node ``auto-node-1`` and reports them Ready, as a kubelet would)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from testrigs.devtools.istio import IstioAPI
from tests.integration.live import audit

CHECK = "strict-mtls.node-ztunnel"
pytestmark = pytest.mark.kube


def _documents(namespace: str) -> list[dict[str, Any]]:
    labels = {"app": "cart"}
    return [
        # No controller-manager here: no "default" ServiceAccount, so pods name one of their own.
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cart", "namespace": namespace}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "cart", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"serviceAccountName": "cart", "containers": [{"name": "c", "image": "x"}]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "cart", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        # The cluster runs ztunnel as a DaemonSet (its pods are the stand-in's to start: none yet).
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "ztunnel", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "ztunnel"}},
                "template": {
                    "metadata": {"labels": {"app": "ztunnel"}},
                    "spec": {"containers": [{"name": "z", "image": "z"}]},
                },
            },
        },
    ]


def _rules(path: Path, namespace: str) -> str:
    rules = {
        "apiVersion": "mesh-auditor.dev/v1alpha1",
        "kind": "MeshPosture",
        "metadata": {"name": "nodes"},
        "spec": {"scope": [{"namespace": namespace}]},
    }
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return str(path)


def _node_finding(api: IstioAPI, rules: str, namespace: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        _, document = audit("--kubeconfig", str(api.kubeconfig), "--rules", rules)
        found: list[dict[str, Any]] = [
            f for f in document["findings"] if f["check"] == CHECK and f["target"] == f"{namespace}/cart"
        ]
        if (found and found[0]["status"] == wanted) or time.monotonic() > deadline:
            assert found, document["findings"]
            return found[0]
        time.sleep(0.5)


def test_a_node_without_a_ztunnel_pod_fails_then_passes_once_ztunnel_is_ready(
    istio_api: IstioAPI, istio_namespace: str, tmp_path: Path
) -> None:
    istio_api.kubectl("label", "namespace", istio_namespace, "istio.io/dataplane-mode=ambient")
    istio_api.apply_text(yaml.safe_dump_all(_documents(istio_namespace)))
    try:
        _fails_then_passes(istio_api, istio_namespace, tmp_path)
    finally:
        # No kubelet finalizes a deleted pod here: a ztunnel pod left Terminating would make every
        # later test's cluster "run ztunnel" (and fail its nodes). Remove them at once.
        istio_api.kubectl("delete", "daemonset,deployment", "--all", f"--namespace={istio_namespace}")
        istio_api.kubectl("delete", "pods", "--all", f"--namespace={istio_namespace}", "--grace-period=0", "--force")


def _fails_then_passes(istio_api: IstioAPI, istio_namespace: str, tmp_path: Path) -> None:
    rules = _rules(tmp_path / "rules.yaml", istio_namespace)
    failing = _node_finding(istio_api, rules, istio_namespace, "fail")
    assert failing["status"] == "fail"
    # "no ztunnel pod", or on a reused control plane an earlier test's terminating one (never Ready).
    assert failing["message"].startswith("unprotected node(s): node auto-node-1: ")
    assert failing["message"].endswith(f"(hosts Pod {istio_namespace}/cart-0)")
    ztunnel = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ztunnel-auto-node-1", "namespace": istio_namespace, "labels": {"app": "ztunnel"}},
        "spec": {"serviceAccountName": "cart", "containers": [{"name": "z", "image": "z"}]},
    }
    istio_api.apply_text(yaml.safe_dump(ztunnel))
    passing = _node_finding(istio_api, rules, istio_namespace, "pass")
    assert passing["status"] == "pass"
    assert {(e["object"], e["value"]) for e in passing["evidence"]} == {
        ("Node auto-node-1", f"Pod {istio_namespace}/ztunnel-auto-node-1")
    }
