"""required-headers: the waypoint refuses requests without the required header value.

For every allowed caller: the request with all required values must get through (the control),
and the same request missing one header, or carrying a wrong value, must be refused on every
method, path and port the policies single out. Only a waypoint sees headers (§4.3, §4.6).
"""

from __future__ import annotations

from auditor.core.authz import Caller
from auditor.core.checks import fixes
from auditor.core.checks.catalog import HEADERS_ENFORCED
from auditor.core.checks.context import AuditContext, finding
from auditor.core.checks.reach import (
    Reach,
    Route,
    no_backends,
    pod_ip_path,
    probe_request,
    reach,
    ztunnel_translation_notes,
)
from auditor.core.checks.witnesses import (
    bypass_callers,
    bypass_fix,
    callers_as,
    header_conditions,
    header_witnesses,
    request_variants,
    required_headers,
)
from auditor.core.model import Evidence, Finding, Status
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import Service

_MAX_EXAMPLES = 3


def check_headers_enforced(ctx: AuditContext, protected: ProtectedService, service: Service, route: Route) -> Finding:
    """``required-headers``: do the waypoint's policies refuse requests without each required header
    (or with a wrong value) on ``route``? One finding; an unresolved header value is INCONCLUSIVE."""
    if not route.backends:
        return finding(
            HEADERS_ENFORCED,
            service,
            Status.INCONCLUSIVE,
            no_backends(route),
        )
    headers, unknown = required_headers(ctx, protected)
    if unknown:
        message = (
            f"the value of {', '.join(unknown)} could not be resolved (see rules: value.fromEnv / value.secretRef)"
        )
        return finding(HEADERS_ENFORCED, service, Status.INCONCLUSIVE, message)
    evidence = [*route.ignored(), *_dropped_at_ztunnel(route)]
    if route.waypoint.gateway is None:
        evidence += [p.evidence for p in route.waypoint.problems] or list(route.waypoint.binding.evidence)
    control, refusals, undecided = _control_failures(ctx, protected, service, route, headers)
    if control:
        message = (
            "requests carrying the required headers are refused too, so the header is not what the policy checks: "
            + " | ".join(control[:_MAX_EXAMPLES])
        )
        fix = fixes.refusal_fix(ctx, protected, service, route, refusals, waypoint=True)
        return finding(HEADERS_ENFORCED, service, Status.FAIL, message, evidence, fix=fix)
    admitted, unclear = _headerless_admitted(ctx, protected, service, route, headers)
    if admitted:
        fix = fixes.admitted_fix(ctx, protected, service, route)
        message = " | ".join(admitted[:_MAX_EXAMPLES])
        return finding(HEADERS_ENFORCED, service, Status.FAIL, message, evidence, fix=fix)
    if unclear:
        return finding(
            HEADERS_ENFORCED,
            service,
            Status.INCONCLUSIVE,
            " | ".join(unclear[:_MAX_EXAMPLES]),
            evidence,
        )
    if undecided:
        # A refusal proves the header only next to an admitted control (the rule the probes follow):
        # when the request carrying the value cannot be decided, neither can the header's part.
        message = (
            "requests without the required value are refused, but whether requests carrying it are admitted "
            "cannot be told, so the refusal may not be the header's doing: " + " | ".join(undecided[:_MAX_EXAMPLES])
        )
        return finding(HEADERS_ENFORCED, service, Status.INCONCLUSIVE, message, evidence)
    names = ", ".join(h.name for h in protected.required_headers)
    gateway = route.waypoint.gateway
    where = gateway.meta.key if gateway else "?"
    message = (
        f"config: waypoint {where} admits the allowed identities with the required value of {names} and refuses "
        "them without it or with a wrong one (near misses and every value a condition names), on the probe "
        "request and the methods, paths and ports the policies name"
    )
    skipping = bypass_callers(ctx)
    if skipping:
        message += f"; such requests from the snapshot's {len(skipping)} sidecar and gateway client(s) are refused too"
    message += _pod_ip_note(ctx, protected, service, route, headers)
    return finding(HEADERS_ENFORCED, service, Status.PASS, message, evidence)


