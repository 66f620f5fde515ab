"""Each finding's own fix: the objects that decided it, changed so the promise holds.

A fix is filled in from the snapshot, never a template: the real names, namespaces, labels,
selectors and principals, and the rules' allow-list and header names. It never repeats YAML the
input already holds: every document either changes an object the input has (a PeerAuthentication
set to STRICT under its own name, an AuthorizationPolicy cut down to the rules' allow-list, a label
on the Deployment's pod template) or creates one it lacks; a document equal to the input's object
is dropped, and a fix left with none says why instead.

Istio objects (PeerAuthentication, AuthorizationPolicy) are written whole, for ``kubectl apply``:
the snapshot's model holds every field Istio reads from them. Workloads, Services, Namespaces and
existing Gateways are patches that name the object and carry only the change (the model does not
hold the rest of them). Header values are never written into a fix, as into any finding: a
required value is ``${VARIABLE}`` for ``envsubst``, and the note says where its value comes from
(the rules' ``fromEnv`` variable, Secret or literal).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from auditor.core.authz import Caller, at_waypoint
from auditor.core.checks.context import AuditContext
from auditor.core.checks.reach import Reach, Route, route_for
from auditor.core.checks.witnesses import bypass_callers, callers_as
from auditor.core.mesh import (
    BYPASS_INBOUND,
    DATAPLANE_MODE,
    HBONE_PORT,
    INGRESS_USE_WAYPOINT,
    USE_WAYPOINT,
    USE_WAYPOINT_NAMESPACE,
    WAYPOINT_CLASS,
    WAYPOINT_FOR,
    Capture,
    CaptureState,
    ClientKind,
    MtlsDecision,
    capture_of,
    is_auditor_probe,
    port_protocol,
    uses_service_waypoint,
    waypoint_sees_http,
)
from auditor.core.model import NO_FIX, Finding, Fix, FixDocument, Status
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    Gateway,
    ObjectMeta,
    PeerAuthentication,
    Service,
    Workload,
)

SECURITY = "security.istio.io/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"
INJECT = "sidecar.istio.io/inject"
_API_VERSIONS = {
    "Pod": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}
# Where each kind keeps its pod template (a Pod is its own).
_TEMPLATE_PATH = {"Pod": (), "CronJob": ("spec", "jobTemplate", "spec", "template")}
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def none(reason: str) -> Fix:
    """No YAML fix, and why."""
    return Fix(note=f"No YAML fix: {reason}")


# --- strict-mtls.captured ------------------------------------------------------------------------


def capture_fix(ctx: AuditContext, captures: Sequence[tuple[Workload, Capture]]) -> Fix:
    """Patches that enrol each workload ztunnel does not capture (semantics §2)."""
    patches: dict[tuple[str, str, str], dict[str, Any]] = {}
    unfixable: list[str] = []
    for workload, capture in captures:
        if capture.state is not CaptureState.NOT_CAPTURED:
            continue
        fields = {ev.field for ev in capture.evidence}
        owner = controller_of(workload, ctx)
        labels, annotations, spec = _capture_changes(fields)
        if f"labels.{DATAPLANE_MODE}" in fields and not (labels or annotations or spec):
            namespace = workload.meta.namespace
            patches[("v1", "Namespace", namespace)] = _merge(
                patches.get(("v1", "Namespace", namespace), {}),
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": namespace, "labels": {DATAPLANE_MODE: "ambient"}},
                },
            )
            continue
        if (labels or spec) and not _enrolled(owner, ctx):
            labels.setdefault(DATAPLANE_MODE, "ambient")
        if owner.meta.kind == "Pod" and (spec or annotations or INJECT in labels):
            # A running Pod keeps its containers, host network and capture annotations.
            unfixable.append(
                f"{workload.meta.ref}: {capture.reason}; a running Pod keeps it: change the controller that "
                "creates the Pod (not in the snapshot) and recreate it"
            )
            continue
        if not (labels or annotations or spec):
            unfixable.append(
                f"{workload.meta.ref}: {capture.reason}; its labels already enrol it: restart the pod and check "
                "istio-cni on its node"
            )
            continue
        body = pod_template_patch(owner, labels=labels, annotations=annotations, spec=spec)
        key = (str(body["apiVersion"]), owner.meta.kind, owner.meta.key)
        patches[key] = _merge(patches.get(key, {}), body)
    documents = tuple(FixDocument(body, patch=True) for body in patches.values())
    if not documents:
        return none("; ".join(unfixable))
    names = ", ".join(
        f"{d.body['kind']} {d.body['metadata'].get('namespace', '')}/{d.body['metadata']['name']}".replace(" /", " ")
        for d in documents
    )
    templates = any(d.body["kind"] not in {"Namespace", "Pod"} for d in documents)
    rollout = "; a changed pod template rolls its pods out anew" if templates else ""
    note = f"Patch {names} (kubectl patch, strategic merge) so ztunnel captures the pods{rollout}"
    if unfixable:
        note += "; not fixable in YAML: " + "; ".join(unfixable)
    return Fix(documents, note + ".")


def _capture_changes(fields: set[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Pod-template labels, annotations and spec that undo what the capture evidence names (§2)."""
    labels: dict[str, Any] = {}
    annotations: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    if "spec.hostNetwork" in fields:
        spec["hostNetwork"] = False
    if "spec.containers[].name" in fields:
        spec["containers"] = [{"name": "istio-proxy", "$patch": "delete"}]
    if fields & {"annotations.sidecar.istio.io/status", f"labels.{INJECT}", "labels.istio-injection"}:
        labels[INJECT] = "false"
    if f"annotations.{BYPASS_INBOUND}" in fields:
        annotations[BYPASS_INBOUND] = None
    if f"pod labels.{DATAPLANE_MODE}" in fields:
        labels[DATAPLANE_MODE] = "ambient"
    return labels, annotations, spec


