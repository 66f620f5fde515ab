"""principal-allowlist: only the listed identities reach a protected Service.

Two checks: no identity outside the allow-list gets through the real enforcement path
(§4.1-§4.4, §4.6), and every allowed identity does (the waypoint-identity pitfall, §4.5).
"""

from __future__ import annotations

from auditor.core.authz import Caller
from auditor.core.checks import fixes as fix_of
from auditor.core.checks.catalog import ALLOWED_ADMITTED, INTRUDERS_REFUSED
from auditor.core.checks.context import AuditContext, finding
from auditor.core.checks.reach import (
    PodIpPath,
    Reach,
    Route,
    no_backends,
    pod_ip_path,
    probe_request,
    reach,
    ztunnel_translation_notes,
)
from auditor.core.checks.witnesses import bypass_fix, callers_as, intruders, request_variants, required_headers
from auditor.core.mesh import ClientKind
from auditor.core.model import Evidence, Finding, Status
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import Service

_MAX_EXAMPLES = 4


def check_intruders_refused(ctx: AuditContext, protected: ProtectedService, service: Service, route: Route) -> Finding:
    """``principal-allowlist`` for identities outside the allow-list: would ztunnel and the waypoint,
    as ``route`` reaches ``service``'s backends, refuse every caller the snapshot holds that is
    not allowed? One finding; a route without backends is INCONCLUSIVE."""
    if not route.backends:
        return finding(
            INTRUDERS_REFUSED,
            service,
            Status.INCONCLUSIVE,
            no_backends(route),
        )
    headers, _ = required_headers(ctx, protected)
    admitted: list[str] = []
    fixes: dict[str, None] = {}
    unclear: list[str] = []
    refused_at: dict[str, None] = {}
    at_ztunnel = protected.waypoint is None
    uncaptured: dict[str, Reach] = {}
    callers = intruders(ctx, protected, route)
    variants = request_variants(ctx, protected, service, route, headers)
    for caller in callers:
        for request in variants:
            outcome = _any_backend(reach(ctx, route, caller, request))
            if outcome[0] is True:
                admitted.append(f"{caller.describe()} ({request.describe()}): {outcome[1].explain()}")
                if outcome[1].skipped_waypoint:
                    fixes[bypass_fix(caller)] = None
                # Skipping the waypoint (a sidecar, a gateway, plaintext) meets ztunnel only.
                at_ztunnel = at_ztunnel or outcome[1].skipped_waypoint or caller.principal is None
                if not outcome[1].backend.capture.inbound_enforced:
                    uncaptured[outcome[1].backend.workload.meta.ref] = outcome[1]
                break
            if outcome[0] is None:
                unclear.append(f"{caller.describe()}: {outcome[1].explain()}")
            else:
                refused_at[_refusing_hop(outcome[1])] = None
    path = pod_ip_path(ctx, route, callers, variants[:1]) if route.waypoint.gateway is not None else None
    evidence = [*route.ignored(), *_enforcement_evidence(route, path), *ztunnel_translation_notes(route)]
    if admitted:
        message = f"{len(admitted)} caller(s) outside the allow-list get through, e.g. " + " | ".join(
            admitted[:_MAX_EXAMPLES]
        )
        message += "".join(f". {fix}" for fix in fixes)
        fix = fix_of.policy_fix(
            ctx,
            protected,
            service,
            route,
            waypoint=True,
            ztunnel=at_ztunnel,
            uncaptured=[(r.backend.workload, r.backend.capture) for r in uncaptured.values()],
        )
        return finding(INTRUDERS_REFUSED, service, Status.FAIL, message, evidence, fix=fix)
    if unclear:
        return finding(
            INTRUDERS_REFUSED,
            service,
            Status.INCONCLUSIVE,
            "cannot tell for: " + " | ".join(unclear[:_MAX_EXAMPLES]),
            evidence,
        )
    where = "; ".join(refused_at)
    message = (
        f"config: the {len(callers)} callers outside the allow-list the auditor builds (identities from the "
        "policies' own patterns, the accounts of the namespaces they name, the snapshot's sidecar and gateway "
        f"clients, a plaintext client) are refused on Service-addressed requests (at {where})"
    )
    message += _pod_ip_note(path)
    return finding(INTRUDERS_REFUSED, service, Status.PASS, message, evidence)


def _pod_ip_note(path: PodIpPath | None) -> str:
    """The pod-IP path for a PASS message: skipping the Service's waypoint (§4.6), or through the pods' own
    waypoint, where only policies targeting that Gateway apply (§4.8)."""
    if path is None:
        return ""
    own = ", ".join(path.own_waypoints)
    if path.admitted and path.through_own():
        return (
            f"; an in-mesh request to a pod IP goes through the pod's own waypoint {own}, where only policies "
            "targeting that Gateway apply, and is not refused (§4.8)"
        )
    if path.admitted:
        return "; an in-mesh request to a pod IP skips the waypoint and no policy refuses it (§4.6)"
    if own:
        return f"; in-mesh requests to a pod IP go through the pods' own waypoint {own}, which refuses them too (§4.8)"
    return ""


