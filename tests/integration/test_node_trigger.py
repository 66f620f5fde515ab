"""The daemon's node trigger against the real API server: it WATCHES Nodes and ztunnel pods, so a
new Node, a new ztunnel pod and a ztunnel pod becoming Ready each start a probe cycle within a
bounded delay of the API write (measured here, the writes made in-process), named (node and pod) in what the trigger reports."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import yaml
from kubernetes import client

from auditor.adapters import kubeapi
from auditor.adapters.k8s.nodes import NodeTrigger
from testrigs.devtools.controlplane import KubeAPI

pytestmark = pytest.mark.kube

BOUND_S = 2.0  # event to probe cycle: a watch delivers in milliseconds; 2 s leaves room on a shared CPU


def _wait(condition: threading.Event, since: float) -> float:
    """Seconds from ``since`` to the trigger, failing after BOUND_S."""
    assert condition.wait(BOUND_S), f"no probe cycle within {BOUND_S} s"
    return time.monotonic() - since


def test_new_node_and_ztunnel_pod_trigger_a_probe_cycle_within_the_bound(
    kube_api: KubeAPI, kube_namespace: str
) -> None:
    fired = threading.Event()
    stop = threading.Event()
    node = f"auto-{uuid.uuid4().hex[:8]}"
    with kube_api.new_client() as api:
        nodes: list[frozenset[str]] = []

        def probe(_changes: tuple[str, ...], names: frozenset[str]) -> None:
            nodes.append(names)
            fired.set()

        trigger = NodeTrigger(api, probe, 5.0, stop)
        trigger.start()
        try:
            assert trigger.wait_baseline(10.0)
            assert not fired.wait(0.3)  # the baseline itself triggers nothing
            started = time.monotonic()
            kubeapi.send_json(
                api, "POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
            )
            node_s = _wait(fired, started)
            assert [c for _, c in trigger.changes] == [f"node {node} appeared"]
            assert nodes == [frozenset({node})]
            fired.clear()
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
            started = time.monotonic()
            kubeapi.send_json(api, "POST", f"/api/v1/namespaces/{kube_namespace}/pods", pod)
            pod_s = _wait(fired, started)
            assert (
                trigger.changes[-1][1]
                == f"ztunnel pod {kube_namespace}/ztunnel-x on node {node} is new (not Ready yet)"
            )
            fired.clear()
            ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}], "phase": "Running"}}
            started = time.monotonic()
            client.CoreV1Api(api).patch_namespaced_pod_status("ztunnel-x", kube_namespace, ready)
            ready_s = _wait(fired, started)
            assert trigger.changes[-1][1] == f"ztunnel pod {kube_namespace}/ztunnel-x on node {node} became Ready"
            print(
                f"\nevent to probe cycle: new node {node_s:.3f} s, new ztunnel pod {pod_s:.3f} s, Ready {ready_s:.3f} s"
            )
        finally:
            stop.set()
            kube_api.kubectl(
                "delete", "pod", "ztunnel-x", f"--namespace={kube_namespace}", "--grace-period=0", "--force"
            )
            kube_api.kubectl("delete", "node", node, "--wait=false")
            trigger.join(1.0)


def test_a_server_that_does_not_answer_triggers_nothing_and_is_retried(kube_api: KubeAPI) -> None:
    """No answer is no change: nothing is triggered, and the threads retry (backoff) until stopped."""
    fired = threading.Event()
    stop = threading.Event()
    with kube_api.new_client() as api:
        api.configuration.host = "https://127.0.0.1:1"  # nothing listens there
        trigger = NodeTrigger(api, lambda _changes, _nodes: fired.set(), 0.5, stop)
        trigger.start()
        try:
            assert not trigger.wait_baseline(1.5)
            assert not fired.is_set()
        finally:
            stop.set()
            trigger.join(5.0)
    assert not any(t.is_alive() for t in trigger._threads)