def _enrolled(workload: Workload, ctx: AuditContext) -> bool:
    if workload.pod_labels.get(DATAPLANE_MODE) == "ambient":
        return True
    return ctx.index.namespace_labels(workload.meta.namespace).get(DATAPLANE_MODE) == "ambient"


def controller_of(workload: Workload, ctx: AuditContext) -> Workload:
    """A Pod's controller when the snapshot holds exactly one whose template the Pod was made from
    (same namespace and account, template labels a subset of the Pod's); else the Pod itself."""
    if not workload.is_pod:
        return workload
    found = [
        w
        for w in ctx.index.snapshot.workloads
        if not w.is_pod
        and w.meta.kind != "ReplicaSet"
        and w.meta.namespace == workload.meta.namespace
        and w.service_account == workload.service_account
        and w.pod_labels
        and all(workload.pod_labels.get(k) == v for k, v in w.pod_labels.items())
    ]
    return found[0] if len(found) == 1 else workload


def pod_template_patch(
    workload: Workload,
    *,
    labels: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A strategic merge patch of the workload's pod template (a Pod's own metadata and spec)."""
    kind = workload.meta.kind
    template: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    if metadata:
        template["metadata"] = metadata
    if spec:
        template["spec"] = dict(spec)
    body: dict[str, Any] = {"apiVersion": _API_VERSIONS.get(kind, "apps/v1"), "kind": kind}
    path = _TEMPLATE_PATH.get(kind, ("spec", "template"))
    nested: dict[str, Any] = template
    for key in reversed(path):
        nested = {key: nested}
    body["metadata"] = {"name": workload.meta.name, "namespace": workload.meta.namespace}
    if kind == "Pod":
        body["metadata"] = {**body["metadata"], **template.get("metadata", {})}
        if "spec" in template:
            body["spec"] = template["spec"]
    else:
        body.update(nested)
    return body


# --- strict-mtls.peer-authentication -------------------------------------------------------------


def mtls_fix(ctx: AuditContext, failing: Sequence[tuple[Workload, int, MtlsDecision]]) -> Fix:
    """The PeerAuthentication that decided each plaintext-accepting port, set to STRICT (§3).

    The deciding policy is the most specific one that set the mode (a port-level entry of the
    workload policy beats its mode); with none, the mesh-wide policy of the root namespace.
    """
    changed: dict[str, PeerAuthentication] = {}
    modes: dict[str, tuple[str | None, dict[int, str | None]]] = {}
    created = False
    for _workload, port, decision in failing:
        found = _decider(ctx, decision)
        if found is None:
            root = _root_policy(ctx)
            if root is None:
                created = True
                continue
            decider, field = root, "spec.mtls.mode"
        else:
            decider, field = found
        key = decider.meta.ref
        changed[key] = decider
        mode, ports = modes.get(key, (decider.mode, dict(decider.port_level)))
        if field.startswith("spec.portLevelMtls."):
            ports[port] = "STRICT"
        else:
            mode = "STRICT"
        modes[key] = (mode, ports)
    documents = [FixDocument(_peer_authentication(p, *modes[key])) for key, p in changed.items()]
    parts = []
    if changed:
        names = ", ".join(f"{p.meta.namespace}/{p.meta.name}" for p in changed.values())
        parts.append(f"{names} with mode STRICT where it accepted plaintext")
    if created:
        name = _free_name(ctx, "PeerAuthentication", ctx.root_namespace, "default")
        meta = ObjectMeta("PeerAuthentication", name, ctx.root_namespace)
        documents.append(FixDocument(_peer_authentication(PeerAuthentication(meta, None, None), "STRICT", {})))
        parts.append(
            f"the mesh-wide STRICT PeerAuthentication {ctx.root_namespace}/{name}, which the input lacks (no policy "
            "decided these ports, and the default is PERMISSIVE)"
        )
    note = "Apply (kubectl apply -f): " + "; and ".join(parts)
    return Fix(tuple(documents), note + ".")


def _decider(ctx: AuditContext, decision: MtlsDecision) -> tuple[PeerAuthentication, str] | None:
    for evidence in reversed(decision.evidence):
        if evidence.field == "spec.mtls.mode" or evidence.field.startswith("spec.portLevelMtls."):
            policy = _peer_auth(ctx, evidence.object)
            if policy is not None:
                return policy, evidence.field
    return None


def _peer_auth(ctx: AuditContext, ref: str) -> PeerAuthentication | None:
    """The policy an evidence ref (``PeerAuthentication <namespace>/<name>``) names."""
    namespace = ref.partition(" ")[2].partition("/")[0]
    return next((p for p in ctx.index.peer_auth_by_ns.get(namespace, []) if p.meta.ref == ref), None)


def _root_policy(ctx: AuditContext) -> PeerAuthentication | None:
    policies = sorted(
        ctx.index.peer_auth_wide.get(ctx.root_namespace, []),
        key=lambda p: (p.meta.creation_timestamp or "", p.meta.name),
    )
    return policies[0] if policies else None


def _peer_authentication(
    policy: PeerAuthentication, mode: str | None, ports: Mapping[int, str | None]
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if policy.selector:
        spec["selector"] = {"matchLabels": dict(policy.selector)}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if ports:
        spec["portLevelMtls"] = {port: {"mode": value or "UNSET"} for port, value in sorted(ports.items())}
    return {"apiVersion": SECURITY, "kind": "PeerAuthentication", "metadata": _metadata(policy.meta), "spec": spec}


# --- waypoint-enrollment -------------------------------------------------------------------------


def bound_fix(ctx: AuditContext, protected: ProtectedService, service: Service) -> Fix:
    """The Service labelled for the rules' waypoint (the object label beats the namespace's, §2)."""
    waypoint = protected.waypoint
    if waypoint is None:
        return none("the rules name no waypoint for this Service")
    wanted_ns = protected.waypoint_namespace or service.meta.namespace
    own = service.meta.labels
    labels: dict[str, Any] = {}
    if own.get(USE_WAYPOINT) != waypoint.name:
        labels[USE_WAYPOINT] = waypoint.name
    if wanted_ns != service.meta.namespace:
        if own.get(USE_WAYPOINT_NAMESPACE) != wanted_ns:
            labels[USE_WAYPOINT_NAMESPACE] = wanted_ns
    elif own.get(USE_WAYPOINT_NAMESPACE, wanted_ns) != wanted_ns:
        labels[USE_WAYPOINT_NAMESPACE] = None
    if not labels:
        return none(
            f"the labels already name {wanted_ns}/{waypoint.name}; Istio's status says why it is not bound "
            "(see the evidence, and waypoint-enrollment.gateway)"
        )
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.meta.name, "namespace": service.meta.namespace, "labels": labels},
    }
    note = (
        f"Patch (kubectl patch service {service.meta.name} -n {service.meta.namespace} --type strategic "
        f"--patch-file FILE): label the Service for waypoint {wanted_ns}/{waypoint.name}."
    )
    return Fix((FixDocument(body, patch=True),), note)


def gateway_fix(ctx: AuditContext, protected: ProtectedService, service: Service) -> Fix:
    """The waypoint Gateway the rules name: created when missing, else patched into a valid one."""
    waypoint = protected.waypoint
    if waypoint is None:
        return none("the rules name no waypoint for this Service")
    namespace = protected.waypoint_namespace or service.meta.namespace
    gateway = ctx.index.gateways.get(f"{namespace}/{waypoint.name}")
    cross = namespace != service.meta.namespace
    if gateway is None:
        body = _gateway(ObjectMeta("Gateway", waypoint.name, namespace), "mesh", cross_namespace=cross)
        note = f"Apply (kubectl apply -f): the waypoint Gateway {namespace}/{waypoint.name}, which the input lacks."
        return Fix((FixDocument(body),), note)
    listener = next((lst.name for lst in gateway.listeners if lst.port == HBONE_PORT), "") or "mesh"
    keep_all = any(lst.allowed_routes_from == "All" for lst in gateway.listeners)
    wanted = _gateway(gateway.meta, listener, cross_namespace=cross or keep_all)
    current = _gateway_as_is(gateway)
    patch = _difference(current, wanted)
    if not patch:
        return none(
            f"Gateway {gateway.meta.key}'s spec is already a valid waypoint; its status (not Programmed, no address) "
            "is the controller's: check istiod and the waypoint's Deployment"
        )
    patch = {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": gateway.meta.name}, **patch}
    patch["metadata"] = {**patch["metadata"], "name": gateway.meta.name, "namespace": gateway.meta.namespace}
    note = (
        f"Patch (kubectl patch gateway {gateway.meta.name} -n {gateway.meta.namespace} --type merge "
        "--patch-file FILE): a merge patch replaces the listeners with the single HBONE listener a waypoint has."
    )
    return Fix((FixDocument(patch, patch=True),), note)


def _gateway(meta: ObjectMeta, listener: str, *, cross_namespace: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": listener, "port": HBONE_PORT, "protocol": "HBONE"}
    if cross_namespace:
        entry["allowedRoutes"] = {"namespaces": {"from": "All"}}
    labels = dict(meta.labels)
    if labels.get(WAYPOINT_FOR) not in {"service", "all"}:
        # A workload waypoint keeps serving the pods that use it (semantics §4.8): all, not service.
        labels[WAYPOINT_FOR] = "all" if labels.get(WAYPOINT_FOR) == "workload" else "service"
    metadata = _metadata(meta)
    metadata["labels"] = labels
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {"gatewayClassName": WAYPOINT_CLASS, "listeners": [entry]},
    }


def _gateway_as_is(gateway: Gateway) -> dict[str, Any]:
    listeners = []
    for lst in gateway.listeners:
        entry: dict[str, Any] = {"name": lst.name, "port": lst.port, "protocol": lst.protocol}
        if lst.allowed_routes_from != "Same":
            entry["allowedRoutes"] = {"namespaces": {"from": lst.allowed_routes_from}}
        listeners.append(entry)
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": _metadata(gateway.meta),
        "spec": {"gatewayClassName": gateway.class_name, "listeners": listeners},
    }


def _difference(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns ``current`` into ``wanted`` for the keys ``wanted`` sets."""
    patch: dict[str, Any] = {}
    for key, value in wanted.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            inner = _difference(old, value)
            if inner:
                patch[key] = inner
        elif value != old:
            patch[key] = value
    return patch


