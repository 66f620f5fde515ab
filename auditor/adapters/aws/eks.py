"""Verifies the cluster really is an EKS Auto Mode cluster (``describe_cluster`` + NodePools).

Probe pods select Auto Mode nodes (semantics §6); on a cluster without Auto Mode they would stay
Pending, so the auditor reports the cluster's mode as its own finding instead of letting every
probe time out. The verdict is ``auditor.core.checks.automode``: built-in node pools, or custom
NodePools on an Auto Mode NodeClass (read by ``auditor.adapters.k8s.nodepools`` when the built-in
ones are disabled). Needs ``eks:DescribeCluster`` on the cluster and, in the cluster, list of
``nodepools.karpenter.sh`` and ``nodeclasses.eks.amazonaws.com`` (deploy/rbac.yaml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from auditor.core.checks.automode import NodePools, auto_mode_verdict
from auditor.core.checks.catalog import AUTO_MODE
from auditor.core.model import Finding, Status


def auto_mode_finding(eks: Any, cluster: str, node_pools: Callable[[], NodePools] | None = None) -> Finding:
    """``node_pools`` reads the cluster's NodePools; it is called only when the built-in ones are off."""
    try:
        described = eks.describe_cluster(name=cluster)["cluster"]
    except (ClientError, BotoCoreError) as error:
        return Finding(AUTO_MODE, f"cluster/{cluster}", Status.ERROR, f"eks:DescribeCluster failed: {error}")
    compute = described.get("computeConfig") or {}
    pools = None
    if compute.get("enabled") and not compute.get("nodePools") and node_pools is not None:
        pools = node_pools()
    return auto_mode_verdict(cluster, compute, pools)
