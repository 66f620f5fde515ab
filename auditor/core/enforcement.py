"""Enforcement points (#13): which nodes exist and which ztunnel pod serves each, and what
changed between two listings (a new node; a ztunnel pod replaced, or Ready again).

Pure: raw Node and Pod JSON in (as listed by the daemon's node trigger), names out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ZtunnelPod:
    """One ztunnel pod: ``name`` (``"namespace/name"``), its ``uid`` (a replaced pod has a new one) and whether its
    Ready condition is True.
    """

    name: str  # "<namespace>/<name>"
    uid: str
    ready: bool


@dataclass(frozen=True, slots=True)
class EnforcementPoints:
    """One listing: the Node names and, per node name, the ztunnel pod that serves it (the Ready one when there are
    two).
    """

    nodes: frozenset[str]
    ztunnels: Mapping[str, ZtunnelPod]  # node -> its ztunnel pod (the Ready one when there are two)


def enforcement_points(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> EnforcementPoints:
    """The ``EnforcementPoints`` of listed Node and ztunnel Pod JSON objects (pods being deleted or not yet scheduled
    are left out). Raises ``KeyError`` for an object without ``metadata.name``.
    """
    names = frozenset(str(n["metadata"]["name"]) for n in nodes)
    ztunnels: dict[str, ZtunnelPod] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod["metadata"].get("deletionTimestamp")):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        meta = pod["metadata"]
        candidate = ZtunnelPod(f"{meta.get('namespace', '')}/{meta['name']}", str(meta.get("uid", "")), ready)
        if node not in ztunnels or (ready and not ztunnels[node].ready):
            ztunnels[node] = candidate
    return EnforcementPoints(names, ztunnels)


def changed_nodes(before: EnforcementPoints, after: EnforcementPoints) -> tuple[str, ...]:
    """What is new since ``before``: nodes that appeared, ztunnel pods that were replaced, and
    ztunnel pods that became Ready, each named with its node and pod."""
    changes = [f"node {n} appeared" for n in sorted(after.nodes - before.nodes)]
    for node, pod in sorted(after.ztunnels.items()):
        previous = before.ztunnels.get(node)
        if previous is None or previous.uid != pod.uid:
            changes.append(f"ztunnel pod {pod.name} on node {node} is new" + ("" if pod.ready else " (not Ready yet)"))
        elif pod.ready and not previous.ready:
            changes.append(f"ztunnel pod {pod.name} on node {node} became Ready")
    return tuple(changes)


def changed_node_names(before: EnforcementPoints, after: EnforcementPoints) -> frozenset[str]:
    """The nodes ``changed_nodes`` reports on: appeared, or whose ztunnel pod is new or became Ready."""
    names = set(after.nodes - before.nodes)
    for node, pod in after.ztunnels.items():
        previous = before.ztunnels.get(node)
        if previous is None or previous.uid != pod.uid or (pod.ready and not previous.ready):
            names.add(node)
    return frozenset(names)