# --- principal-allowlist, required-headers ------------------------------------------------------


def policy_fix(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    *,
    waypoint: bool,
    ztunnel: bool,
    uncaptured: Iterable[tuple[Workload, Capture]] = (),
    denying: Iterable[tuple[str, bool]] = (),
) -> Fix:
    """The AuthorizationPolicies that enforce the rules on this Service's path (§4.1-§4.6).

    At the waypoint (``waypoint``, when the rules name one): every ALLOW policy that applies there
    keeps its operations, and its sources become exactly the rules' allowed principals, its header
    conditions exactly the required values; with none, one is created (targetRefs: the Service).
    At ztunnel (``ztunnel``): ALLOW policies on the pods admit only the waypoint's identity (or,
    with no waypoint in the rules, the allowed principals), L4 attributes only (ztunnel sees no
    HTTP); with none, one is created (selector: the Service's). A waypoint the Service does not
    use yet is fixed first (label, Gateway), and pods ztunnel does not capture are enrolled.
    ``denying`` names DENY policies (``"<ref> rules[i]"``, at the waypoint or not) that refuse an
    allowed caller: each of their rules stops matching the allowed identities (``notPrincipals``).
    """
    documents: list[FixDocument] = []
    notes: list[str] = []
    uses_waypoint = protected.waypoint is not None
    if waypoint and uses_waypoint and route.waypoint.gateway is None:
        for extra in (bound_fix(ctx, protected, service), gateway_fix(ctx, protected, service)):
            documents += extra.documents
            notes += [extra.note] if extra.documents else []
        if not documents:
            problems = "; ".join(p.message for p in route.waypoint.problems) or "its status"
            return none(
                f"the config names the waypoint, but Istio skips it ({problems}): its readiness is the "
                "controller's, not YAML (see waypoint-enrollment.bound and .gateway); until it is ready, only a "
                "ztunnel-bound ALLOW for the waypoint's identity would refuse intruders, and it would refuse "
                "the allowed callers too"
            )
    if waypoint and uses_waypoint:
        documents += _waypoint_policies(ctx, protected, service, route)
    if ztunnel:
        documents += _ztunnel_policies(ctx, protected, service, route)
    for where, at_waypoint_hop in dict.fromkeys(denying):
        documents += _exempted(ctx, protected, where, at_waypoint_hop)
    captures = list(uncaptured)
    if captures:
        extra = capture_fix(ctx, captures)
        documents += extra.documents
        notes += [extra.note] if extra.documents else []
    if not documents:
        if (waypoint or protected.required_headers) and not uses_waypoint:
            return none(
                "the rules name no waypoint for this Service, and only a waypoint enforces L7 conditions "
                "(add protectedServices[].waypoint to the rules)"
            )
        return none(
            "the ALLOW policies on the path already hold the rules' allow-list and header values; a DENY or "
            "CUSTOM policy, or an operation (port, path, method) of the policy, decides it: see the evidence"
        )
    applied = [d for d in documents if not d.patch and d.body["kind"] == "AuthorizationPolicy"]
    if applied:
        names = ", ".join(f"{d.body['metadata']['namespace']}/{d.body['metadata']['name']}" for d in applied)
        at_ztunnel = uses_waypoint and any("selector" in d.body["spec"] for d in applied)
        behind = " (at ztunnel behind the waypoint: the waypoint's identity)" if at_ztunnel else ""
        headers = ", header conditions exactly the rules' required values" if protected.required_headers else ""
        notes.insert(
            0,
            f"Apply (kubectl apply -f) AuthorizationPolicy {names}: sources cut to the rules' allow-list{behind}"
            f"{headers}, operations kept",
        )
    shared = [
        f"{d.body['metadata']['namespace']}/{d.body['metadata']['name']}"
        for d in applied
        if any(ref.get("kind") == "Gateway" for ref in d.body["spec"].get("targetRefs", []))
    ]
    if shared:
        notes.append(
            f"{', '.join(shared)} targets the waypoint Gateway, so it applies to every Service that uses the "
            "waypoint: check the others still get what they need, or target the Service instead"
        )
    notes += _header_notes(protected, documents)
    return Fix(tuple(_unique_documents(documents)), "; ".join(n.rstrip(".") for n in notes) + ".")