def _waypoint_only(route: Route, path: PodIpPath | None) -> bool:
    """The allow-list lives only at the Service's waypoint: pod-IP traffic skips it (§4.6) or meets a pod's own
    waypoint that does not refuse it (§4.8)."""
    if route.waypoint.gateway is None or any(b.ztunnel.policies for b in route.backends):
        return False
    return path is None or bool(path.admitted)


def _any_backend(reaches: tuple[Reach, ...]) -> tuple[bool | None, Reach]:
    for item in reaches:
        if item.allowed is True:
            return True, item
    for item in reaches:
        if item.allowed is None:
            return None, item
    return False, reaches[0]


def _refusing_hop(item: Reach) -> str:
    return next((hop.where.split(" (sees")[0] for hop in item.hops if hop.decision.allowed is False), "?")


def _path(route: Route) -> str:
    if route.waypoint.gateway is not None:
        return f"via waypoint {route.waypoint.gateway.meta.key}"
    return "straight to the pods through ztunnel"


def _enforcement_evidence(route: Route, path: PodIpPath | None) -> list[Evidence]:
    evidence = []
    if route.at_waypoint is not None:
        evidence += [
            Evidence(p.meta.ref, "spec.action", p.action, "enforced at the waypoint (targetRefs)")
            for p in route.at_waypoint.policies
        ]
    for backend in route.backends:
        evidence += [
            Evidence(
                p.meta.ref,
                "spec.action",
                p.action,
                f"enforced by ztunnel for {backend.workload.meta.ref}",
            )
            for p in backend.ztunnel.policies
        ]
    if _waypoint_only(route, path):
        # §4.6: the allow-list lives only at the waypoint; pod-IP traffic would skip it.
        evidence.append(
            Evidence(
                route.service.meta.ref,
                "",
                "waypoint only",
                "in-mesh traffic addressed to a pod IP bypasses a service waypoint (§4.6); "
                "a ztunnel ALLOW for the waypoint identity closes that path",
            )
        )
    return evidence


def check_allowed_admitted(ctx: AuditContext, protected: ProtectedService, service: Service, route: Route) -> Finding:
    """``principal-allowlist`` for the allowed identities: is each one admitted on ``route`` (so a
    denial proves the policy, not a broken path)? One finding."""
    if not route.backends:
        return finding(
            ALLOWED_ADMITTED,
            service,
            Status.INCONCLUSIVE,
            no_backends(route),
        )
    headers, unknown = required_headers(ctx, protected)
    if unknown:
        message = f"the value of {', '.join(unknown)} could not be resolved, so the allowed request cannot be built"
        return finding(ALLOWED_ADMITTED, service, Status.INCONCLUSIVE, message)
    request = probe_request(protected, service, headers)
    refused, unclear = [], []
    refusals: list[tuple[str, Caller, Reach]] = []
    evidence: list[Evidence] = [*route.ignored(), *ztunnel_translation_notes(route)]
    tried = 0
    for principal in protected.allowed_principals:
        for caller in callers_as(ctx, principal):
            tried += 1
            label = principal if caller.kind is ClientKind.AMBIENT else f"{principal} ({caller.kind.value})"
            for item in reach(ctx, route, caller, request):
                if item.allowed is False:
                    refused.append(f"{label} is refused: {item.explain()}")
                    evidence += _pitfall(route, item)
                    refusals.append((principal, caller, item))
                elif item.allowed is None:
                    unclear.append(f"{label}: {item.explain()}")
    if refused:
        fix = fix_of.refusal_fix(ctx, protected, service, route, refusals)
        return finding(ALLOWED_ADMITTED, service, Status.FAIL, " | ".join(refused), evidence, fix=fix)
    if unclear:
        return finding(ALLOWED_ADMITTED, service, Status.INCONCLUSIVE, " | ".join(unclear), evidence)
    message = (
        f"config: each allowed identity ({tried} caller(s): every kind of client its workloads are) is admitted "
        f"on the probe request {request.describe()} ({_path(route)}); other paths and methods are not tried"
    )
    return finding(ALLOWED_ADMITTED, service, Status.PASS, message, evidence)


def _pitfall(route: Route, item: Reach) -> list[Evidence]:
    identity = route.waypoint_identity
    if identity is None or len(item.hops) < 2 or item.last.decision.allowed is not False:
        return []
    note = (
        "§4.5: behind a waypoint the destination ztunnel sees the waypoint's identity, not the caller's; "
        f"the ztunnel-bound ALLOW must admit {identity.principal} (or move the allow-list to targetRefs)"
    )
    return [
        Evidence(
            item.last.decision.policy or item.backend.workload.meta.ref,
            "rules[].from.source.principals",
            "",
            note,
        )
    ]
