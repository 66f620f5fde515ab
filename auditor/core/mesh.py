"""Istio 1.31 ambient data-plane semantics computed from a snapshot (``istioversion.MODEL_VERSION``).

Answers the questions every check asks: is this workload captured by ztunnel, what mTLS mode
does its inbound port really get, which waypoint (if any) does a Service's traffic use, which
kind of client a workload is and which hops its traffic takes (the caller model, §9), and which
objects are Istio's own infrastructure (§10).
Each answer carries the evidence that decided it. Section numbers refer to
``../shared/docs/ambient-semantics.md`` (copied into docs/ambient-semantics.md's references).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from auditor.core.model import Evidence
from auditor.core.snapshot import (
    Condition,
    Gateway,
    Labels,
    Listener,
    ObjectMeta,
    PeerAuthentication,
    Service,
    ServicePort,
    SnapshotIndex,
    Workload,
    selector_matches,
)

DATAPLANE_MODE = "istio.io/dataplane-mode"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
REDIRECTION = "ambient.istio.io/redirection"
BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
WAYPOINT_CLASS = "istio-waypoint"
HBONE_PORT = 15008


class CaptureState(StrEnum):
    """Whether istio-cni redirects a workload's traffic to ztunnel: captured, not captured, or pending (enrolled,
    and the pod's ``ambient.istio.io/redirection`` annotation still says ``pending``; semantics §2).
    """

    CAPTURED = "captured"
    NOT_CAPTURED = "not-captured"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Capture:
    """Whether ztunnel sees the workload's inbound traffic (and so can enforce anything on it)."""

    state: CaptureState
    reason: str
    evidence: tuple[Evidence, ...]

    @property
    def inbound_enforced(self) -> bool:
        """True when the state is ``CAPTURED``: only then can ztunnel enforce anything inbound. Never raises."""
        return self.state is CaptureState.CAPTURED


def capture_of(workload: Workload, index: SnapshotIndex) -> Capture:
    """Capture rule of istio-cni (semantics §2), refined by the live redirection annotation."""
    excluded = _never_captured(workload, index)
    if excluded is not None:
        return Capture(CaptureState.NOT_CAPTURED, excluded[0], (excluded[1],))
    labelled = _enrolled_by_labels(workload, index)
    if isinstance(labelled, Capture):
        return labelled
    if workload.is_pod and index.snapshot.live:
        return _live_redirection(workload, labelled)
    bypass = _inbound_bypass(workload)
    return bypass or Capture(CaptureState.CAPTURED, "enrolled in the ambient mesh", (labelled,))


def _never_captured(workload: Workload, index: SnapshotIndex) -> tuple[str, Evidence] | None:
    if workload.host_network:
        return "hostNetwork pods are never captured (§2)", Evidence(workload.meta.ref, "spec.hostNetwork", "true")
    sidecar = _sidecar_evidence(workload, index)
    if sidecar is not None:
        return "pods with a sidecar are never captured by ztunnel (§2)", sidecar
    return None


def _sidecar_evidence(workload: Workload, index: SnapshotIndex) -> Evidence | None:
    names = {c.name for c in workload.containers + workload.init_containers}
    if "istio-proxy" in names:
        return Evidence(workload.meta.ref, "spec.containers[].name", "istio-proxy")
    if "sidecar.istio.io/status" in workload.pod_annotations:
        return Evidence(workload.meta.ref, "annotations.sidecar.istio.io/status", "present")
    inject = workload.pod_labels.get("sidecar.istio.io/inject")
    if inject == "true":
        return Evidence(workload.meta.ref, "labels.sidecar.istio.io/inject", "true")
    ns_labels = index.namespace_labels(workload.meta.namespace)
    if ns_labels.get("istio-injection") == "enabled" and inject != "false":
        return Evidence(f"Namespace {workload.meta.namespace}", "labels.istio-injection", "enabled")
    return None


def _enrolled_by_labels(workload: Workload, index: SnapshotIndex) -> Evidence | Capture:
    ref = workload.meta.ref
    pod_mode = workload.pod_labels.get(DATAPLANE_MODE)
    if pod_mode == "none":
        ev = Evidence(ref, f"pod labels.{DATAPLANE_MODE}", "none", "the pod label beats the namespace label")
        return Capture(CaptureState.NOT_CAPTURED, "the pod opts out of the mesh", (ev,))
    if pod_mode == "ambient":
        return Evidence(ref, f"pod labels.{DATAPLANE_MODE}", "ambient")
    ns_mode = index.namespace_labels(workload.meta.namespace).get(DATAPLANE_MODE)
    ns_ref = f"Namespace {workload.meta.namespace}"
    if ns_mode == "ambient":
        return Evidence(ns_ref, f"labels.{DATAPLANE_MODE}", "ambient")
    known = workload.meta.namespace in index.namespaces
    value = ns_mode or ("(absent)" if known else "(Namespace object not in the snapshot)")
    ev = Evidence(ns_ref, f"labels.{DATAPLANE_MODE}", value)
    return Capture(CaptureState.NOT_CAPTURED, "neither the pod nor its namespace is labelled ambient", (ev,))