def refusal_fix(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    refused: Iterable[tuple[str, Caller, Reach]],
    *,
    waypoint: bool = False,
) -> Fix:
    """The fix for allowed callers refused on their path: a DENY that matched them exempts them;
    an ALLOW path that does not admit them (at the waypoint, or ztunnel behind it, §4.5) is fixed.
    ``waypoint``: the waypoint's policies are part of the fix anyway (the header promise). An
    allowed identity whose pods are outside the mesh sends plaintext: its pods are enrolled (§9).
    A bound waypoint ztunnel cannot reach refuses everyone (``UnknownWaypoint``): its Gateway is the fix."""
    if route.waypoint.fails_closed is not None:
        return gateway_fix(ctx, protected, service)
    denying: list[tuple[str, bool]] = []
    ztunnel = False
    outside: dict[str, tuple[Workload, Capture]] = {}
    ingress = False
    for principal, caller, item in refused:
        if caller.principal is None or (item.skipped_waypoint and caller.kind is ClientKind.SIDECAR):
            # Plaintext from outside the mesh, or a sidecar that skips the waypoint: enrol its pods.
            for workload in _workloads_of(ctx, principal):
                capture = capture_of(workload, ctx.index)
                if capture.state is CaptureState.NOT_CAPTURED:
                    outside[workload.meta.ref] = (workload, capture)
            continue
        if item.skipped_waypoint and caller.kind is ClientKind.GATEWAY:
            ingress = True  # the gateway goes through the waypoint once the Service opts in (§9)
            continue
        hop = next((h for h in item.hops if h.decision.allowed is False), None)
        if hop is None:
            continue
        on_waypoint = hop.where.startswith("waypoint")
        if hop.decision.rule is not None and "DENY" in hop.decision.reason:
            denying.append((hop.decision.policy, on_waypoint))
        else:
            waypoint = waypoint or on_waypoint
            ztunnel = ztunnel or not on_waypoint
    fix = policy_fix(
        ctx,
        protected,
        service,
        route,
        waypoint=waypoint,
        ztunnel=ztunnel,
        denying=denying,
        uncaptured=outside.values(),
    )
    fix = _with_http_port(fix, protected, service) if waypoint else fix
    return _with_ingress(fix, service) if ingress else fix


