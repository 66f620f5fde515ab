"""The core's own account of what istiod hands ztunnel, in a form comparable with istiod's.

Role: the differential test (tests/integration/test_translation_oracle.py) compares these facts
with what the real istiod computes for the same objects (its ``/debug/ambientz``: the workloads
with the authorization policies ztunnel enforces for them, and the services with their
waypoint). A disagreement means the model's reading of Istio is wrong until shown otherwise.
Pure: built from a ``Snapshot`` with the public functions of ``authz`` and ``mesh`` only.

Facts (keys are ``namespace/name``):

* ``workload_policies``: for each real pod (``Workload.is_pod``), the AuthorizationPolicies
  ztunnel enforces for it (``authz.at_ztunnel``). Policies translated from PeerAuthentication
  are not AuthorizationPolicies and are not listed.
* ``service_waypoints``: for each Service, the waypoint Gateway its traffic really goes
  through (``mesh.effective_waypoint``), or ``""`` for none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from auditor.core.authz import at_ztunnel
from auditor.core.mesh import effective_waypoint
from auditor.core.snapshot import Snapshot, SnapshotIndex


@dataclass(frozen=True, slots=True)
class ZtunnelFacts:
    """What the model says istiod sends ztunnel; see the module docstring for the keys."""

    workload_policies: Mapping[str, frozenset[str]]
    service_waypoints: Mapping[str, str]


def ztunnel_facts(snapshot: Snapshot, root_namespace: str) -> ZtunnelFacts:
    """The model's facts for every pod and Service of the snapshot."""
    index = SnapshotIndex(snapshot)
    policies = {
        w.meta.key: frozenset(p.meta.key for p in at_ztunnel(w, index, root_namespace).policies)
        for w in snapshot.workloads
        if w.is_pod
    }
    waypoints = {}
    for service in snapshot.services:
        gateway = effective_waypoint(service, index).gateway
        waypoints[f"{service.meta.namespace}/{service.meta.name}"] = (
            "" if gateway is None else f"{gateway.meta.namespace}/{gateway.meta.name}"
        )
    return ZtunnelFacts(policies, waypoints)
