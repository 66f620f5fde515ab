"""Probe plans: the requests each probe identity sends to prove a protected Service's promises.

Pure: posture + snapshot + resolved header values in, a ``RunPlan`` out. Each ``ProbeBatch`` is
one identity's requests, run by one probe pod (``ports.ProbeRunner``); ``verdict`` later pairs
every planned request's expectation with what the pod observed. Three identities (semantics §1):

- ``outside``: a pod outside the mesh; its plaintext request must be refused by STRICT (§1.2).
  It carries no header values: if STRICT is broken they would cross the network in clear text.
- ``intruder``: an in-mesh identity on no allow-list, sending the required headers so that only
  its identity is tested: refused by ztunnel (``l4-denied``, §1.1) or by the waypoint
  (``l7-denied``, §1.3) when the rules promise one.
- ``control``: an allowed identity (opt-in twice: rules and settings). Its request with the
  headers must be ``allowed`` (the positive control, and the waypoint hop's proof, §1.7); the
  same request without each header, and with a near miss of each value (the value plus a
  suffix, which a prefix match admits, §8.2), must be ``l7-denied``.

A refusal by ztunnel (``l4-denied``) is a connection closed or reset without a byte, and so is a
connection cut by a restarting ztunnel: each request that expects one, and the control's
request (whose refusal is a FAIL), gets a confirmation (variant ``again:<variant>``): the same
request on a new connection, sent only after the first ended (``ProbeRequest.after``). The
verdict counts such an answer only when both agree.

Header values live only inside the wire requests (``PlannedRequest.wire``, hidden from repr);
ids, expectations and everything a finding renders are free of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from auditor.core.authz import Caller, Request, at_workload_waypoint, decide
from auditor.core.checks.context import AuditContext
from auditor.core.checks.fixes import bypass_fix
from auditor.core.endpoints import (
    ENDPOINT_INTRUDER,
    ENDPOINT_PLAINTEXT,
    Coverage,
    Endpoint,
    ServiceEndpoints,
    rotate_with_focus,
    service_endpoints,
)
from auditor.core.model import Fix, Severity
from auditor.core.posture import Posture, ProbeTarget, ProtectedService
from auditor.core.snapshot import Snapshot, SnapshotIndex
from probes.wire import Outcome, ProbePlan, ProbeRequest

WITH_HEADERS = "with-headers"
PLAINTEXT = "plaintext"
WITHOUT = "without:"
NEAR_MISS = "near-miss:"
AGAIN = "again:"  # the confirmation of the request of the rest of the variant (see the module doc)
# Appended to the required value: the near miss shares the whole value as a prefix, so a policy
# that matches the header by prefix (values: ["i*"]) admits it and the probe shows it (§8.2).
NEAR_MISS_SUFFIX = "-mesh-auditor-near-miss"
# Linux caps one environment string at 128 KiB (MAX_ARG_STRLEN); the plan travels in one.
DEFAULT_MAX_PLAN_BYTES = 96 * 1024
_PLAN_OVERHEAD = 256  # the plan's own keys and run id around the requests


class Role(StrEnum):
    """Who sends a request, as far as the mesh can tell."""

    OUTSIDE = "outside"
    INTRUDER = "intruder"
    CONTROL = "control"


@dataclass(frozen=True, slots=True)
class Identity:
    """Where a probe pod runs and as whom: its mesh identity."""

    role: Role
    namespace: str
    service_account: str
    in_mesh: bool

    @property
    def key(self) -> str:
        """``"<role>:<namespace>/<service account>"``: the identity's key in a plan. Never raises."""
        return f"{self.role.value}:{self.namespace}/{self.service_account}"

    @property
    def label(self) -> str:
        """The identity in words: its ServiceAccount and whether it is in the mesh. Never raises."""
        where = "in the mesh" if self.in_mesh else "outside the mesh"
        return f"ServiceAccount {self.namespace}/{self.service_account} ({where})"


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request and what the promise says it must meet. ``wire`` may carry secrets."""

    id: str
    target: str
    role: Role
    variant: str
    expect: Outcome
    wire: ProbeRequest = field(repr=False)
    expect_status: int | None = None

    @property
    def omitted_header(self) -> str | None:
        """The header this request leaves out (a ``WITHOUT`` variant), else None. Never raises."""
        return self.variant.removeprefix(WITHOUT) if self.variant.startswith(WITHOUT) else None

    @property
    def near_miss_header(self) -> str | None:
        """The header this request sends with a near-miss value (a ``NEAR_MISS`` variant), else None. Never raises."""
        return self.variant.removeprefix(NEAR_MISS) if self.variant.startswith(NEAR_MISS) else None

    @property
    def degraded(self) -> str:
        """How the request differs from the allowed one, without the value: for messages."""
        if self.omitted_header is not None:
            return f"without {self.omitted_header}"
        if self.near_miss_header is not None:
            return f"with a near miss of {self.near_miss_header} (the value plus a suffix)"
        return self.variant


@dataclass(frozen=True, slots=True)
class ProbeBatch:
    """The requests one probe pod sends for one identity in one run."""

    identity: Identity
    requests: tuple[PlannedRequest, ...]
    part: int = 0  # > 0 only when one identity's requests did not fit one plan

    @property
    def key(self) -> str:
        """The batch's key in the run report: the identity's key, with ``#<part>`` for a part after the first."""
        return self.identity.key if not self.part else f"{self.identity.key}#{self.part}"

    def wire_plan(self, run_id: str, marker_header: str | None) -> ProbePlan:
        """This batch as the probe pod reads it (``probes.wire.ProbePlan``)."""
        return ProbePlan(run_id=run_id, requests=tuple(r.wire for r in self.requests), marker_header=marker_header)