def _pod_ip_note(
    ctx: AuditContext, protected: ProtectedService, service: Service, route: Route, headers: dict[str, str]
) -> str:
    """Requests without a required value addressed to a pod IP: they skip the Service's waypoint (§4.6) or meet the
    pods' own waypoint, where only policies targeting that Gateway apply (§4.8)."""
    allowed = [c for p in protected.allowed_principals for c in callers_as(ctx, p)]
    requests = [probe_request(protected, service, variant) for _, _, variant in _degraded(route, headers)]
    path = pod_ip_path(ctx, route, allowed, requests)
    own = ", ".join(path.own_waypoints)
    if path.admitted and path.through_own():
        return (
            f"; a request to a pod IP goes through the pod's own waypoint {own}, where only policies targeting that "
            "Gateway apply, and is admitted without the required value (§4.8)"
        )
    if path.admitted or (not own and not any(b.ztunnel.policies for b in route.backends)):
        return "; a request to a pod IP skips the waypoint, so no header is checked on it (§4.6)"
    if own:
        return f"; a request to a pod IP goes through the pods' own waypoint {own}, which checks the header too (§4.8)"
    return ""


def _control_failures(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    headers: dict[str, str],
) -> tuple[list[str], list[tuple[str, Caller, Reach]], list[str]]:
    """The allowed identities' requests with the required values: (refused, as text; refused, as
    (principal, caller, reach); undecided, as text)."""
    request = probe_request(protected, service, headers)
    failures: list[str] = []
    refusals: list[tuple[str, Caller, Reach]] = []
    undecided: list[str] = []
    for principal in protected.allowed_principals:
        for caller in callers_as(ctx, principal):
            for item in reach(ctx, route, caller, request):
                if item.allowed is False:
                    failures.append(f"{caller.describe()}: {item.explain()}")
                    refusals.append((principal, caller, item))
                elif item.allowed is None:
                    undecided.append(f"{caller.describe()}: {item.explain()}")
    return failures, refusals, undecided


def _headerless_admitted(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    headers: dict[str, str],
) -> tuple[list[str], list[str]]:
    """Requests without a required value that get through: from every kind of client an allowed
    identity runs as, and from every client in the snapshot that skips the waypoint (§9)."""
    admitted: list[str] = []
    unclear: list[str] = []
    allowed = [c for p in protected.allowed_principals for c in callers_as(ctx, p)]
    callers = list(dict.fromkeys([*allowed, *bypass_callers(ctx)]))
    for caller in callers:
        for name, label, variant in _degraded(route, headers):
            for request in request_variants(ctx, protected, service, route, variant):
                for item in reach(ctx, route, caller, request):
                    if item.allowed is True:
                        admitted.append(
                            f"{caller.describe()} gets through {label} ({request.method} {request.path}): "
                            + _diagnose(item, name, caller)
                        )
                    elif item.allowed is None:
                        unclear.append(f"{caller.describe()} {label}: {item.explain()}")
                if admitted:
                    return admitted, unclear
    return admitted, unclear


def _degraded(route: Route, headers: dict[str, str]) -> list[tuple[str, str, dict[str, str]]]:
    variants = []
    for name, value in headers.items():
        missing = {k: v for k, v in headers.items() if k != name}
        variants.append((name, f"without {name}", missing))
        for wrong, label in header_witnesses(route, name, value):
            variants.append((name, f"with {label} in {name}", {**missing, name: wrong}))
    return variants


def _diagnose(item: Reach, header: str, caller: Caller) -> str:
    first = item.hops[0]
    if not first.where.startswith("waypoint"):
        if item.skipped_waypoint:
            return f"{item.explain()}; ztunnel cannot see headers (§4.3). {bypass_fix(caller)}"
        return f"no waypoint on the path, and ztunnel cannot see headers (§4.3): {item.explain()}"
    rule = first.decision.rule
    if rule is None:
        return f"{first.decision.reason} ({first.where})"
    conditions = [c for c in rule.conditions if c.key in header_conditions(rule, header)]
    if not conditions:
        return (
            f"{first.decision.policy} admits it with no condition on {header} "
            "(another ALLOW path, or the condition is on another header)"
        )
    if any("*" in c.values for c in conditions):
        return f'{first.decision.policy} only checks that {header} is present (values: ["*"])'
    if any(v != "*" and "*" in (v[0], v[-1]) for c in conditions for v in c.values):
        return f"{first.decision.policy} matches {header} by prefix or suffix: other values pass (§8.2)"
    if any(c.not_values and not c.values for c in conditions):
        return f"{first.decision.policy} uses notValues on {header}: any other value passes"
    return f"{first.decision.policy} admits it: {first.decision.reason}"


def _dropped_at_ztunnel(route: Route) -> list[Evidence]:
    return ztunnel_translation_notes(route)