def _live_redirection(workload: Workload, enrolled: Evidence) -> Capture:
    value = workload.pod_annotations.get(REDIRECTION)
    ev = Evidence(workload.meta.ref, f"annotations.{REDIRECTION}", value or "(absent)")
    if value == "enabled":
        return _inbound_bypass(workload) or Capture(
            CaptureState.CAPTURED, "istio-cni redirected the pod", (enrolled, ev)
        )
    if value == "pending":
        return Capture(CaptureState.PENDING, "istio-cni has not finished redirecting the pod", (enrolled, ev))
    return Capture(
        CaptureState.NOT_CAPTURED,
        "labelled for ambient but istio-cni did not redirect it",
        (enrolled, ev),
    )


def _inbound_bypass(workload: Workload) -> Capture | None:
    if workload.pod_annotations.get(BYPASS_INBOUND, "").lower() != "true":
        return None
    ev = Evidence(
        workload.meta.ref,
        f"annotations.{BYPASS_INBOUND}",
        "true",
        "STRICT and inbound policy are not enforced",
    )
    return Capture(CaptureState.NOT_CAPTURED, "inbound capture is bypassed by annotation (§2)", (ev,))


# --- PeerAuthentication (semantics §3) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MtlsDecision:
    """Effective inbound mTLS mode of one workload port; ``ambiguous`` when creation order would
    decide between disagreeing policies that are equally old (or carry no creationTimestamp)."""

    mode: str
    evidence: tuple[Evidence, ...]
    ambiguous: bool = False
    ambiguity: str = "policies at one level disagree and are equally old (same or no creationTimestamp)"

    @property
    def refuses_plaintext(self) -> bool:
        """True when the effective mode is ``STRICT`` (semantics §3). Never raises."""
        return self.mode == "STRICT"


def effective_mtls(workload: Workload, port: int, index: SnapshotIndex, root_namespace: str) -> MtlsDecision:
    """The effective PeerAuthentication mode of ``workload`` on ``port`` (a target port number), as istiod computes
    it for ambient (semantics §3): mesh-wide (``root_namespace``), then namespace-wide, then workload-selector
    policies (the oldest wins at each level), then the winner's ``portLevelMtls`` (except where istiod drops it).
    PERMISSIVE when no policy applies. ``evidence`` lists each level that decided. Never raises.
    """
    mode, evidence, ambiguous = (
        "PERMISSIVE",
        [Evidence("(mesh default)", "", "PERMISSIVE", "no policy = PERMISSIVE")],
        False,
    )
    namespace = workload.meta.namespace
    local = namespace != root_namespace
    evidence += [_ignored_root_selector(p) for p in _selecting(index, root_namespace, workload)]
    levels = (
        index.peer_auth_wide.get(root_namespace, []),
        index.peer_auth_wide.get(namespace, []) if local else [],
        _selecting(index, namespace, workload) if local else [],
    )
    winner: PeerAuthentication | None = None
    winners: list[PeerAuthentication | None] = []
    for policies in levels:
        winner, unclear = _oldest(policies, port)
        winners.append(winner)
        ambiguous = ambiguous or unclear
        if winner is not None and winner.mode is not None:
            mode = winner.mode
            evidence.append(Evidence(winner.meta.ref, "spec.mtls.mode", winner.mode, _level_note(winner)))
    port_mode = winner.port_level.get(port) if winner is not None and _has_selector(winner) else None
    if winner is not None and port_mode == "STRICT" and _dropped_port_strict(winner, winners[0], winners[1]):
        evidence.append(
            Evidence(
                winner.meta.ref,
                f"spec.portLevelMtls.{port}.mode",
                "STRICT",
                f"dropped by istiod in ambient: the policy is {winner.mode}, its namespace has no mode of its "
                "own and the mesh-wide policy is STRICT (§3)",
            )
        )
        port_mode = None
    if winner is not None and _ignored_port_disable(winner, port_mode, mode):
        evidence.append(
            Evidence(
                winner.meta.ref,
                f"spec.portLevelMtls.{port}.mode",
                "DISABLE",
                "ignored by istiod in ambient: an UNSET policy inheriting STRICT relaxes ports only when one "
                "of them is PERMISSIVE (§3)",
            )
        )
        port_mode = None
    if winner is not None and port_mode is not None:
        mode = port_mode
        evidence.append(
            Evidence(
                winner.meta.ref,
                f"spec.portLevelMtls.{port}.mode",
                port_mode,
                "keys are target ports (§3)",
            )
        )
    order_decides = _lookup_order_decides(winners[2], winners[:2])
    if not ambiguous and mode == "STRICT" and port_mode is None and order_decides is not None:
        evidence.append(
            Evidence(
                order_decides.meta.ref,
                "spec.portLevelMtls",
                "PERMISSIVE",
                "istiod drops the static STRICT policy for this pod and hands ztunnel this policy's derived "
                "form, built with the namespace/mesh policy it had indexed then: plaintext may be accepted (§3)",
            )
        )
        return MtlsDecision(
            mode=mode,
            evidence=tuple(evidence),
            ambiguous=True,
            ambiguity="an UNSET workload policy with a PERMISSIVE port exception under an inherited STRICT: "
            "istiod's result depends on the order it saw the policies in",
        )
    return MtlsDecision(mode=mode, evidence=tuple(evidence), ambiguous=ambiguous)