@dataclass(frozen=True, slots=True)
class NotPlanned:
    """A request the plan could not include, and why (the verdict reports it, never passes it)."""

    target: str
    role: Role
    reason: str


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything one probe run sends, plus what it had to leave out."""

    run_id: str
    batches: tuple[ProbeBatch, ...]
    not_planned: tuple[NotPlanned, ...]
    targets: tuple[ProtectedService, ...]  # every protected Service, probed or not
    marker_header: str | None = None
    # Every enforcement point (auditor.core.endpoints): the endpoints this run probes by pod IP,
    # the coverage per Service, and the severity of the pod-IP waypoint bypass finding.
    endpoints: tuple[Endpoint, ...] = ()
    coverage: Mapping[str, Coverage] = field(default_factory=dict)
    bypass_severity: Severity = Severity.LOW
    # Per probed Service (``namespace/name``) with endpoints: the fix a pod-IP bypass finding gives.
    bypass_fixes: Mapping[str, Fix] = field(default_factory=dict)
    # What triggered this run, when the daemon's node trigger did (PlanOptions.focus_*).
    focus_nodes: frozenset[str] = frozenset()
    focus_reason: str = ""

    def requests_for(self, target: str) -> tuple[PlannedRequest, ...]:
        """Every planned request to ``target`` (``namespace/name``), across batches."""
        return tuple(r for b in self.batches for r in b.requests if r.target == target)

    def batch_of(self, request_id: str) -> ProbeBatch | None:
        """The batch that holds the request of ``request_id``; None when no batch does."""
        return next((b for b in self.batches if any(r.id == request_id for r in b.requests)), None)

    def not_planned_for(self, target: str, role: Role) -> NotPlanned | None:
        """Why ``target``'s request for ``role`` is not in the plan; None when it is planned."""
        return next((n for n in self.not_planned if n.target == target and n.role is role), None)


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """Where probe pods run and how requests are addressed; built from settings by the app."""

    in_mesh_namespace: str = "mesh-auditor-probes"
    outside_namespace: str = "mesh-auditor-outside"
    service_account: str = "mesh-auditor-probe"
    control_allowed: bool = False
    cluster_domain: str = "cluster.local"
    # "<namespace>/<service>" or "<role>:<namespace>/<service>" -> base URL (scheme://host:port);
    # the role-specific key wins. For tests and unusual networks; paths are kept.
    url_overrides: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 3.0
    marker_header: str | None = None
    max_plan_bytes: int = DEFAULT_MAX_PLAN_BYTES
    # Ready endpoints probed by pod IP per run, over all Services (0: by Service name only), and
    # the run's number, which rotates the window when there are more (auditor.core.endpoints).
    endpoint_budget: int = 0
    rotation: int = 0
    bypass_severity: Severity = Severity.LOW
    # Set by the daemon's node trigger (auditor/adapters/k8s/nodes.py): the nodes whose endpoints
    # this run probes first, and what happened there (named in the findings' evidence).
    focus_nodes: frozenset[str] = frozenset()
    focus_reason: str = ""


