"""required-headers: the waypoint refuses requests without the required header value.

For every allowed caller: the request with all required values must get through (the control),
and the same request missing one header, or carrying a wrong value, must be refused on every
method, path and port the policies single out. Only a waypoint sees headers (§4.3, §4.6).
"""

from __future__ import annotations

from auditor.core.authz import l7_attributes
from auditor.core.checks.catalog import HEADERS_ENFORCED
from auditor.core.checks.context import AuditContext, finding
from auditor.core.checks.reach import Reach, Route, probe_request, reach
from auditor.core.checks.witnesses import (
    WRONG_VALUE,
    allowed_caller,
    header_conditions,
    request_variants,
    required_headers,
)
from auditor.core.model import Evidence, Finding, Status
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import Service

_MAX_EXAMPLES = 3


def check_headers_enforced(ctx: AuditContext, protected: ProtectedService, service: Service, route: Route) -> Finding:
    if not route.backends:
        return finding(
            HEADERS_ENFORCED,
            service,
            Status.INCONCLUSIVE,
            "no workload matches the Service selector",
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
    control = _control_failures(ctx, protected, service, route, headers)
    if control:
        message = (
            "requests carrying the required headers are refused too, so the header is not what the policy checks: "
            + " | ".join(control[:_MAX_EXAMPLES])
        )
        return finding(HEADERS_ENFORCED, service, Status.FAIL, message, evidence)
    admitted, unclear = _headerless_admitted(ctx, protected, service, route, headers)
    if admitted:
        return finding(HEADERS_ENFORCED, service, Status.FAIL, " | ".join(admitted[:_MAX_EXAMPLES]), evidence)
    if unclear:
        return finding(
            HEADERS_ENFORCED,
            service,
            Status.INCONCLUSIVE,
            " | ".join(unclear[:_MAX_EXAMPLES]),
            evidence,
        )
    names = ", ".join(h.name for h in protected.required_headers)
    gateway = route.waypoint.gateway
    where = gateway.meta.key if gateway else "?"
    return finding(
        HEADERS_ENFORCED,
        service,
        Status.PASS,
        f"waypoint {where} refuses requests without the required value of {names}",
        evidence,
    )


def _control_failures(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    headers: dict[str, str],
) -> list[str]:
    request = probe_request(protected, service, headers)
    failures = []
    for principal in protected.allowed_principals:
        for item in reach(ctx, route, allowed_caller(ctx, principal), request):
            if item.allowed is False:
                failures.append(f"{principal}: {item.explain()}")
    return failures


def _headerless_admitted(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    headers: dict[str, str],
) -> tuple[list[str], list[str]]:
    admitted: list[str] = []
    unclear: list[str] = []
    for principal in protected.allowed_principals:
        for name, label, variant in _degraded(headers):
            for request in request_variants(ctx, protected, service, route, variant):
                for item in reach(ctx, route, allowed_caller(ctx, principal), request):
                    if item.allowed is True:
                        admitted.append(
                            f"{principal} gets through {label} ({request.method} {request.path}): "
                            + _diagnose(item, name)
                        )
                    elif item.allowed is None:
                        unclear.append(f"{principal} {label}: {item.explain()}")
                if admitted:
                    return admitted, unclear
    return admitted, unclear


def _degraded(headers: dict[str, str]) -> list[tuple[str, str, dict[str, str]]]:
    variants = []
    for name in headers:
        missing = {k: v for k, v in headers.items() if k != name}
        variants.append((name, f"without {name}", missing))
        variants.append((name, f"with a wrong {name}", {**missing, name: WRONG_VALUE}))
    return variants


def _diagnose(item: Reach, header: str) -> str:
    first = item.hops[0]
    if not first.where.startswith("waypoint"):
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
    if any(c.not_values and not c.values for c in conditions):
        return f"{first.decision.policy} uses notValues on {header}: any other value passes"
    return f"{first.decision.policy} admits it: {first.decision.reason}"


def _dropped_at_ztunnel(route: Route) -> list[Evidence]:
    evidence = []
    for backend in route.backends:
        for policy in backend.ztunnel.policies:
            for position, rule in enumerate(policy.rules):
                attributes = l7_attributes(rule)
                if attributes:
                    note = (
                        f"bound to ztunnel, which drops rules with L7 attributes ({', '.join(attributes)}); "
                        "status stays ZtunnelAccepted (§4.3)"
                    )
                    evidence.append(Evidence(policy.meta.ref, f"spec.rules[{position}]", "dropped at ztunnel", note))
    return evidence
