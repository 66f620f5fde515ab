"""The daemon's node trigger against the real API server: a new Node and a new ztunnel pod each
start a probe cycle, named in what the trigger reports."""

from __future__ import annotations

import threading
import uuid

import pytest
import yaml

from auditor.adapters.k8s.nodes import NodeTrigger
from testrigs.devtools.controlplane import KubeAPI

pytestmark = pytest.mark.kube


def test_new_node_and_new_ztunnel_trigger_a_probe_cycle(kube_api: KubeAPI, kube_namespace: str) -> None:
    triggered: list[bool] = []
    node = f"auto-{uuid.uuid4().hex[:8]}"
    with kube_api.new_client() as api:
        trigger = NodeTrigger(api, lambda: triggered.append(True), 60.0, threading.Event())
        assert trigger.check() == ()  # the baseline
        assert trigger.check() == ()
        kube_api.apply_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
        assert trigger.check() == (f"node {node} appeared",)
        kube_api.apply_text(
            yaml.safe_dump({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "z"}}),
            namespace=kube_namespace,
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "ztunnel-x", "labels": {"app": "ztunnel"}},
            "spec": {"nodeName": node, "serviceAccountName": "z", "containers": [{"name": "z", "image": "z"}]},
        }
        kube_api.apply_text(yaml.safe_dump(pod), namespace=kube_namespace)
        assert trigger.check() == (f"ztunnel pod {kube_namespace}/ztunnel-x on node {node} is new (not Ready yet)",)
    kube_api.kubectl("delete", "pod", "ztunnel-x", f"--namespace={kube_namespace}", "--grace-period=0", "--force")
    kube_api.kubectl("delete", "node", node, "--wait=false")
    assert triggered == [True, True]
