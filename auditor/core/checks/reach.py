"""Who reaches a protected Service: end-to-end decisions over the real enforcement path.

In-mesh, Service-addressed traffic goes caller -> (waypoint, if effective) -> destination
ztunnel; behind a waypoint the destination ztunnel sees the waypoint's identity (§4.5).
Plaintext clients outside the mesh never traverse a waypoint (§4.6) and meet STRICT first;
sidecar pods and Istio gateways speak mTLS with their own identity and skip a Service's waypoint
(gateways unless the Service opts in), as the caller model says (§9, ``mesh.CLIENTS``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from auditor.core.authz import (
    Applicable,
    Caller,
    Decision,
    Request,
    at_waypoint,
    at_workload_waypoint,
    at_ztunnel,
    decide,
    l7_attributes,
    ztunnel_form,
)
from auditor.core.checks.context import AuditContext
from auditor.core.mesh import (
    CLIENTS,
    Capture,
    ClientKind,
    EffectiveWaypoint,
    capture_of,
    effective_mtls,
    effective_waypoint,
    uses_service_waypoint,
    waypoint_sees_http,
    workload_waypoint,
)
from auditor.core.model import Evidence
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import Service, Workload


def no_backends(route: Route) -> str:
    """Why ``route`` has no backends (``Route.backends`` empty), in words: nothing proves a promise decided
    there. Never raises."""
    if route.from_slices:
        return "no EndpointSlice entry of the Service names a Pod of the input"
    return "no workload matches the Service selector"


@dataclass(frozen=True, slots=True)
class Backend:
    """One workload behind a Service: whether ztunnel captures it (``capture``) and the policies its node's ztunnel
    enforces for it (``ztunnel``, semantics §4.1); its own waypoint (``waypoint``, ``mesh.workload_waypoint``), which
    traffic addressed to its pod IP goes through, and the policies that waypoint enforces on such traffic
    (``at_waypoint``, ``authz.at_workload_waypoint``; None without one; semantics §4.8).
    """

    workload: Workload
    capture: Capture
    ztunnel: Applicable
    waypoint: EffectiveWaypoint | None = None
    at_waypoint: Applicable | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """The enforcement path of Service-addressed traffic: the ``waypoint`` in effect, its policies (``at_waypoint``,
    None without one), the identity it presents to the destination ztunnel (``waypoint_identity``, semantics §4.5)
    and the ``backends`` (``SnapshotIndex.backends``: from the Service's EndpointSlices when the snapshot has
    any, else its selector); ``unknown`` names the slice endpoints that are no Pod of the input, whose
    enforcement cannot be judged (no finding that depends on the backends may pass while any remain).
    """

    service: Service
    waypoint: EffectiveWaypoint
    at_waypoint: Applicable | None
    waypoint_identity: Caller | None
    backends: tuple[Backend, ...]
    unknown: tuple[str, ...] = ()
    from_slices: bool = False  # the backends come from the Service's EndpointSlices

    def ignored(self) -> tuple[Evidence, ...]:
        """The evidence of policies ignored along the route (waypoint, then each backend's ztunnel), without
        duplicates. Never raises.
        """
        notes = list(self.at_waypoint.ignored) if self.at_waypoint else []
        notes += [ev for b in self.backends for ev in b.ztunnel.ignored]
        return tuple(dict.fromkeys(notes))


def route_for(ctx: AuditContext, service: Service) -> Route:
    """The ``Route`` of ``service``: its effective waypoint with the policies there and the waypoint's SPIFFE
    identity (``<trust domain>/ns/<namespace>/sa/<gateway name>``), and every workload behind it. Never raises.
    """
    waypoint = effective_waypoint(service, ctx.index)
    gateway = waypoint.gateway
    policies, identity = None, None
    if gateway is not None:
        policies = at_waypoint(service, gateway.meta.namespace, gateway.meta.name, ctx.index, ctx.root_namespace)
        principal = f"{ctx.trust_domain}/ns/{gateway.meta.namespace}/sa/{gateway.meta.name}"
        identity = Caller(principal, label=f"the waypoint's identity {principal}")
    found = ctx.index.backends(service)
    backends = tuple(_backend(ctx, w) for w in found.workloads)
    return Route(service, waypoint, policies, identity, backends, found.unknown, found.from_slices)


def _backend(ctx: AuditContext, workload: Workload) -> Backend:
    own = workload_waypoint(workload, ctx.index)
    policies = None
    if own.gateway is not None:
        gateway = own.gateway.meta
        policies = at_workload_waypoint(gateway.namespace, gateway.name, ctx.index, ctx.root_namespace)
    return Backend(
        workload, capture_of(workload, ctx.index), at_ztunnel(workload, ctx.index, ctx.root_namespace), own, policies
    )


@dataclass(frozen=True, slots=True)
class Hop:
    """One enforcement point on the path (``where``: ztunnel or waypoint, in words) and its ``decision``."""

    where: str
    decision: Decision

    def explain(self) -> str:
        """``"<where>: <reason> (<policy>)"`` (the policy part only when one decided). Never raises."""
        policy = f" ({self.decision.policy})" if self.decision.policy else ""
        return f"{self.where}: {self.decision.reason}{policy}"


@dataclass(frozen=True, slots=True)
class Reach:
    """The outcome at one backend: allowed (True/False/None) and the hops that decided it."""

    backend: Backend
    allowed: bool | None
    hops: tuple[Hop, ...]
    skipped_waypoint: bool = False  # the caller's kind does not use the Service's waypoint (§9)

    def explain(self) -> str:
        """Every hop's ``Hop.explain``, joined by ``"; "``. Never raises."""
        return "; ".join(h.explain() for h in self.hops)

    @property
    def last(self) -> Hop:
        """The last hop, the one that decided; raises ``IndexError`` when there are no hops."""
        return self.hops[-1]


def reach(ctx: AuditContext, route: Route, caller: Caller, request: Request) -> tuple[Reach, ...]:
    """Decide the request at every backend; the caller is in-mesh unless its principal is None."""
    return tuple(_reach_backend(ctx, route, backend, caller, request) for backend in route.backends)


def _target_port(service: Service, workload: Workload, service_port: int) -> int:
    for port in service.ports:
        if port.port == service_port:
            if isinstance(port.target_port, int):
                return port.target_port
            return workload.container_port(port.target_port) or service_port
    return service_port


def _reach_backend(ctx: AuditContext, route: Route, backend: Backend, caller: Caller, request: Request) -> Reach:
    target_port = _target_port(route.service, backend.workload, request.port)
    l4 = Request(method=request.method, path=request.path, host=request.host, port=target_port)
    if caller.principal is None:
        return _plaintext(ctx, backend, l4)
    hops: list[Hop] = []
    seen_by_ztunnel = caller
    skipped = ""
    closed = route.waypoint.fails_closed
    if closed is not None and uses_service_waypoint(caller.kind, route.service):
        # The Service is bound to a waypoint ztunnel cannot reach: the caller's ztunnel fails it.
        return Reach(backend, False, (Hop("the caller's ztunnel", Decision(False, closed.message)),))
    if route.at_waypoint is not None and route.waypoint_identity is not None and route.waypoint.gateway is not None:
        if uses_service_waypoint(caller.kind, route.service):
            first = waypoint_decision(route.at_waypoint, route.service, caller, request)
            hops.append(Hop(f"waypoint {route.waypoint.gateway.meta.key}", first))
            if first.allowed is False:
                return Reach(backend, False, tuple(hops))
            seen_by_ztunnel = route.waypoint_identity
        else:
            # §9: sidecars, and gateways without ingress-use-waypoint, go straight to the pods.
            skipped = f", skipping the waypoint: {CLIENTS[caller.kind].service_hops}"
    second = _at_destination(backend, seen_by_ztunnel, l4)
    where = f"ztunnel of {backend.workload.meta.ref} (sees {seen_by_ztunnel.describe()}{skipped})"
    hops.append(Hop(where, second))
    return Reach(backend, _and(hops), tuple(hops), skipped_waypoint=bool(skipped))


def waypoint_decision(at_waypoint: Applicable, service: Service, caller: Caller, request: Request) -> Decision:
    """The waypoint's decision on ``request`` to ``service`` (the route's ``at_waypoint``): ``authz.decide``,
    with the request opaque on a Service port the waypoint serves as TCP (``mesh.waypoint_sees_http``,
    semantics §4.9): there it sees bytes, not a request. Never raises.
    """
    opaque = not waypoint_sees_http(service, request.port)
    decision = decide(at_waypoint, caller, replace(request, opaque=opaque))
    if opaque and any(l7_attributes(rule) for policy in at_waypoint.policies for rule in policy.rules):
        note = (
            f" (the waypoint serves port {request.port} of {service.meta.ref} as TCP: its protocol is not HTTP, "
            "so HTTP attributes drop an ALLOW rule and drop out of a DENY rule, §4.9)"
        )
        return replace(decision, reason=decision.reason + note)
    return decision


def pod_ip_reach(ctx: AuditContext, backend: Backend, caller: Caller, request: Request) -> Reach:
    """Decide ``request`` addressed to ``backend``'s pod IP (``request.port``: the target port): an ambient caller's
    ztunnel sends it through the pod's own waypoint when it has one (ztunnel ``fetch_workload_waypoint``; only the
    policies targeting that Gateway apply there, §4.8), else straight to the pod (§4.6); other kinds of client never
    use a waypoint. Never raises."""
    if caller.principal is None:
        return _plaintext(ctx, backend, request)
    own = backend.waypoint
    hops: list[Hop] = []
    seen_by_ztunnel = caller
    via_own = own is not None and own.gateway is not None and caller.kind is ClientKind.AMBIENT
    if own is not None and own.gateway is not None and via_own:
        if own.fails_closed is not None:
            return Reach(backend, False, (Hop("the caller's ztunnel", Decision(False, own.fails_closed.message)),))
        if backend.at_waypoint is not None:
            first = decide(backend.at_waypoint, caller, request)
            hops.append(Hop(f"the pod's own waypoint {own.gateway.meta.key}", first))
            if first.allowed is False:
                return Reach(backend, False, tuple(hops))
        gateway = own.gateway.meta
        principal = f"{ctx.trust_domain}/ns/{gateway.namespace}/sa/{gateway.name}"
        seen_by_ztunnel = Caller(principal, label=f"the waypoint's identity {principal}")
    second = _at_destination(backend, seen_by_ztunnel, request)
    hops.append(Hop(f"ztunnel of {backend.workload.meta.ref} (sees {seen_by_ztunnel.describe()})", second))
    return Reach(backend, _and(hops), tuple(hops), skipped_waypoint=not via_own)


def pod_ip_request(service: Service, workload: Workload, request: Request) -> Request:
    """``request`` (addressed to the Service's port) as sent to the pod's IP: the Service port's target port, no host.
    Never raises."""
    port = _target_port(service, workload, request.port)
    return Request(method=request.method, path=request.path, port=port, headers=request.headers)


def _plaintext(ctx: AuditContext, backend: Backend, l4: Request) -> Reach:
    where = f"ztunnel of {backend.workload.meta.ref}"
    if backend.capture.inbound_enforced:
        mtls = effective_mtls(backend.workload, l4.port, ctx.index, ctx.root_namespace)
        if mtls.ambiguous:
            # Which PeerAuthentication wins is unknown (§3), so whether plaintext gets in is too.
            return Reach(backend, None, (Hop(where, Decision(None, "the effective mTLS mode is ambiguous")),))
        if mtls.refuses_plaintext:
            return Reach(backend, False, (Hop(where, Decision(False, "STRICT refuses plaintext")),))
    decision = _at_destination(backend, Caller(None), l4)
    return Reach(backend, decision.allowed, (Hop(where, decision),))


def _at_destination(backend: Backend, caller: Caller, request: Request) -> Decision:
    if not backend.capture.inbound_enforced:
        return Decision(True, f"the workload is not captured ({backend.capture.reason}): nothing is enforced")
    return decide(backend.ztunnel, caller, request)


def _and(hops: list[Hop]) -> bool | None:
    values = [h.decision.allowed for h in hops]
    if False in values:
        return False
    return None if None in values else True


def probe_request(protected: ProtectedService, service: Service, headers: dict[str, str]) -> Request:
    """The request a probe sends to the Service (by name, so it meets the waypoint)."""
    probe = protected.probe
    port = probe.port if probe else (service.ports[0].port if service.ports else 80)
    return Request(
        method=probe.method if probe else "GET",
        path=probe.path if probe else "/",
        host=service.meta.name,
        port=port,
        headers=headers,
    )


_FORMS = {
    "dropped": "an ALLOW rule with HTTP attributes is dropped: it never matches; status stays ZtunnelAccepted",
    "inert": "istiod leaves an empty match where only HTTP attributes (or dropped values) were, and ztunnel "
    "skips it: the rule never matches",
    "broader": "a DENY keeps the rule's L4 matches without its HTTP attributes: it denies more than written",
}


def ztunnel_translation_notes(route: Route) -> list[Evidence]:
    """How istiod's translation changed each ztunnel-bound rule on the route (§4.3, §8.3)."""
    evidence = []
    for backend in route.backends:
        for policy in backend.ztunnel.policies:
            for position, rule in enumerate(policy.rules):
                form = ztunnel_form(rule, deny=policy.action == "DENY")
                if form:
                    attributes = ", ".join(l7_attributes(rule)) or "none"
                    note = f"bound to ztunnel; HTTP attributes: {attributes}; {_FORMS[form]} (§8.3)"
                    evidence.append(Evidence(policy.meta.ref, f"spec.rules[{position}]", f"{form} at ztunnel", note))
    return evidence


@dataclass(frozen=True, slots=True)
class PodIpPath:
    """How in-mesh requests addressed to a route's pod IPs fare (§4.6, §4.8): the ones that get through
    (``admitted``) and the pods' own waypoints they met (``own_waypoints``, ``namespace/name``)."""

    admitted: tuple[Reach, ...]
    own_waypoints: tuple[str, ...]

    def through_own(self) -> bool:
        """True when some admitted request went through a pod's own waypoint. Never raises."""
        return any(not item.skipped_waypoint for item in self.admitted)


def pod_ip_path(ctx: AuditContext, route: Route, callers: list[Caller], requests: list[Request]) -> PodIpPath:
    """Each in-mesh ambient caller's ``requests`` (addressed to the Service) sent to every backend's pod IP instead
    (``pod_ip_reach``). Never raises."""
    admitted: list[Reach] = []
    own: dict[str, None] = {}
    for caller in callers:
        if caller.principal is None or caller.kind is not ClientKind.AMBIENT:
            continue
        for request in requests:
            for backend in route.backends:
                item = pod_ip_reach(ctx, backend, caller, pod_ip_request(route.service, backend.workload, request))
                if not item.skipped_waypoint and backend.waypoint is not None and backend.waypoint.gateway:
                    own[backend.waypoint.gateway.meta.key] = None
                if item.allowed is True:
                    admitted.append(item)
    return PodIpPath(tuple(admitted), tuple(own))
