"""The EKS Auto Mode check's verdict (pure): is the cluster an Auto Mode cluster with node pools?

AWS documents two valid Auto Mode setups (EKS user guide, "Create a Node Pool for EKS Auto Mode"
and "Disable built-in NodePools"): the built-in NodePools (``computeConfig.nodePools``), or the
built-in ones disabled in favour of custom ``karpenter.sh`` NodePools whose ``nodeClassRef``
points at an Auto Mode ``NodeClass`` (group ``eks.amazonaws.com``). Both PASS. A NodePool that
refers to another kind of node class (e.g. open-source Karpenter's ``EC2NodeClass``) does not
run Auto Mode nodes and does not count. Inputs that could not be read make the verdict ERROR,
never PASS and never FAIL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from auditor.core.checks.catalog import AUTO_MODE
from auditor.core.model import Evidence, Finding, Fix, FixDocument, Status

_NOT_KUBERNETES = (
    "No YAML fix: Auto Mode is a setting of the EKS cluster {cluster} in the AWS API (computeConfig), not a "
    "Kubernetes object; enable it with its built-in node pools (console, aws eks update-cluster-config, or your "
    "infrastructure code), or set AUDITOR_PROBES__NODE_SELECTOR for the nodes you have."
)

AUTO_MODE_NODE_CLASS_GROUP = "eks.amazonaws.com"
AUTO_MODE_NODE_CLASS_KIND = "NodeClass"


@dataclass(frozen=True, slots=True)
class NodePoolRef:
    """One ``karpenter.sh`` NodePool and the node class its template refers to."""

    name: str
    node_class_group: str
    node_class_kind: str
    node_class_name: str


@dataclass(frozen=True, slots=True)
class NodePools:
    """The cluster's custom NodePools and Auto Mode NodeClass names, or why they could not be read."""

    pools: tuple[NodePoolRef, ...] = ()
    node_classes: frozenset[str] = frozenset()
    problem: str | None = None


def auto_mode_verdict(cluster: str, compute: Mapping[str, Any] | None, node_pools: NodePools | None) -> Finding:
    """``compute`` is ``describe_cluster``'s ``computeConfig`` (None/empty = not Auto Mode);
    ``node_pools`` is what the cluster's API said (None = not looked at)."""
    target = f"cluster/{cluster}"
    compute = compute or {}
    enabled, built_in = bool(compute.get("enabled")), [str(p) for p in compute.get("nodePools") or []]
    evidence = [
        Evidence(f"EKS cluster {cluster}", "computeConfig.enabled", str(enabled).lower()),
        Evidence(f"EKS cluster {cluster}", "computeConfig.nodePools", ",".join(built_in) or "(none)"),
    ]
    fix = Fix(note=_NOT_KUBERNETES.format(cluster=cluster))
    if not enabled:
        return Finding(AUTO_MODE, target, Status.FAIL, "Auto Mode is not enabled", tuple(evidence), fix=fix)
    if built_in:
        message = f"the EKS API reports Auto Mode enabled with built-in node pools {', '.join(built_in)}"
        return Finding(AUTO_MODE, target, Status.PASS, message, tuple(evidence))
    if node_pools is None or node_pools.problem is not None:
        reason = node_pools.problem if node_pools is not None else "NodePools were not read"
        message = f"Auto Mode enabled without built-in node pools, and custom NodePools could not be read: {reason}"
        unread = Fix(note=f"No YAML fix: nothing was proven wrong; the auditor could not read the NodePools ({reason})")
        return Finding(AUTO_MODE, target, Status.ERROR, message, tuple(evidence), fix=unread)
    auto: list[str] = []
    other: list[str] = []
    for pool in node_pools.pools:
        ref = f"{pool.node_class_group}/{pool.node_class_kind}/{pool.node_class_name}"
        is_auto = (pool.node_class_group, pool.node_class_kind) == (
            AUTO_MODE_NODE_CLASS_GROUP,
            AUTO_MODE_NODE_CLASS_KIND,
        )
        exists = pool.node_class_name in node_pools.node_classes
        note = "" if not is_auto or exists else "its NodeClass does not exist"
        evidence.append(Evidence(f"NodePool {pool.name}", "spec.template.spec.nodeClassRef", ref, note))
        (auto if is_auto and exists else other).append(pool.name)
    if auto:
        message = (
            f"the EKS API reports Auto Mode enabled, built-in node pools disabled, and the cluster has custom "
            f"node pools {', '.join(sorted(auto))} on an existing Auto Mode NodeClass"
        )
        return Finding(AUTO_MODE, target, Status.PASS, message, tuple(evidence))
    message = "Auto Mode has no node pools: the built-in ones are disabled and no NodePool uses an Auto Mode NodeClass"
    if other:
        message += f" ({', '.join(sorted(other))} do not)"
    return Finding(
        AUTO_MODE, target, Status.FAIL, message, tuple(evidence), fix=_node_class_fix(other, node_pools) or fix
    )


def _node_class_fix(pools: list[str], node_pools: NodePools) -> Fix | None:
    """The custom NodePools pointed at an existing Auto Mode NodeClass (merge patches), when there is one."""
    if not pools or not node_pools.node_classes:
        return None
    node_class = sorted(node_pools.node_classes)[0]
    ref = {"group": AUTO_MODE_NODE_CLASS_GROUP, "kind": AUTO_MODE_NODE_CLASS_KIND, "name": node_class}
    documents = tuple(
        FixDocument(
            {
                "apiVersion": "karpenter.sh/v1",
                "kind": "NodePool",
                "metadata": {"name": name},
                "spec": {"template": {"spec": {"nodeClassRef": ref}}},
            },
            patch=True,
        )
        for name in sorted(pools)
    )
    note = f"Patch (merge) each NodePool to use the Auto Mode NodeClass {node_class}, which the cluster has."
    return Fix(documents, note)


def node_pool_refs(items: Sequence[Mapping[str, Any]]) -> tuple[NodePoolRef, ...]:
    """NodePool objects (``karpenter.sh/v1``) as refs; a missing nodeClassRef yields empty fields."""
    refs = []
    for item in items:
        spec = ((item.get("spec") or {}).get("template") or {}).get("spec") or {}
        ref = spec.get("nodeClassRef") or {}
        refs.append(
            NodePoolRef(
                name=str((item.get("metadata") or {}).get("name", "")),
                node_class_group=str(ref.get("group", "")),
                node_class_kind=str(ref.get("kind", "")),
                node_class_name=str(ref.get("name", "")),
            )
        )
    return tuple(sorted(refs, key=lambda r: r.name))
