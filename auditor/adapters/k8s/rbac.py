"""Renders the auditor's read-only ClusterRole from ``SNAPSHOT_RESOURCES`` (plus ``list`` of
Nodes for the daemon's node trigger).

The Helm chart's ``templates/rbac.yaml`` holds the rendered rules (and ``deploy/rbac.yaml``,
rendered from the chart); tests compare them with this function, so the shipped permissions are
exactly what the reader lists, one rule per resource (so removing one rule removes one
permission, which the RBAC test proves the audit reports). Print them with
``python -m auditor.adapters.k8s.rbac``.
"""

from __future__ import annotations

from typing import Any

import yaml

from auditor.adapters.k8s.resources import NODE, NODE_VERBS, SNAPSHOT_RESOURCES

READER_ROLE = "mesh-auditor-reader"
READ_VERBS = ("list", "watch")


def reader_cluster_role() -> dict[str, Any]:
    """The ClusterRole the auditor needs to read a snapshot: ``READ_VERBS`` on each
    resource of ``SNAPSHOT_RESOURCES`` and nothing else (a dict, as in the Helm chart)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": READER_ROLE, "labels": {"app.kubernetes.io/part-of": "mesh-auditor"}},
        "rules": [
            *({"apiGroups": [r.group], "resources": [r.plural], "verbs": list(READ_VERBS)} for r in SNAPSHOT_RESOURCES),
            # The daemon's node trigger (auditor/adapters/k8s/nodes.py): a new node starts a probe cycle.
            {"apiGroups": [NODE.group], "resources": [NODE.plural], "verbs": list(NODE_VERBS)},
        ],
    }


if __name__ == "__main__":
    print(yaml.safe_dump(reader_cluster_role(), sort_keys=False), end="")