def admitted_fix(ctx: AuditContext, protected: ProtectedService, service: Service, route: Route) -> Fix:
    """The fix for requests without a required header that got through (§4.3, §4.6, §9), for every
    client of the snapshot, not only the first witness: the waypoint's policies hold the required
    values; destination pods ztunnel does not capture are enrolled; clients that skip the waypoint
    are refused by a ztunnel ALLOW for the waypoint's identity, unless they run as an allowed
    identity: those go through the waypoint (their pods enrolled, or the Service opted in for
    gateways)."""
    allowed = set(protected.allowed_principals)
    uncaptured: dict[str, tuple[Workload, Capture]] = {
        b.workload.meta.ref: (b.workload, b.capture) for b in route.backends if not b.capture.inbound_enforced
    }
    ingress = False
    for principal in protected.allowed_principals:
        for caller in callers_as(ctx, principal):
            if caller.kind is ClientKind.GATEWAY and not uses_service_waypoint(caller.kind, service):
                ingress = True
            elif caller.kind is not ClientKind.AMBIENT:
                for workload in _workloads_of(ctx, principal):
                    capture = capture_of(workload, ctx.index)
                    if capture.state is CaptureState.NOT_CAPTURED:
                        uncaptured[workload.meta.ref] = (workload, capture)
    ztunnel = any(c.principal not in allowed for c in bypass_callers(ctx))
    fix = policy_fix(ctx, protected, service, route, waypoint=True, ztunnel=ztunnel, uncaptured=uncaptured.values())
    fix = _with_http_port(fix, protected, service)
    return _with_ingress(fix, service) if ingress else fix


# Protocols whose bytes a waypoint cannot read as HTTP even when told so: the application speaks TLS.
_TLS_PROTOCOLS = frozenset({"https", "tls"})


def _with_http_port(fix: Fix, protected: ProtectedService, service: Service) -> Fix:
    """``fix`` plus what lets the waypoint see the HTTP request at all: when it serves the protected
    port as TCP (semantics §4.9: ``appProtocol`` or the port name says a TCP protocol), HTTP
    attributes of its policies drop out whatever they say. A port named or declared TCP gets
    ``appProtocol: http`` (a strategic merge patch, merged by ``port``); a port whose application
    speaks TLS (``https``, ``tls``) gets a note only: the waypoint cannot read inside that TLS, so
    the application must serve plain HTTP inside the mesh (ztunnel's HBONE encrypts it). Never raises."""
    if protected.probe is None or waypoint_sees_http(service, protected.probe.port):
        return fix
    port = next(p for p in service.ports if p.port == protected.probe.port)
    protocol = port_protocol(port)
    if protocol in _TLS_PROTOCOLS:
        note = (
            f"port {port.port} of Service {service.meta.key} carries {protocol.upper()}: the waypoint cannot read "
            "its HTTP headers, so serve plain HTTP on it inside the mesh (ztunnel encrypts it) and name it http"
        )
        documents: tuple[FixDocument, ...] = fix.documents
    else:
        body = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service.meta.name, "namespace": service.meta.namespace},
            "spec": {"ports": [{"port": port.port, "appProtocol": "http"}]},
        }
        note = (
            f"declare port {port.port} of Service {service.meta.key} as HTTP (appProtocol: http): the waypoint "
            f"serves it as {protocol.upper() or 'TCP'} and drops every HTTP attribute of its policies"
        )
        documents = (FixDocument(body, patch=True), *fix.documents)
    rest = fix.note if fix.documents else ""
    text = "; ".join(n.rstrip(".") for n in (note, rest) if n)
    return Fix(documents, text[:1].upper() + text[1:] + ".")


