"""The lab's nodes: names, Node objects, which node a pod runs on, each node's ztunnel pod (pure).

Role: a cluster of EKS Auto Mode nodes, as the API server shows it. ``lab.py`` and the lab's
controllers (``controllers.py``) use these answers for Deployment replicas (spread round-robin
over the nodes: replica ``i`` of every Deployment on node ``i mod n``, so two replicas always sit
on two nodes), ``kubelet.py`` for probe pods (the scheduler's ``PodTopologySpread`` on
``kubernetes.io/hostname``), and any data plane (the emulated one here, or the real ztunnel of
``realnode.py``) can name its nodes the same way.

Each node runs one ztunnel, shown as the Pod ``istio-system/ztunnel-<node>`` labelled
``app: ztunnel`` (what the ztunnel DaemonSet would run there). On the emulated data plane that
ztunnel is the set of in-pod Envoys of the node's captured pods: real ztunnel in in-pod mode
also opens its listeners inside each captured pod's network namespace, so a pod the node's
istio-cni never redirected (fault ``uncaptured-endpoint``) is exactly a pod without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NODE_PREFIX = "malab-auto-node-"
DEFAULT_NODES = 2
MAX_NODES = 16
HOSTNAME = "kubernetes.io/hostname"
# EKS Auto Mode's node labels (semantics §6): probe pods' default nodeSelector matches them.
AUTO_MODE_LABELS = {"eks.amazonaws.com/compute-type": "auto", "karpenter.sh/nodepool": "general-purpose"}
ZTUNNEL_NAMESPACE = "istio-system"
ZTUNNEL_SERVICE_ACCOUNT = "ztunnel"
# On every API object the lab's controllers create (replica Pods, ztunnel Pods, EndpointSlices):
# the lab's data plane follows the Deployments, never these mirrors of them.
OWNED_BY = "mesh-lab.dev/owned-by"

Obj = dict[str, Any]


class NodeError(ValueError):
    """A node count the lab cannot run; the message says the allowed range."""


def names(count: int) -> tuple[str, ...]:
    """``malab-auto-node-1`` .. ``-<count>``; raises ``NodeError`` outside 1..``MAX_NODES``."""
    if not 1 <= count <= MAX_NODES:
        raise NodeError(f"the lab runs 1 to {MAX_NODES} nodes, not {count}")
    return tuple(f"{NODE_PREFIX}{index}" for index in range(1, count + 1))


def labels(node: str) -> dict[str, str]:
    """The labels of an Auto Mode node called ``node``."""
    return {**AUTO_MODE_LABELS, HOSTNAME: node, "kubernetes.io/os": "linux"}


def node_object(node: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels(node)}}


def ztunnel_pod_name(node: str) -> str:
    return f"ztunnel-{node}"


def ztunnel_pod(node: str) -> Obj:
    """The Pod the ztunnel DaemonSet would run on ``node`` (status is written separately)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ztunnel_pod_name(node),
            "namespace": ZTUNNEL_NAMESPACE,
            # As Istio's ztunnel chart labels its pods (manifests/charts/ztunnel daemonset.yaml).
            "labels": {
                "app": "ztunnel",
                "app.kubernetes.io/name": "ztunnel",
                "istio.io/dataplane-mode": "none",
                "sidecar.istio.io/inject": "false",
                OWNED_BY: "ztunnel",
            },
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": ZTUNNEL_SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "containers": [{"name": "istio-proxy", "image": "istio/ztunnel"}],
        },
    }


def replica_node(index: int, nodes: Sequence[str]) -> str:
    """Where replica ``index`` of a Deployment runs: round-robin, so n replicas cover min(n, nodes) nodes."""
    return nodes[index % len(nodes)]


def _selected(selector: Mapping[str, Any], pod_labels: Mapping[str, str]) -> bool:
    match = selector.get("matchLabels") or {}
    if any(pod_labels.get(str(k)) != str(v) for k, v in match.items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = str(expression.get("key")), expression.get("operator"), expression.get("values") or []
        present = key in pod_labels
        if (operator == "In" and not (present and pod_labels[key] in values)) or (
            operator == "NotIn" and present and pod_labels[key] in values
        ):
            return False
        if (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def schedule(pod: Mapping[str, Any], nodes: Sequence[str], placed: Iterable[Mapping[str, Any]]) -> str:
    """The node for ``pod`` among ``nodes``, given the pods already bound (``placed``, any namespace).

    The scheduler's PodTopologySpread on ``kubernetes.io/hostname``: for each such constraint,
    count the bound pods of the pod's namespace its ``labelSelector`` selects, per node, and take
    the node with the fewest (the sum over constraints; ties go to the first node in order). With
    ``ScheduleAnyway`` or ``DoNotSchedule`` alike every node stays possible here, since the
    fewest-first choice never raises the skew above 1. A pod without such a constraint goes to the
    first node.
    """
    spec = pod.get("spec") or {}
    namespace = (pod.get("metadata") or {}).get("namespace")
    constraints = [c for c in spec.get("topologySpreadConstraints") or [] if c.get("topologyKey") == HOSTNAME]
    counts = dict.fromkeys(nodes, 0)
    bound = [
        p
        for p in placed
        if (p.get("metadata") or {}).get("namespace") == namespace and (p.get("spec") or {}).get("nodeName") in counts
    ]
    for constraint in constraints:
        selector = constraint.get("labelSelector") or {}
        for other in bound:
            if _selected(selector, (other.get("metadata") or {}).get("labels") or {}):
                counts[other["spec"]["nodeName"]] += 1
    return min(nodes, key=lambda node: (counts[node], nodes.index(node)))
