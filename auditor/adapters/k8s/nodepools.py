"""Reads EKS Auto Mode NodePools and NodeClasses for the Auto Mode check (auditor/adapters/aws/eks.py).

Needs list of ``nodepools.karpenter.sh`` and ``nodeclasses.eks.amazonaws.com`` (deploy/rbac.yaml,
mesh-auditor-automode). A refusal or an absent API becomes ``NodePools.problem``, which the
verdict turns into ERROR, never PASS or FAIL.
"""

from __future__ import annotations

from typing import Any

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.k8s.resources import NODE_CLASS, NODE_POOL
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.core.checks.automode import NodePools, node_pool_refs


def read_node_pools(api: Any) -> NodePools:
    """NodePools and Auto Mode NodeClass names from the cluster's API; problems become ``problem``."""
    try:
        pools = api_calls.get_json(api, NODE_POOL.list_path).get("items") or []
        classes = api_calls.get_json(api, NODE_CLASS.list_path).get("items") or []
    except ApiRefused as error:
        return NodePools(
            problem=f"list {NODE_POOL.qualified} / {NODE_CLASS.qualified}: HTTP {error.status} {error.message}"
        )
    except ApiUnavailable as error:
        return NodePools(problem=str(error))
    names = frozenset(str((c.get("metadata") or {}).get("name", "")) for c in classes)
    return NodePools(pools=node_pool_refs(pools), node_classes=names)