def _lookup_order_decides(
    workload: PeerAuthentication | None, parents: list[PeerAuthentication | None]
) -> PeerAuthentication | None:
    """istiod 1.31 (ambient/policies.go ``PeerAuthDerivedPolicies``, authorization.go
    ``convertPeerAuthentication``): for a workload policy with mode UNSET and a PERMISSIVE port
    exception under an inherited STRICT, the pod references only the policy's derived form (the
    static STRICT policy is dropped), and that form merges in the namespace and mesh policies
    looked up with ``PeerAuthByNamespace.Lookup`` outside krt's dependency tracking. When istiod
    converted the workload policy before it had indexed the STRICT parent (created later, changed
    since, or listed later at start-up), the derived form is empty and is never recomputed: the
    pod accepts plaintext on every port. Whether that happened is not in the configuration, so
    the ports the exception does not name are ambiguous. Found by the translation oracle (a
    generated batch applying both policies at once). Returns that workload policy, else None."""
    if (
        workload is not None
        and workload.mode is None
        and "PERMISSIVE" in workload.port_level.values()
        and any(parent is not None and parent.mode is not None for parent in parents)
    ):
        return workload
    return None


def _dropped_port_strict(
    policy: PeerAuthentication, mesh: PeerAuthentication | None, namespace: PeerAuthentication | None
) -> bool:
    """istiod 1.31 (ambient/authorization.go ``convertPeerAuthentication``) skips a STRICT port
    exception when the namespace policy is absent or UNSET and the mesh-wide one is STRICT,
    without checking the workload policy's own mode: for a PERMISSIVE or DISABLE policy nothing
    is left to hand ztunnel, so the port accepts plaintext. Found by the translation oracle."""
    return (
        policy.mode in {"PERMISSIVE", "DISABLE"}
        and (namespace is None or namespace.mode is None)
        and mesh is not None
        and mesh.mode == "STRICT"
    )


def _ignored_port_disable(policy: PeerAuthentication, port_mode: str | None, inherited: str) -> bool:
    """istiod 1.31 (ambient/authorization.go ``convertedSelectorPeerAuthentications``, mode UNSET
    under an effective STRICT): it hands ztunnel the workload policy's port exceptions only when a
    port is PERMISSIVE; a policy whose exceptions are all DISABLE leaves the static STRICT policy
    in place, so those ports stay STRICT. Found by the translation oracle (issue 11)."""
    return (
        port_mode == "DISABLE"
        and policy.mode is None
        and inherited == "STRICT"
        and "PERMISSIVE" not in policy.port_level.values()
    )


def _selecting(index: SnapshotIndex, namespace: str, workload: Workload) -> list[PeerAuthentication]:
    selected = index.peer_auth_selected.get(namespace)
    return selected.select(workload.pod_labels) if selected else []


def _has_selector(policy: PeerAuthentication) -> bool:
    return bool(policy.selector)


def _ignored_root_selector(policy: PeerAuthentication) -> Evidence:
    return Evidence(
        policy.meta.ref,
        "spec.selector",
        "set",
        "selector policies in the root namespace are ignored in ambient (§3)",
    )


def _level_note(policy: PeerAuthentication) -> str:
    return "workload policy" if _has_selector(policy) else f"policy for namespace {policy.meta.namespace}"


def _oldest(policies: list[PeerAuthentication], port: int) -> tuple[PeerAuthentication | None, bool]:
    """The oldest policy wins at one level (§3); among equally old ones the winner is unknown.

    istiod's ambient translation (pilot/pkg/serviceregistry/ambient/authorization.go,
    ``convertedSelectorPeerAuthentications``) keeps a policy only if it is strictly older
    (``Before``), in the order its informer lists them: with the same creationTimestamp (the API
    server stamps whole seconds, so one ``kubectl apply`` often gives the same) or none, which of
    several disagreeing policies wins is not decided by the configuration (no name tie-break, as
    the sidecar path has): ambiguous. The translation oracle showed istiod picking the other one.
    """
    if not policies:
        return None, False
    ordered = sorted(policies, key=lambda p: (p.meta.creation_timestamp or "", p.meta.name))
    first = ordered[0].meta.creation_timestamp
    tied = [p for p in policies if p.meta.creation_timestamp is None or p.meta.creation_timestamp == first]
    disagree = len({(p.mode, p.port_level.get(port)) for p in tied}) > 1
    return ordered[0], disagree


# --- Waypoints (semantics §2, §4.7) ------------------------------------------------------------
#
# istiod's rule (pilot/pkg/serviceregistry/ambient/waypoints.go, Istio 1.31): a Gateway is a
# waypoint once its status has an address (gatewayToWaypointTransform); a Service gets the one its
# own label names, else its namespace's (fetchWaypointForTarget), unless the Service is istiod's
# own for a waypoint or an east-west gateway (fetchWaypointForService); attachment from another
# namespace follows the allowedRoutes of the 15008/HBONE listener, else ``Same``
# (makeAllowedRoutes); the traffic type must be service or all. The listeners themselves decide
# nothing else in the binding: ztunnel then connects to port 15008 of the waypoint's Service,
# which istiod creates with one port per listener (gatewaycommon extractServicePorts).

GATEWAY_MANAGED = "gateway.istio.io/managed"
MESH_CONTROLLER = "istio.io-mesh-controller"
EASTWEST_CONTROLLER = "istio.io-eastwest-controller"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True, slots=True)
class WaypointBinding:
    """Which waypoint a Service's labels (or its namespace's) ask for.

    ``exempt``: the Service is istiod's own for a waypoint or an east-west gateway, which never has
    a waypoint whatever the labels say.
    """

    name: str | None
    namespace: str | None
    evidence: tuple[Evidence, ...]
    opted_out: bool = False
    exempt: bool = False


