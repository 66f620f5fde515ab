"""The core's own account of what istiod hands a waypoint, in a form comparable with istiod's.

Role: the differential test (tests/integration/test_waypoint_oracle.py) compares these facts
with what the real istiod hands a waypoint proxy for the same objects (its listeners over XDS,
the RBAC filters of each bound Service's chain, evaluated as Envoy does in
``testrigs.devtools.waypointxds``). A disagreement means the model's reading of Istio is wrong
until shown otherwise. Pure: built from a ``Snapshot`` through the very path the checks take
(``checks.reach.route_for``: ``mesh.effective_waypoint`` then ``authz.at_waypoint``; the
waypoint hop's verdict is ``checks.reach.waypoint_decision``, the one ``checks.reach`` takes), not
through a re-reading of its own.

Facts (keys are ``namespace/name`` of a Service):

* ``waypoint``: the Gateway (``namespace/name``) the Service's traffic goes through.
* ``ports``: the Service's ports (numbers), each a chain of its own at the waypoint.
* ``policies``: the AuthorizationPolicies the waypoint enforces for the Service
  (``Route.at_waypoint.policies``).
* ``decides(principal, request)``: the waypoint's verdict on one request (True allow, False deny,
  None when the model cannot tell: an external authorizer, a source address).
* ``custom_selects(principal, request)``: whether a CUSTOM policy selects the request, i.e. the
  model's claim of which requests are subject to an external decision (``authz.custom_selects``,
  on the request as the waypoint sees it: opaque on a port it serves as TCP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from auditor.core.authz import Caller, Request, Tri, custom_selects
from auditor.core.checks.context import AuditContext
from auditor.core.checks.reach import Route, route_for, waypoint_decision
from auditor.core.mesh import waypoint_sees_http
from auditor.core.posture import MeshSettings, Posture
from auditor.core.snapshot import Snapshot, SnapshotIndex


@dataclass(frozen=True, slots=True)
class WaypointService:
    """One Service bound to a waypoint, as the model sees it; see the module docstring."""

    service: str
    waypoint: str
    ports: tuple[int, ...]
    policies: frozenset[str]
    route: Route

    def decides(self, principal: str, request: Request) -> Tri:
        """The waypoint's verdict on ``request`` from the in-mesh caller ``principal`` (SPIFFE id
        without ``spiffe://``): ``checks.reach.waypoint_decision`` on the route. Never raises."""
        if self.route.at_waypoint is None:
            return True
        return waypoint_decision(self.route.at_waypoint, self.route.service, Caller(principal), request).allowed

    def custom_selects(self, principal: str, request: Request) -> Tri:
        """Whether a CUSTOM policy at the waypoint selects ``request`` from ``principal``: the request
        goes to its provider (or is denied for a provider istiod cannot build). Never raises."""
        if self.route.at_waypoint is None:
            return False
        opaque = not waypoint_sees_http(self.route.service, request.port)
        return custom_selects(self.route.at_waypoint, Caller(principal), replace(request, opaque=opaque))


def waypoint_facts(snapshot: Snapshot, root_namespace: str, trust_domain: str) -> Mapping[str, WaypointService]:
    """Every Service of the snapshot whose traffic the model sends through a waypoint, by key."""
    posture = Posture(
        mesh=MeshSettings(root_namespace=root_namespace, trust_domain=trust_domain),
        scope=(),
        protected=(),
        names=(),
    )
    ctx = AuditContext(index=SnapshotIndex(snapshot), posture=posture, header_values={})
    facts: dict[str, WaypointService] = {}
    for service in snapshot.services:
        route = route_for(ctx, service)
        gateway = route.waypoint.gateway
        if gateway is None or route.at_waypoint is None:
            continue
        facts[service.meta.key] = WaypointService(
            service=service.meta.key,
            waypoint=gateway.meta.key,
            ports=tuple(p.port for p in service.ports),
            policies=frozenset(p.meta.key for p in route.at_waypoint.policies),
            route=route,
        )
    return facts
