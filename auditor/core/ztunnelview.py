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
* ``workload_waypoints``: for each real pod, the waypoint Gateway istiod hands ztunnel as the
  pod's own (``mesh.workload_waypoint``: traffic addressed to the pod's IP goes through it), or
  ``""`` for none.
* ``plaintext_refused``: for each real pod, which of ``mtls_ports`` refuse a caller without
  identity, i.e. whose effective mTLS mode is STRICT (``mesh.effective_mtls``); istiod hands
  ztunnel the same as DENY policies converted from PeerAuthentication.
* ``mtls_ambiguous``: for each real pod, the ports whose mode istiod decides by listing order
  (equally old, disagreeing policies: ``MtlsDecision.ambiguous``): no fact to compare.
* ``policies_enforced``: for each AuthorizationPolicy without targetRefs, whether istiod hands it
  ztunnel to enforce (``authz.enforced_at_ztunnel``: not CUSTOM, AUDIT or dry-run); istiod
  writes its ``ZtunnelAccepted`` condition from the same translation.
* ``mtls_ports``: the ports asked about: every container port, every ``portLevelMtls`` key, and
  ``OTHER_PORT`` standing for any port no policy names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditor.core.authz import Caller, Point, Request, Tri, at_ztunnel, enforced_at_ztunnel, rule_matches
from auditor.core.mesh import effective_mtls, effective_waypoint, workload_waypoint
from auditor.core.snapshot import AuthorizationPolicy, Snapshot, SnapshotIndex


@dataclass(frozen=True, slots=True)
class ZtunnelFacts:
    """What the model says istiod sends ztunnel; see the module docstring for the keys."""

    workload_policies: Mapping[str, frozenset[str]]
    service_waypoints: Mapping[str, str]
    plaintext_refused: Mapping[str, frozenset[int]]
    mtls_ports: frozenset[int]
    mtls_ambiguous: Mapping[str, frozenset[int]]
    workload_waypoints: Mapping[str, str] = field(default_factory=dict)
    policies_enforced: Mapping[str, bool] = field(default_factory=dict)


# A port no container declares and no PeerAuthentication names: "every other port".
OTHER_PORT = 1


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
    pod_waypoints = {}
    for workload in snapshot.workloads:
        if workload.is_pod:
            own = workload_waypoint(workload, index).gateway
            pod_waypoints[workload.meta.key] = "" if own is None else own.meta.key
    ports = {OTHER_PORT}
    ports |= {p.container_port for w in snapshot.workloads for c in w.containers for p in c.ports}
    ports |= {port for policy in snapshot.peer_authentications for port in policy.port_level}
    refused: dict[str, frozenset[int]] = {}
    ambiguous: dict[str, frozenset[int]] = {}
    for workload in snapshot.workloads:
        if workload.is_pod:
            decisions = {port: effective_mtls(workload, port, index, root_namespace) for port in ports}
            refused[workload.meta.key] = frozenset(p for p, d in decisions.items() if d.refuses_plaintext)
            ambiguous[workload.meta.key] = frozenset(p for p, d in decisions.items() if d.ambiguous)
    enforced = {p.meta.key: enforced_at_ztunnel(p) for p in snapshot.authorization_policies if not p.target_refs}
    return ZtunnelFacts(policies, waypoints, refused, frozenset(ports), ambiguous, pod_waypoints, enforced)


def ztunnel_matches(policy: AuthorizationPolicy, principal: str | None, port: int) -> Tri:
    """Whether ztunnel's translation of the policy matches a connection from ``principal`` (SPIFFE
    id without ``spiffe://``; ``None``: no identity) to ``port``: any rule, as ``authz.rule_matches``
    reads it at ztunnel. ``None`` when the model cannot tell. Compared with the rules istiod hands
    ztunnel for the same policy (the translated rules, per policy)."""
    caller, request = Caller(principal), Request(port=port)
    results = [
        rule_matches(
            rule, caller, request, Point.ZTUNNEL, deny=policy.action == "DENY", namespace=policy.meta.namespace
        )
        for rule in policy.rules
    ]
    if True in results:
        return True
    return None if None in results else False