def plan_probes(
    posture: Posture,
    snapshot: Snapshot,
    header_values: Mapping[tuple[str, str], str | None],
    run_id: str,
    options: PlanOptions,
) -> RunPlan:
    """Every protected Service with a ``probe`` target, as batches per identity."""
    services = {s.meta.key: s for s in snapshot.services}
    requests: list[tuple[Identity, PlannedRequest]] = []
    skipped: list[NotPlanned] = []
    for protected in posture.protected:
        if protected.probe is None:
            continue  # the verdict reports it as SKIPPED
        service = services.get(protected.target)
        if service is None or protected.probe.port not in {p.port for p in service.ports}:
            reason = _missing_reason(protected, service is None)
            skipped += [NotPlanned(protected.target, role, reason) for role in Role]
            continue
        planned, left_out = _plan_target(protected, posture, header_values, options)
        requests += planned
        skipped += left_out
    # One index for the endpoints and their bypass fixes, built only when endpoints are probed.
    index = SnapshotIndex(snapshot) if options.endpoint_budget > 0 else None
    endpoints, coverage = _endpoints(posture, index, requests, options)
    requests += _endpoint_requests(endpoints, posture, requests, options, _PodIpRefusal(posture, index, header_values))
    batches = _batches(requests, run_id, options)
    return RunPlan(
        run_id,
        batches,
        tuple(skipped),
        posture.protected,
        options.marker_header,
        endpoints,
        coverage,
        options.bypass_severity,
        _bypass_fixes(posture, index, header_values, endpoints),
        options.focus_nodes,
        options.focus_reason,
    )


def _bypass_fixes(
    posture: Posture,
    index: SnapshotIndex | None,
    header_values: Mapping[tuple[str, str], str | None],
    endpoints: tuple[Endpoint, ...],
) -> dict[str, Fix]:
    """The pod-IP bypass fix of every Service whose endpoints this run probes by pod IP."""
    probed = {e.target for e in endpoints}
    if not probed or index is None:
        return {}
    ctx = AuditContext(index=index, posture=posture, header_values=header_values)
    found: dict[str, Fix] = {}
    for protected in posture.protected:
        service = ctx.index.services.get(protected.target)
        if protected.target in probed and service is not None:
            found[protected.target] = bypass_fix(ctx, protected, service)
    return found


def _endpoints(
    posture: Posture,
    index: SnapshotIndex | None,
    planned: list[tuple[Identity, PlannedRequest]],
    options: PlanOptions,
) -> tuple[tuple[Endpoint, ...], dict[str, Coverage]]:
    """The ready endpoints this run probes (the budget's rotating window) and the coverage;
    none without an index (no endpoint budget)."""
    if index is None or options.endpoint_budget <= 0:
        return (), {}
    targets = {r.target for _, r in planned}
    ready: list[Endpoint] = []
    known: dict[str, ServiceEndpoints] = {}
    for protected in posture.protected:
        service = index.services.get(protected.target)
        if protected.target in targets and service is not None:
            found = known[protected.target] = service_endpoints(protected, service, index)
            ready += found.endpoints
    chosen = rotate_with_focus(ready, options.endpoint_budget, options.rotation, options.focus_nodes)
    coverage = {
        target: Coverage(sum(1 for e in chosen if e.target == target), len(found.endpoints), found.source, found.gap)
        for target, found in sorted(known.items())
        if found.endpoints or found.gap
    }
    return chosen, coverage