def waypoint_binding(service: Service, index: SnapshotIndex) -> WaypointBinding:
    """Object label beats namespace label; the namespace comes from the same object (§2).

    A Service labelled ``gateway.istio.io/managed: istio.io-mesh-controller`` (a waypoint's own)
    or ``istio.io-eastwest-controller`` never uses a waypoint (istiod fetchWaypointForService).
    """
    own = service.meta.labels
    managed = own.get(GATEWAY_MANAGED, "")
    if managed in {MESH_CONTROLLER, EASTWEST_CONTROLLER}:
        ev = Evidence(
            service.meta.ref,
            f"labels.{GATEWAY_MANAGED}",
            managed,
            "istiod's own Service for a waypoint or east-west gateway never uses a waypoint (§2)",
        )
        return WaypointBinding(None, None, (ev,), exempt=True)
    return _binding_by_labels(own, service.meta, f"labels.{USE_WAYPOINT}", index)


def _binding_by_labels(own: Labels, meta: ObjectMeta, field: str, index: SnapshotIndex) -> WaypointBinding:
    """The waypoint an object's own ``istio.io/use-waypoint`` names, else its namespace's (the
    object's label wins, with no fallback); ``field`` names where the label was looked for."""
    if USE_WAYPOINT in own:
        return _binding_from(own, meta.ref, meta.namespace)
    ns_labels = index.namespace_labels(meta.namespace)
    if USE_WAYPOINT in ns_labels:
        return _binding_from(ns_labels, f"Namespace {meta.namespace}", meta.namespace)
    return WaypointBinding(None, None, (Evidence(meta.ref, field, "(absent, also on its namespace)"),))


def _binding_from(labels: Labels, ref: str, default_namespace: str) -> WaypointBinding:
    name = labels[USE_WAYPOINT]
    evidence = [Evidence(ref, f"labels.{USE_WAYPOINT}", name)]
    if name == "none":
        return WaypointBinding(None, None, tuple(evidence), opted_out=True)
    namespace = labels.get(USE_WAYPOINT_NAMESPACE, default_namespace)
    if USE_WAYPOINT_NAMESPACE in labels:
        evidence.append(Evidence(ref, f"labels.{USE_WAYPOINT_NAMESPACE}", namespace))
    return WaypointBinding(name, namespace, tuple(evidence))


@dataclass(frozen=True, slots=True)
class WaypointProblem:
    """One reason istiod does not bind a Service to its waypoint: ``message`` in words (with the semantics section)
    and the ``evidence`` field that shows it.
    """

    message: str
    evidence: Evidence


def waypoint_problems(gateway: Gateway, service: Service, index: SnapshotIndex) -> tuple[WaypointProblem, ...]:
    """Reasons istiod does not bind the Service to the named Gateway: traffic then bypasses it."""
    problems = list(_gateway_class_problems(gateway))
    problems += _traffic_type_problems(gateway, index)
    attachment = _attachment_problem(gateway, service.meta.namespace, index)
    problems += [attachment] if attachment else []
    problems += _gateway_status_problems(gateway)
    return tuple(problems)


def hbone_listener(gateway: Gateway) -> Listener | None:
    """The listener whose allowedRoutes govern attachment: port 15008, protocol HBONE (makeAllowedRoutes)."""
    return next((lst for lst in gateway.listeners if lst.port == HBONE_PORT and lst.protocol == "HBONE"), None)


def _attachment_problem(gateway: Gateway, namespace: str, index: SnapshotIndex) -> WaypointProblem | None:
    listener = hbone_listener(gateway)
    origin = "the 15008/HBONE listener" if listener else "no 15008/HBONE listener, so Same"
    allowed = listener.allowed_routes_from if listener else "Same"
    if allowed == "All":
        return None
    if allowed == "Selector" and listener is not None:
        selector = listener.allowed_routes_selector
        labels = index.namespace_labels(namespace)
        if selector is not None and selector_matches(selector, labels):
            return None
        shown = "matchExpressions (not evaluated)" if selector is None else _shown(selector)
        ev = Evidence(gateway.meta.ref, "spec.listeners[15008].allowedRoutes.namespaces.selector", shown, origin)
        return WaypointProblem(f"the waypoint's namespace selector does not admit namespace {namespace}", ev)
    if gateway.meta.namespace == namespace:
        return None
    ev = Evidence(gateway.meta.ref, "spec.listeners[].allowedRoutes.namespaces.from", allowed, origin)
    return WaypointProblem(f"the waypoint does not allow attachment from namespace {namespace}", ev)