def _with_ingress(fix: Fix, service: Service) -> Fix:
    """``fix`` plus the Service label that sends Istio gateways through its waypoint (§9)."""
    if service.meta.labels.get(INGRESS_USE_WAYPOINT) == "true":
        return fix
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service.meta.name,
            "namespace": service.meta.namespace,
            "labels": {INGRESS_USE_WAYPOINT: "true"},
        },
    }
    note = (
        f"label Service {service.meta.key} {INGRESS_USE_WAYPOINT}=true so the allowed gateway goes through the waypoint"
    )
    documents = (FixDocument(body, patch=True), *fix.documents)
    rest = fix.note if fix.documents else ""
    text = "; ".join(n.rstrip(".") for n in (note, rest) if n)
    return Fix(documents, text[:1].upper() + text[1:] + ".")


def _workloads_of(ctx: AuditContext, principal: str) -> list[Workload]:
    caller = Caller(principal)
    account = (caller.namespace or "", caller.service_account or "")
    return [w for w in ctx.index.workloads_by_account.get(account, []) if not is_auditor_probe(w)]


def _exempted(ctx: AuditContext, protected: ProtectedService, where: str, at_waypoint_hop: bool) -> list[FixDocument]:
    """The DENY policy named by a decision (``"<ref> rules[i]"``), its rules no longer matching the
    identities the rules allow (the waypoint's own, where ztunnel decides behind a waypoint)."""
    policy = next(
        (p for ps in ctx.index.authz_by_ns.values() for p in ps if where.startswith(p.meta.ref + " ")),
        None,
    )
    if policy is None or policy.action != "DENY":
        return []
    if at_waypoint_hop or protected.waypoint is None:
        exempt = list(protected.allowed_principals)
    else:
        namespace = protected.waypoint_namespace or protected.namespace
        exempt = [f"{ctx.trust_domain}/ns/{namespace}/sa/{protected.waypoint.name}"]
    rules = []
    for rule in policy.rules:
        out = _rule(rule)
        sources = out.get("from") or [{"source": {}}]
        for source in sources:
            body = source["source"]
            body["notPrincipals"] = list(dict.fromkeys([*body.get("notPrincipals", []), *exempt]))
        out["from"] = sources
        rules.append(out)
    return _if_changed(policy, rules)


def _waypoint_policies(
    ctx: AuditContext, protected: ProtectedService, service: Service, route: Route
) -> list[FixDocument]:
    assert protected.waypoint is not None  # noqa: S101 - callers check it
    namespace = protected.waypoint_namespace or service.meta.namespace
    gateway = route.waypoint.gateway
    if (
        route.at_waypoint is not None
        and gateway is not None
        and gateway.meta.key == f"{namespace}/{protected.waypoint.name}"
    ):
        applicable = route.at_waypoint  # the route already resolved the rules' waypoint
    else:
        applicable = at_waypoint(service, namespace, protected.waypoint.name, ctx.index, ctx.root_namespace)
    allows = [p for p in applicable.policies if p.action == "ALLOW" and p.rules]
    principals = list(protected.allowed_principals)
    when = _header_conditions(protected)
    if not allows:
        name = _free_name(ctx, "AuthorizationPolicy", service.meta.namespace, service.meta.name)
        rule: dict[str, Any] = {"from": [{"source": {"principals": principals}}]}
        if when:
            rule["when"] = when
        body = {
            "apiVersion": SECURITY,
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": service.meta.namespace},
            "spec": {
                "targetRefs": [{"kind": "Service", "group": "", "name": service.meta.name}],
                "action": "ALLOW",
                "rules": [rule],
            },
        }
        return [FixDocument(body)]
    # Compared with the real values (never written): a condition that already requires them is kept.
    real = _header_conditions(protected, ctx.header_values)
    documents = []
    for policy in allows:
        rules = [_tightened(rule, principals, when, l4_only=False) for rule in policy.rules]
        compared = [_tightened(rule, principals, real, l4_only=False) for rule in policy.rules]
        documents += _if_changed(policy, rules, compared)
    return documents


