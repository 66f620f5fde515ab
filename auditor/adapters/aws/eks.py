"""Verifies the cluster really is an EKS Auto Mode cluster (``describe_cluster``).

Probe pods select Auto Mode nodes (semantics §6); on a cluster without Auto Mode they would stay
Pending, so the auditor reports the cluster's mode as its own finding instead of letting every
probe time out. Checked: ``computeConfig.enabled`` and at least one node pool.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from auditor.core.checks.catalog import AUTO_MODE
from auditor.core.model import Evidence, Finding, Status


def auto_mode_finding(eks: Any, cluster: str) -> Finding:
    target = f"cluster/{cluster}"
    try:
        described = eks.describe_cluster(name=cluster)["cluster"]
    except (ClientError, BotoCoreError) as error:
        return Finding(AUTO_MODE, target, Status.ERROR, f"describe_cluster failed: {error}")
    compute = described.get("computeConfig") or {}
    enabled, pools = bool(compute.get("enabled")), list(compute.get("nodePools") or [])
    evidence = (
        Evidence(f"EKS cluster {cluster}", "computeConfig.enabled", str(enabled).lower()),
        Evidence(f"EKS cluster {cluster}", "computeConfig.nodePools", ",".join(pools) or "(none)"),
    )
    if enabled and pools:
        return Finding(
            AUTO_MODE, target, Status.PASS, f"Auto Mode enabled with node pools {', '.join(pools)}", evidence
        )
    reason = "Auto Mode is not enabled" if not enabled else "Auto Mode has no node pools"
    return Finding(AUTO_MODE, target, Status.FAIL, reason, evidence)