def _shown(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(empty)"


def _gateway_class_problems(gateway: Gateway) -> list[WaypointProblem]:
    if gateway.class_name == WAYPOINT_CLASS:
        return []
    ev = Evidence(gateway.meta.ref, "spec.gatewayClassName", gateway.class_name or "(absent)")
    return [WaypointProblem(f"the Gateway's class is not {WAYPOINT_CLASS}", ev)]


def _listeners(gateway: Gateway) -> str:
    return ", ".join(f"{lst.name}:{lst.port}/{lst.protocol}" for lst in gateway.listeners) or "(none)"


def waypoint_unreachable(gateway: Gateway, index: SnapshotIndex) -> WaypointProblem | None:
    """Why ztunnel cannot open HBONE to a bound waypoint, or None.

    ztunnel connects to port 15008 of the waypoint's Service (GatewayAddress.hbone_mtls_port;
    ztunnel ``State::fetch_waypoint``); istiod creates that Service with port 15021 and one port
    per listener. Without port 15008 every connection through the waypoint fails
    (``UnknownWaypoint``): the Service is bound yet unreachable, fail-closed. The Service in the
    snapshot (live: istiod's) decides; without it, the listeners do.
    """
    own = index.services.get(gateway.meta.key)
    if own is not None and own.meta.labels.get(GATEWAY_NAME) == gateway.meta.name:
        if any(port.port == HBONE_PORT for port in own.ports):
            return None
        shown = ",".join(str(port.port) for port in own.ports) or "(none)"
        ev = Evidence(own.meta.ref, "spec.ports[].port", shown, "ztunnel connects to port 15008")
    elif any(lst.port == HBONE_PORT for lst in gateway.listeners):
        return None
    else:
        ev = Evidence(
            gateway.meta.ref,
            "spec.listeners",
            _listeners(gateway),
            "istiod gives the waypoint's Service one port per listener; ztunnel connects to port 15008",
        )
    return WaypointProblem(
        "the waypoint is bound but its Service has no port 15008: ztunnel cannot reach it and every "
        "connection through it fails (UnknownWaypoint)",
        ev,
    )


def traffic_type(gateway: Gateway, index: SnapshotIndex) -> str:
    """The traffic the waypoint serves: the Gateway's ``istio.io/waypoint-for`` label, else its
    GatewayClass's, else ``service`` (istiod gatewayToWaypointTransform). The value as written:
    ``service``, ``workload``, ``all``, ``none`` or anything else (which serves neither). Never raises."""
    gateway_class = index.gateway_classes.get(gateway.class_name)
    class_value = gateway_class.meta.labels.get(WAYPOINT_FOR) if gateway_class else None
    return gateway.meta.labels.get(WAYPOINT_FOR, class_value if class_value is not None else "service")


def _traffic_type_problems(gateway: Gateway, index: SnapshotIndex, kind: str = "service") -> list[WaypointProblem]:
    """``kind``: ``service`` (Service-addressed traffic) or ``workload`` (traffic addressed to a pod IP)."""
    value = traffic_type(gateway, index)
    if value in {kind, "all"}:
        return []
    what = "Service-addressed traffic" if kind == "service" else "traffic addressed to a pod IP"
    # istiod reports it on a Service's istio.io/WaypointBound (False, UnsupportedTrafficType); on a pod, nowhere.
    note = f"{what} needs {kind} or all (istiod: UnsupportedTrafficType)"
    ev = Evidence(gateway.meta.ref, f"labels.{WAYPOINT_FOR}", value, note)
    return [WaypointProblem(f"the waypoint serves {value!r} traffic, not {what}", ev)]


def _gateway_status_problems(gateway: Gateway) -> list[WaypointProblem]:
    """With status, istiod's test is ``status.addresses`` (set once a waypoint pod was ready)."""
    if not gateway.has_status or gateway.addresses:
        return []
    programmed = condition(gateway.conditions, "Programmed")
    shown = "(absent)" if programmed is None else f"{programmed.status} ({programmed.reason})"
    ev = Evidence(gateway.meta.ref, "status.addresses", "(empty)", f"Programmed: {shown}")
    return [WaypointProblem("the waypoint has no address yet: istiod does not bind it, traffic bypasses it (§4.7)", ev)]


def condition(conditions: tuple[Condition, ...], type_: str) -> Condition | None:
    """The first condition of type ``type_`` in ``conditions``, else None. Never raises."""
    return next((c for c in conditions if c.type == type_), None)


@dataclass(frozen=True, slots=True)
class EffectiveWaypoint:
    """The waypoint Service-addressed in-mesh traffic really goes through, or why none.

    ``fails_closed``: istiod binds the Service to ``gateway`` but ztunnel cannot reach it, so
    every connection that should go through it fails (``waypoint_unreachable``).
    """

    gateway: Gateway | None
    binding: WaypointBinding
    problems: tuple[WaypointProblem, ...]
    fails_closed: WaypointProblem | None = None


def effective_waypoint(service: Service, index: SnapshotIndex) -> EffectiveWaypoint:
    """Fail-open like Istio: a waypoint that does not resolve or is not ready is skipped (§4.7)."""
    binding = waypoint_binding(service, index)
    if binding.name is None:
        return EffectiveWaypoint(None, binding, ())
    gateway = index.gateways.get(f"{binding.namespace}/{binding.name}")
    if gateway is None:
        ev = Evidence(
            f"Gateway {binding.namespace}/{binding.name}",
            "",
            "(not found)",
            "traffic goes straight to the pods (§4.7)",
        )
        return EffectiveWaypoint(None, binding, (WaypointProblem("the waypoint Gateway does not exist", ev),))
    problems = waypoint_problems(gateway, service, index)
    bound = _service_bound_problem(service)
    problems = problems + ((bound,) if bound else ())
    if problems:
        return EffectiveWaypoint(None, binding, problems)
    return EffectiveWaypoint(gateway, binding, (), waypoint_unreachable(gateway, index))


# A pod's own waypoint (istiod computeWaypoint / fetchWaypointForWorkload, Istio 1.31): a pod of a
# waypoint (label gateway.networking.k8s.io/gateway-name naming a waypoint of its namespace) has
# none; else the pod's own istio.io/use-waypoint label, else its namespace's (``none`` opts out),
# with the same attachment rules as a Service's; the waypoint must serve ``workload`` or ``all``.
# ztunnel sends traffic addressed to the pod's IP through it, never Service-addressed traffic
# (ztunnel proxy/outbound.rs: "Don't traverse waypoint if traffic was addressed to a service"),
# and at the waypoint such traffic meets the direct-pod filter chain, whose policies are those
# targeting the Gateway (or the istio-waypoint GatewayClass), never a Service's (semantics §4.8).


def workload_waypoint_binding(workload: Workload, index: SnapshotIndex) -> WaypointBinding:
    """Which waypoint a pod's labels (or its namespace's) ask for: pod label beats namespace label."""
    return _binding_by_labels(workload.pod_labels, workload.meta, f"template.labels.{USE_WAYPOINT}", index)


def workload_waypoint(workload: Workload, index: SnapshotIndex) -> EffectiveWaypoint:
    """The waypoint istiod hands ztunnel for the pod (its ``Workload.waypoint``): traffic addressed
    to the pod's IP goes through it (semantics §4.8). ``gateway`` None with ``problems`` saying why
    when the labels ask for one istiod does not bind (not found, not ready, attachment refused,
    ``waypoint-for`` not ``workload``/``all``); ``binding.exempt`` for a waypoint's own pods.
    Fail-open like a Service's. Never raises."""
    instance = workload.pod_labels.get(GATEWAY_NAME)
    own = index.gateways.get(f"{workload.meta.namespace}/{instance}") if instance else None
    if own is not None and _is_waypoint(own):
        ev = Evidence(workload.meta.ref, f"labels.{GATEWAY_NAME}", own.meta.name, "a pod of this waypoint")
        return EffectiveWaypoint(None, WaypointBinding(None, None, (ev,), exempt=True), ())
    binding = workload_waypoint_binding(workload, index)
    if binding.name is None:
        return EffectiveWaypoint(None, binding, ())
    gateway = index.gateways.get(f"{binding.namespace}/{binding.name}")
    if gateway is None:
        ev = Evidence(
            f"Gateway {binding.namespace}/{binding.name}", "", "(not found)", "traffic goes straight to the pod"
        )
        return EffectiveWaypoint(None, binding, (WaypointProblem("the waypoint Gateway does not exist", ev),))
    problems = list(_gateway_class_problems(gateway))
    problems += _traffic_type_problems(gateway, index, "workload")
    attachment = _attachment_problem(gateway, workload.meta.namespace, index)
    problems += [attachment] if attachment else []
    problems += _gateway_status_problems(gateway)
    if problems:
        return EffectiveWaypoint(None, binding, tuple(problems))
    return EffectiveWaypoint(gateway, binding, (), waypoint_unreachable(gateway, index))


def _is_waypoint(gateway: Gateway) -> bool:
    return gateway.class_name == WAYPOINT_CLASS and not _gateway_status_problems(gateway)


def _service_bound_problem(service: Service) -> WaypointProblem | None:
    bound = condition(service.conditions, "istio.io/WaypointBound")
    if bound is None or bound.status == "True":
        return None
    ev = Evidence(
        service.meta.ref,
        "status.conditions[istio.io/WaypointBound]",
        f"{bound.status} ({bound.reason})",
        bound.message,
    )
    return WaypointProblem("Istio reports the Service is not bound to its waypoint", ev)


# --- Who the callers are (semantics §9) ------------------------------------------------------------

INGRESS_USE_WAYPOINT = "istio.io/ingress-use-waypoint"
PROXY_CONTAINER = "istio-proxy"
# The labels every probe pod the auditor creates carries (adapters.probepods.podspec sets them).
PROBE_MANAGED_BY = ("app.kubernetes.io/managed-by", "mesh-auditor")
PROBE_ROLE_LABEL = "mesh-auditor.dev/role"


def is_auditor_probe(workload: Workload) -> bool:
    """A probe pod of the auditor's own: short-lived, and no way an application calls anything."""
    key, value = PROBE_MANAGED_BY
    labels = workload.meta.labels
    return workload.meta.kind == "Pod" and labels.get(key) == value and PROBE_ROLE_LABEL in labels


class ClientKind(StrEnum):
    """The kinds of client the mesh distinguishes; ``CLIENTS`` says how each one calls."""

    AMBIENT = "ambient pod"
    SIDECAR = "sidecar pod"
    GATEWAY = "Istio gateway"
    WAYPOINT = "waypoint"
    OUTSIDE = "pod outside the mesh"
    HOST = "hostNetwork pod or node"


class WaypointUse(StrEnum):
    """When a client kind sends Service-addressed traffic through the Service's waypoint (semantics §9): always, only
    for Services labelled ``istio.io/ingress-use-waypoint=true``, or never.
    """

    ALWAYS = "always"
    LABELLED = f"only for Services labelled {INGRESS_USE_WAYPOINT}=true"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class ClientModel:
    """One row of the caller model (docs/ambient-semantics.md §9)."""

    kind: ClientKind
    identity: bool  # presents its ServiceAccount's SPIFFE identity
    mtls: bool  # its traffic arrives as mTLS (HBONE), so STRICT does not refuse it
    service_waypoint: WaypointUse  # Service-addressed traffic meets the Service's waypoint
    service_hops: str
    pod_ip_hops: str
    source: str


CLIENTS: dict[ClientKind, ClientModel] = {
    model.kind: model
    for model in (
        ClientModel(
            ClientKind.AMBIENT,
            identity=True,
            mtls=True,
            service_waypoint=WaypointUse.ALWAYS,
            service_hops="source ztunnel -> the Service's waypoint (if effective) -> destination ztunnel",
            pod_ip_hops="source ztunnel -> destination ztunnel (a service waypoint is skipped)",
            source="istio.io docs ambient/usage/waypoint; semantics §4.5, §4.6",
        ),
        ClientModel(
            ClientKind.SIDECAR,
            identity=True,
            mtls=True,
            service_waypoint=WaypointUse.NEVER,
            service_hops="sidecar Envoy -> destination ztunnel (sidecars do not use waypoints)",
            pod_ip_hops="sidecar Envoy -> destination ztunnel",
            source="istio/istio#54483 (maintainer: sidecars don't go through waypoints)",
        ),
        ClientModel(
            ClientKind.GATEWAY,
            identity=True,
            mtls=True,
            service_waypoint=WaypointUse.LABELLED,
            service_hops=f"gateway Envoy -> the waypoint only if the Service has {INGRESS_USE_WAYPOINT}: "
            '"true", else -> destination ztunnel',
            pod_ip_hops="gateway Envoy -> destination ztunnel",
            source="istio.io docs ambient/usage/l7-features (ingress-use-waypoint)",
        ),
        ClientModel(
            ClientKind.WAYPOINT,
            identity=True,
            mtls=True,
            service_waypoint=WaypointUse.NEVER,
            service_hops="waypoint Envoy -> destination ztunnel (it is the waypoint hop)",
            pod_ip_hops="waypoint Envoy -> destination ztunnel",
            source="semantics §2, §4.5",
        ),
        ClientModel(
            ClientKind.OUTSIDE,
            identity=False,
            mtls=False,
            service_waypoint=WaypointUse.NEVER,
            service_hops="plaintext -> destination ztunnel (STRICT refuses it)",
            pod_ip_hops="plaintext -> destination ztunnel (STRICT refuses it)",
            source="semantics §1.2, §4.6",
        ),
        ClientModel(
            ClientKind.HOST,
            identity=False,
            mtls=False,
            service_waypoint=WaypointUse.NEVER,
            service_hops="plaintext from the node's network -> destination ztunnel (STRICT refuses it)",
            pod_ip_hops="plaintext from the node's network -> destination ztunnel",
            source="semantics §2 (hostNetwork pods are never captured)",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class ClientOf:
    """Which row of the caller model a workload is, and the field that decided it."""

    kind: ClientKind
    evidence: Evidence

    @property
    def model(self) -> ClientModel:
        """The caller model row of ``kind`` (``CLIENTS``). Never raises."""
        return CLIENTS[self.kind]


def client_of(workload: Workload, index: SnapshotIndex) -> ClientOf:
    """Classify a workload as a client: hostNetwork, waypoint, gateway, sidecar, ambient or outside."""
    ref = workload.meta.ref
    if workload.host_network:
        return ClientOf(ClientKind.HOST, Evidence(ref, "spec.hostNetwork", "true"))
    infra = istio_workload(workload, index)
    if infra is not None and isinstance(infra[0], ClientKind):
        return ClientOf(infra[0], infra[1])
    # A control-plane component's istio-proxy container (ztunnel's, in Istio's chart) is its own
    # proxy, not an injected sidecar: its capture decides, like any pod's (§10).
    sidecar = _sidecar_evidence(workload, index) if infra is None else None
    if sidecar is not None:
        return ClientOf(ClientKind.SIDECAR, sidecar)
    if _outbound_captured(workload, index):
        return ClientOf(ClientKind.AMBIENT, Evidence(ref, "", "captured", "ztunnel carries its outbound traffic"))
    return ClientOf(ClientKind.OUTSIDE, Evidence(ref, "", "not captured", capture_of(workload, index).reason))


def _outbound_captured(workload: Workload, index: SnapshotIndex) -> bool:
    """Outbound capture: the inbound bypass annotation leaves outbound traffic to ztunnel."""
    capture = capture_of(workload, index)
    if capture.state is CaptureState.CAPTURED:
        return True
    return any(ev.field == f"annotations.{BYPASS_INBOUND}" for ev in capture.evidence)


def uses_service_waypoint(kind: ClientKind, service: Service) -> bool:
    """True when a client of ``kind`` goes through ``service``'s waypoint (``CLIENTS[kind].service_waypoint``;
    semantics §9). Never raises.
    """
    use = CLIENTS[kind].service_waypoint
    if use is WaypointUse.LABELLED:
        return service.meta.labels.get(INGRESS_USE_WAYPOINT, "").lower() == "true"
    return use is WaypointUse.ALWAYS


# --- Istio's own infrastructure (semantics §10) ------------------------------------------------------

# app label -> (component, the container its Helm chart names): both must agree (Istio's charts).
_CONTROL_PLANE = {
    "istiod": ("istiod", "discovery"),
    "ztunnel": ("ztunnel", PROXY_CONTAINER),
    "istio-cni-node": ("istio-cni", "install-cni"),
}


def istio_workload(workload: Workload, index: SnapshotIndex) -> tuple[ClientKind | str, Evidence] | None:
    """Istio's own workloads: a control-plane component, a waypoint, or a gateway (§10)."""
    ref, labels = workload.meta.ref, workload.pod_labels
    names = [c.name for c in workload.containers]
    for key in ("app", "app.kubernetes.io/name", "k8s-app"):
        component = _CONTROL_PLANE.get(labels.get(key, ""))
        if component is not None and component[1] in names:
            return component[0], Evidence(ref, f"labels.{key}", labels[key], f"container {component[1]}")
    gateway_name = labels.get(GATEWAY_NAME)
    gateway = index.gateways.get(f"{workload.meta.namespace}/{gateway_name}") if gateway_name else None
    if labels.get(GATEWAY_MANAGED) == MESH_CONTROLLER or (gateway is not None and gateway.class_name == WAYPOINT_CLASS):
        field = f"labels.{GATEWAY_MANAGED}" if GATEWAY_MANAGED in labels else f"labels.{GATEWAY_NAME}"
        return ClientKind.WAYPOINT, Evidence(ref, field, labels.get(GATEWAY_MANAGED) or gateway_name or "")
    if PROXY_CONTAINER in names:
        template = workload.pod_annotations.get("inject.istio.io/templates", "")
        if gateway_name or GATEWAY_MANAGED in labels or "gateway" in template.split(","):
            return ClientKind.GATEWAY, Evidence(ref, f"labels.{GATEWAY_NAME}", gateway_name or template or "")
        if labels.get("istio") in {"ingressgateway", "egressgateway"} or set(names) == {PROXY_CONTAINER}:
            return ClientKind.GATEWAY, Evidence(ref, "spec.containers[].name", PROXY_CONTAINER, "a proxy of its own")
    return None


def istio_service(service: Service, index: SnapshotIndex) -> Evidence | None:
    """Evidence that a Service is Istio's own (waypoint, gateway, istiod, ztunnel, istio-cni), or None."""
    # Several checks ask for every Service: remembered per index, with the Service object itself
    # so that another object of the same name never matches (#16).
    key = ("istio-service", service.meta.key)
    held = index.index_memo.get(key)
    if isinstance(held, tuple) and held[0] is service:
        found: Evidence | None = held[1]
        return found
    found = _istio_service(service, index)
    index.index_memo[key] = (service, found)
    return found


def _istio_service(service: Service, index: SnapshotIndex) -> Evidence | None:
    labels = service.meta.labels
    for key in (GATEWAY_NAME, GATEWAY_MANAGED):
        if key in labels:
            return Evidence(service.meta.ref, f"labels.{key}", labels[key], "created by istiod for a Gateway")
    for workload in index.workloads_for(service):
        found = istio_workload(workload, index)
        if found is not None:
            what = found[0].value if isinstance(found[0], ClientKind) else found[0]
            ev = found[1]
            return Evidence(ev.object, ev.field, ev.value, f"{what}: part of Istio itself")
    return None


# --- Which application protocol Istio gives a Service port (semantics §4.9) -------------------------

_HTTP_PROTOCOLS = frozenset({"http", "http2", "http_proxy", "grpc", "grpc-web"})
_TCP_PROTOCOLS = frozenset({"tcp", "https", "tls", "mongo", "redis", "mysql", "udp"})
# pkg/config/kube/conversion.go wellKnownPorts: TCP when the name says nothing (SMTP, DNS, MySQL, MongoDB).
_WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})
_APP_PROTOCOL_NAMES = {"kubernetes.io/h2c": "http2", "kubernetes.io/ws": "http", "kubernetes.io/wss": "https"}


def port_protocol(port: ServicePort) -> str:
    """Istio's protocol of a Service port, lower-case (``http``, ``grpc``, ``tcp``, ``https``...), or ``""``
    when Istio does not know it and sniffs (istiod ``kube.ConvertProtocol``): UDP is ``udp``; else
    ``appProtocol`` when set (Kubernetes' ``kubernetes.io/h2c``, ``/ws``, ``/wss`` mapped), else the port
    name; ``grpc-web`` by prefix, otherwise the part before the first ``-``, case-insensitive; an unknown
    name on a well-known port (25, 53, 3306, 27017) is ``tcp``. Never raises.
    """
    if port.protocol == "UDP":
        return "udp"
    name = port.app_protocol or port.name
    if port.app_protocol in _APP_PROTOCOL_NAMES:
        return _APP_PROTOCOL_NAMES[port.app_protocol]
    if name[: len("grpc-web")].lower() == "grpc-web":
        return "grpc-web"
    found = name.split("-", 1)[0].lower()
    if found in _HTTP_PROTOCOLS or found in _TCP_PROTOCOLS:
        return found
    return "tcp" if port.port in _WELL_KNOWN_TCP_PORTS else ""


def waypoint_sees_http(service: Service, port: int) -> bool:
    """Whether a waypoint handles an HTTP request to ``service``'s port ``port`` as HTTP (semantics §4.9).

    istiod gives a waypoint one chain per Service port (pilot/pkg/networking/core/listener_waypoint.go):
    an HTTP one for an HTTP protocol, an HTTP and a TCP one behind protocol detection for an unknown
    protocol (an HTTP request reaches the HTTP one), a TCP one otherwise (``tcp``, ``https``, ``tls``...);
    there the request is opaque bytes and the AuthorizationPolicies are built for TCP. A port the
    Service does not declare is taken as HTTP (no chain would take it). Never raises.
    """
    declared = next((p for p in service.ports if p.port == port), None)
    if declared is None:
        return True
    return port_protocol(declared) not in _TCP_PROTOCOLS