def bypass_fix(ctx: AuditContext, protected: ProtectedService, service: Service) -> Fix:
    """The fix for callers that reach the Service's pods by pod IP, around its waypoint (§4.6):
    ztunnel's ALLOW on the Service's workloads admits the waypoint's identity only, so every
    caller has to go through the waypoint (the waypoint's own policies then judge it)."""
    documents = _ztunnel_policies(ctx, protected, service, route_for(ctx, service))
    if not documents:
        return none(f"{service.meta.ref} selects no pods by label: no ztunnel policy can select its workloads")
    return Fix(
        tuple(_unique_documents(documents)),
        f"Apply: ztunnel then admits only the waypoint's identity at {service.meta.ref}'s pods, "
        "so traffic by pod IP is refused unless it comes through the waypoint.",
    )


def _ztunnel_policies(
    ctx: AuditContext, protected: ProtectedService, service: Service, route: Route
) -> list[FixDocument]:
    if protected.waypoint is not None:
        namespace, name = protected.waypoint_namespace, protected.waypoint.name
        principals = [f"{ctx.trust_domain}/ns/{namespace}/sa/{name}"]
    else:
        principals = list(protected.allowed_principals)
    seen: dict[str, AuthorizationPolicy] = {}
    for backend in route.backends:
        for policy in backend.ztunnel.policies:
            if policy.action == "ALLOW" and policy.rules:
                seen.setdefault(policy.meta.ref, policy)
    if not seen:
        if not service.selector:
            return []
        suffix = "-from-waypoint" if protected.waypoint is not None else ""
        name = _free_name(ctx, "AuthorizationPolicy", service.meta.namespace, service.meta.name + suffix)
        body = {
            "apiVersion": SECURITY,
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": service.meta.namespace},
            "spec": {
                "selector": {"matchLabels": dict(service.selector)},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": principals}}]}],
            },
        }
        return [FixDocument(body)]
    documents = []
    for policy in seen.values():
        rules = [_tightened(rule, principals, [], l4_only=True) for rule in policy.rules]
        documents += _if_changed(policy, rules)
    return documents


def _tightened(rule: AuthzRule, principals: list[str], when: list[dict[str, Any]], *, l4_only: bool) -> dict[str, Any]:
    """The rule with exactly these principals as its source and these header conditions; the
    operations and other conditions kept (HTTP ones dropped where ztunnel enforces it)."""
    out: dict[str, Any] = {"from": [{"source": {"principals": principals}}]}
    operations = [_operation(op, l4_only=l4_only) for op in rule.operations]
    operations = [op for op in operations if op]
    if operations:
        out["to"] = [{"operation": op} for op in operations]
    # Header conditions become exactly the rules' (a condition on another header, a typo of the
    # required one included, would refuse the allowed request); source conditions are the allow-list's.
    kept = [
        _condition(c)
        for c in rule.conditions
        if not c.key.startswith("source.") and not _header(c.key) and not (l4_only and c.key.startswith("request."))
    ]
    if kept + when:
        out["when"] = kept + when
    return out


_L7_OPERATION = frozenset({"hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths"})


def _operation(operation: AuthzOperation, *, l4_only: bool) -> dict[str, Any]:
    return {
        _camel(name): list(getattr(operation, name))
        for name in AuthzOperation.__dataclass_fields__
        if getattr(operation, name) and not (l4_only and name in _L7_OPERATION)
    }


def _condition(condition: AuthzCondition) -> dict[str, Any]:
    out: dict[str, Any] = {"key": condition.key}
    if condition.values:
        out["values"] = list(condition.values)
    if condition.not_values:
        out["notValues"] = list(condition.not_values)
    return out


def _header(key: str) -> str:
    match = re.fullmatch(r"request\.headers\[(.+)\]", key)
    return match.group(1).lower() if match else ""


def _header_conditions(
    protected: ProtectedService, values: Mapping[tuple[str, str], str | None] | None = None
) -> list[dict[str, Any]]:
    """A condition per required header: ``${VARIABLE}`` for the fix, or (``values``) the real value,
    only ever compared with the input, never written."""
    conditions = []
    for header in protected.required_headers:
        value = f"${{{header_variable(protected, header.name)}}}"
        if values is not None:
            value = values.get((protected.target, header.name)) or value
        conditions.append({"key": f"request.headers[{header.name}]", "values": [value]})
    return conditions


def header_variable(protected: ProtectedService, name: str) -> str:
    """The environment variable a fix writes in place of a required header's value."""
    for header in protected.required_headers:
        if header.name == name and header.value.from_env:
            return header.value.from_env
    return _NOT_ALNUM.sub("_", name).strip("_").upper() or "HEADER_VALUE"


def _header_notes(protected: ProtectedService, documents: Sequence[FixDocument]) -> list[str]:
    text = repr([d.body for d in documents])
    notes = []
    for header in protected.required_headers:
        variable = header_variable(protected, header.name)
        if f"${{{variable}}}" not in text:
            continue
        value = header.value
        if value.from_env:
            source = f"the rules read it from ${variable}"
        elif value.secret_ref is not None:
            ref = value.secret_ref
            namespace = ref.namespace or protected.namespace
            source = f"Secret {namespace}/{ref.name} key {ref.key} holds it"
        else:
            source = "the rules give it as a literal"
        notes.append(
            f"header values are never printed: set {variable} to the required value of {header.name} ({source}) "
            "and pipe the YAML through envsubst"
        )
    return notes