def _endpoint_requests(
    endpoints: tuple[Endpoint, ...],
    posture: Posture,
    planned: list[tuple[Identity, PlannedRequest]],
    options: PlanOptions,
    refusal: _PodIpRefusal,
) -> list[tuple[Identity, PlannedRequest]]:
    """Per endpoint: the outside identity's plaintext; behind a waypoint also the intruder's
    request with the headers, to the pod IP (the waypoint bypass, semantics §4.6), refused by
    the pod's own waypoint when it has one that refuses it (§4.8), else by ztunnel."""
    by_role = {(r.target, r.role): (identity, r) for identity, r in planned if r.variant in {PLAINTEXT, WITH_HEADERS}}
    requests: list[tuple[Identity, PlannedRequest]] = []
    for endpoint in endpoints:
        protected = posture.protected_service(endpoint.target)
        if protected is None:
            continue
        path = _probe_of(protected).path
        outside = by_role.get((endpoint.target, Role.OUTSIDE))
        if outside is not None:
            variant = f"{ENDPOINT_PLAINTEXT}{endpoint.key}"
            plaintext = _to_endpoint(outside[1], endpoint, variant, path, options)
            requests += [(outside[0], r) for r in (plaintext, *_confirmations(plaintext))]
        intruder = by_role.get((endpoint.target, Role.INTRUDER))
        if intruder is not None and protected.waypoint is not None:
            variant = f"{ENDPOINT_INTRUDER}{endpoint.key}"
            expect = refusal.expected(protected, endpoint, intruder[0], path)
            first = _to_endpoint(intruder[1], endpoint, variant, path, options, expect=expect)
            requests += [(intruder[0], r) for r in (first, *_confirmations(first))]
    return requests


@dataclass(frozen=True, slots=True)
class _PodIpRefusal:
    """What refuses the intruder's request to a pod IP: the pod's own waypoint, when the policies
    targeting that Gateway refuse it (an L7 denial, semantics §4.8), else ztunnel (L4)."""

    posture: Posture
    index: SnapshotIndex | None
    header_values: Mapping[tuple[str, str], str | None]

    def expected(self, protected: ProtectedService, endpoint: Endpoint, identity: Identity, path: str) -> Outcome:
        """``L7_DENIED`` when the endpoint's own waypoint refuses the intruder's request, else ``L4_DENIED``."""
        if self.index is None or not endpoint.waypoint:
            return Outcome.L4_DENIED
        mesh = self.posture.mesh
        namespace, name = endpoint.waypoint.split("/", 1)
        applicable = at_workload_waypoint(namespace, name, self.index, mesh.root_namespace)
        caller = Caller(f"{mesh.trust_domain}/ns/{identity.namespace}/sa/{identity.service_account}")
        headers, _ = _header_values(protected, self.header_values)
        request = Request(method=_probe_of(protected).method, path=path, port=endpoint.port, headers=headers)
        refused = decide(applicable, caller, request).allowed is False
        return Outcome.L7_DENIED if refused else Outcome.L4_DENIED


def _to_endpoint(
    request: PlannedRequest,
    endpoint: Endpoint,
    variant: str,
    path: str,
    options: PlanOptions,
    *,
    expect: Outcome = Outcome.L4_DENIED,
) -> PlannedRequest:
    """The request to one endpoint by pod IP: ``expect`` (refused at L4, or at the pod's own waypoint)
    when the promises hold. Its base URL is ``url_overrides["endpoint:<ip>:<port>"]`` when set (a
    network where pod IPs are translated)."""
    request_id = f"{endpoint.target}:{request.role.value}:{variant}"
    base = options.url_overrides.get(f"endpoint:{endpoint.ip}:{endpoint.port}", endpoint.url_base).rstrip("/")
    wire = request.wire.model_copy(update={"id": request_id, "url": base + path})
    return PlannedRequest(request_id, endpoint.target, request.role, variant, expect, wire)


def _missing_reason(protected: ProtectedService, absent: bool) -> str:
    if absent:
        return f"Service {protected.target} is not in the snapshot"
    return f"port {_probe_of(protected).port} is not a port of Service {protected.target}"