def _if_changed(
    policy: AuthorizationPolicy, rules: list[dict[str, Any]], compared: list[dict[str, Any]] | None = None
) -> list[FixDocument]:
    """The policy with ``rules``, unless (with ``compared``, its rules as applied) it is the input's."""
    before = authorization_policy(policy)
    if before == authorization_policy(policy, rules=compared if compared is not None else rules):
        return []
    return [FixDocument(authorization_policy(policy, rules=rules))]


def authorization_policy(policy: AuthorizationPolicy, *, rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The policy as the YAML that would create it (every field the snapshot model holds)."""
    spec: dict[str, Any] = {}
    if policy.selector:
        spec["selector"] = {"matchLabels": dict(policy.selector)}
    if policy.target_refs:
        spec["targetRefs"] = [{"kind": ref.kind, "group": ref.group, "name": ref.name} for ref in policy.target_refs]
    spec["action"] = policy.action
    if policy.provider:
        spec["provider"] = {"name": policy.provider}
    spec["rules"] = rules if rules is not None else [_rule(rule) for rule in policy.rules]
    return {"apiVersion": SECURITY, "kind": "AuthorizationPolicy", "metadata": _metadata(policy.meta), "spec": spec}


def _rule(rule: AuthzRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sources = [_fields(source, AuthzSource) for source in rule.sources]
    if sources:
        out["from"] = [{"source": s} for s in sources]
    operations = [_operation(op, l4_only=False) for op in rule.operations]
    if operations:
        out["to"] = [{"operation": op} for op in operations]
    if rule.conditions:
        out["when"] = [_condition(c) for c in rule.conditions]
    return out


def _fields(value: AuthzSource, cls: type[AuthzSource]) -> dict[str, Any]:
    return {_camel(name): list(getattr(value, name)) for name in cls.__dataclass_fields__ if getattr(value, name)}


# --- shared ----------------------------------------------------------------------------------------


def _metadata(meta: ObjectMeta) -> dict[str, Any]:
    out: dict[str, Any] = {"name": meta.name}
    if meta.namespace:
        out["namespace"] = meta.namespace
    if meta.labels:
        out["labels"] = dict(meta.labels)
    return out


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = _merge(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def _free_name(ctx: AuditContext, kind: str, namespace: str, wanted: str) -> str:
    """``wanted`` unless an object of that kind already has it there (then ``wanted-mesh-auditor``),
    counting the objects istiod ignores (``audit.config-revision``): applying over one would keep
    its ``istio.io/rev`` label, and the fix with it."""
    if kind == "PeerAuthentication":
        taken = {p.meta.name for p in ctx.index.peer_auth_by_ns.get(namespace, [])}
    else:
        taken = {p.meta.name for p in ctx.index.authz_by_ns.get(namespace, [])}
    taken |= {
        i.meta.name for i in ctx.index.snapshot.ignored_config if i.meta.kind == kind and i.meta.namespace == namespace
    }
    return wanted if wanted not in taken else f"{wanted}-mesh-auditor"


def _unique_documents(documents: Sequence[FixDocument]) -> list[FixDocument]:
    found: dict[str, FixDocument] = {}
    for document in documents:
        found.setdefault(repr((document.patch, document.body)), document)
    return list(found.values())


def merge_fixes(fixes: Iterable[Fix], lead: str) -> Fix:
    """The documents of several findings' fixes as one (a probe FAIL confirming static FAILs)."""
    documents: list[FixDocument] = []
    notes: list[str] = []
    for fix in fixes:
        documents += fix.documents
        if fix.note:
            notes.append(fix.note)
    if not documents:
        return Fix(note=" ".join([lead, *notes]).strip())
    return Fix(tuple(_unique_documents(documents)), " ".join([lead, *notes]).strip())


def explained(finding: Finding) -> Finding:
    """The finding with a fix note when it has none: every finding that is not a PASS says what
    to change, or plainly why there is no YAML fix."""
    if finding.fix != NO_FIX or finding.status in {Status.PASS, Status.SKIPPED}:
        return finding
    return dataclasses.replace(finding, fix=none(_why_none(finding)))


def _why_none(finding: Finding) -> str:
    check = finding.check.id
    if finding.status is Status.INCONCLUSIVE:
        return "nothing was proven wrong (inconclusive); a fix would be a guess: resolve what the message names first"
    if finding.message.startswith("not evaluated"):
        return (
            "the check was not evaluated: the auditor could not read a kind it needs; grant the permission the "
            "message names (deploy/rbac.yaml, the Helm chart's ClusterRole) or install the missing CRD"
        )
    if check == "audit.snapshot-read":
        return (
            "this is the auditor's own read permission (or a missing CRD), not mesh config: grant it in the "
            "auditor's ClusterRole (deploy/rbac.yaml, the Helm chart) or install the CRD"
        )
    if check == "audit.target-exists":
        return "the rules name what the input does not hold: correct the rules or add the manifests to the audit"
    if finding.status is Status.ERROR:
        return "the audit could not evaluate the check; nothing in the mesh was proven wrong"
    return f"{check} has no fix builder yet; follow the check's remediation text"