def _plan_target(
    protected: ProtectedService,
    posture: Posture,
    header_values: Mapping[tuple[str, str], str | None],
    options: PlanOptions,
) -> tuple[list[tuple[Identity, PlannedRequest]], list[NotPlanned]]:
    planned: list[tuple[Identity, PlannedRequest]] = []
    outside = Identity(Role.OUTSIDE, options.outside_namespace, options.service_account, in_mesh=False)
    plaintext = _request(protected, outside, PLAINTEXT, Outcome.L4_DENIED, headers={}, options=options)
    planned += [(outside, plaintext), (outside, confirmation(plaintext))]
    headers, unresolved = _header_values(protected, header_values)
    if unresolved:
        reason = f"the value of required header {unresolved} could not be resolved (see the static findings)"
        return planned, [NotPlanned(protected.target, role, reason) for role in (Role.INTRUDER, Role.CONTROL)]
    unsendable = _without_probe_source(protected)
    if unsendable:
        # Probe pods get secret values only by reference to a Secret (podspec), never in their spec.
        reason = (
            f"the value of required header {unsendable} comes from the auditor's environment (fromEnv) and "
            "probe pods read header values only from a Secret in their namespace: add value.probeSecretRef"
        )
        return planned, [NotPlanned(protected.target, role, reason) for role in (Role.INTRUDER, Role.CONTROL)]
    intruder = Identity(Role.INTRUDER, options.in_mesh_namespace, options.service_account, in_mesh=True)
    # semantics §4.1: behind a waypoint the caller is refused at L7 (403), otherwise by ztunnel.
    refusal = Outcome.L7_DENIED if protected.waypoint is not None else Outcome.L4_DENIED
    first = _request(protected, intruder, WITH_HEADERS, refusal, headers=headers, options=options)
    planned += [(intruder, first), *((intruder, c) for c in _confirmations(first))]
    control = _control_identity(protected, posture, options)
    if isinstance(control, NotPlanned):
        return planned, [control]
    planned += [(control, r) for r in _control_requests(protected, control, headers, options)]
    return planned, []


def _header_values(
    protected: ProtectedService, values: Mapping[tuple[str, str], str | None]
) -> tuple[dict[str, str], str | None]:
    headers: dict[str, str] = {}
    for header in protected.required_headers:
        value = values.get((protected.target, header.name))
        if value is None:
            return {}, header.name
        headers[header.name] = value
    return headers, None


def _without_probe_source(protected: ProtectedService) -> str | None:
    """The first header whose value is secret (fromEnv) but has no Secret for probe pods."""
    return next(
        (h.name for h in protected.required_headers if h.value.from_env is not None and h.value.probe_secret is None),
        None,
    )


def _control_identity(protected: ProtectedService, posture: Posture, options: PlanOptions) -> Identity | NotPlanned:
    if not protected.control.enabled:
        return NotPlanned(protected.target, Role.CONTROL, "the positive control is off in the rules (control.enabled)")
    if not options.control_allowed:
        reason = "control probes are switched off in the auditor's settings (AUDITOR_PROBES__CONTROL_ENABLED)"
        return NotPlanned(protected.target, Role.CONTROL, reason)
    account = protected.control.service_account or _allowed_account(protected, posture.mesh.trust_domain)
    if account is None:
        reason = f"no control.serviceAccount and no allowed principal in namespace {protected.namespace}"
        return NotPlanned(protected.target, Role.CONTROL, reason)
    return Identity(Role.CONTROL, protected.namespace, account, in_mesh=True)


def _allowed_account(protected: ProtectedService, trust_domain: str) -> str | None:
    prefix = f"{trust_domain}/ns/{protected.namespace}/sa/"
    return next((p.removeprefix(prefix) for p in protected.allowed_principals if p.startswith(prefix)), None)


def _control_requests(
    protected: ProtectedService, control: Identity, headers: dict[str, str], options: PlanOptions
) -> list[PlannedRequest]:
    status = _probe_of(protected).expect_status
    allowed = _request(
        protected, control, WITH_HEADERS, Outcome.ALLOWED, headers=headers, options=options, expect_status=status
    )
    # Confirmed too: the allowed identity refused is a FAIL, and a restart's cut looks like a refusal.
    requests = [allowed, confirmation(allowed)]
    for name, value in headers.items():
        others = {k: v for k, v in headers.items() if k != name}
        requests.append(
            _request(protected, control, f"{WITHOUT}{name}", Outcome.L7_DENIED, headers=others, options=options)
        )
        near_miss = {**others, name: value + NEAR_MISS_SUFFIX}
        requests.append(
            _request(protected, control, f"{NEAR_MISS}{name}", Outcome.L7_DENIED, headers=near_miss, options=options)
        )
    return requests


def _request(
    protected: ProtectedService,
    identity: Identity,
    variant: str,
    expect: Outcome,
    *,
    headers: dict[str, str],
    options: PlanOptions,
    expect_status: int | None = None,
) -> PlannedRequest:
    request_id = f"{protected.target}:{identity.role.value}:{variant}"
    wire = ProbeRequest(
        id=request_id,
        url=service_url(protected, identity.role, options),
        method=_probe_of(protected).method,
        headers=headers,
        timeout_s=options.timeout_s,
    )
    return PlannedRequest(request_id, protected.target, identity.role, variant, expect, wire, expect_status)


def confirmation(request: PlannedRequest) -> PlannedRequest:
    """The same request on a new connection, sent after ``request`` ended: variant ``again:<variant>``."""
    variant = f"{AGAIN}{request.variant}"
    request_id = f"{request.target}:{request.role.value}:{variant}"
    wire = request.wire.model_copy(update={"id": request_id, "after": request.id})
    return PlannedRequest(
        request_id, request.target, request.role, variant, request.expect, wire, request.expect_status
    )


def _confirmations(request: PlannedRequest) -> tuple[PlannedRequest, ...]:
    """A confirmation when ``request`` expects ztunnel's refusal, which a cut connection mimics;
    a waypoint's 403 is a complete response that no restart produces."""
    return (confirmation(request),) if request.expect is Outcome.L4_DENIED else ()


def service_url(protected: ProtectedService, role: Role, options: PlanOptions) -> str:
    """The Service by name (in-mesh traffic must address the Service to meet its waypoint, §4.6)."""
    probe = _probe_of(protected)
    overrides = options.url_overrides
    base = overrides.get(f"{role.value}:{protected.target}") or overrides.get(protected.target)
    if base is None:
        host = f"{protected.name}.{protected.namespace}.svc.{options.cluster_domain}"
        base = f"http://{host}:{probe.port}"
    return base.rstrip("/") + probe.path


def _probe_of(protected: ProtectedService) -> ProbeTarget:
    """The probe target; planning only reaches here for Services that have one."""
    if protected.probe is None:
        raise ValueError(f"{protected.target} has no probe target to plan")
    return protected.probe


def _batches(
    requests: list[tuple[Identity, PlannedRequest]], run_id: str, options: PlanOptions
) -> tuple[ProbeBatch, ...]:
    by_identity: dict[Identity, list[PlannedRequest]] = {}
    for identity, request in requests:
        by_identity.setdefault(identity, []).append(request)
    batches: list[ProbeBatch] = []
    for identity, planned in by_identity.items():
        parts = _split(planned, options.max_plan_bytes - _PLAN_OVERHEAD - len(run_id))
        numbered = len(parts) > 1
        batches += [ProbeBatch(identity, tuple(p), i + 1 if numbered else 0) for i, p in enumerate(parts)]
    return tuple(batches)


def _split(requests: list[PlannedRequest], budget: int) -> list[list[PlannedRequest]]:
    """Greedy split so that each part's plan stays under the environment-string limit; a
    confirmation stays in the part of the request it follows (``after`` names one of its plan)."""
    units: list[list[PlannedRequest]] = []
    for request in requests:
        if request.wire.after is not None and units and units[-1][-1].id == request.wire.after:
            units[-1].append(request)
        else:
            units.append([request])
    parts: list[list[PlannedRequest]] = [[]]
    used = 0
    for unit in units:
        size = sum(len(r.wire.model_dump_json()) + 1 for r in unit)
        if parts[-1] and used + size > budget:
            parts.append([])
            used = 0
        parts[-1].extend(unit)
        used += size
    return parts
