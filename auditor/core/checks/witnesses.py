"""Concrete callers and requests that exercise every matcher the policies use.

The allow-list promise is about *all* identities; we test it on a finite set of witnesses built
from the policies' own patterns (each prefix, suffix, namespace and service account gets a
caller that matches it but is not allowed), the Service accounts of the namespace, outsiders,
and a plaintext client. For the patterns Istio supports (exact, ``*``, prefix, suffix) this set
contains a matching non-allowed caller whenever one exists.
"""

from __future__ import annotations

from collections.abc import Iterable

from auditor.core.authz import Caller, Request, header_name
from auditor.core.checks.context import AuditContext
from auditor.core.checks.reach import Route, probe_request
from auditor.core.mesh import capture_of
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import AuthorizationPolicy, AuthzRule, Service

INTRUDER_SA = "mesh-auditor-intruder"
OUTSIDE_NS = "mesh-auditor-outside"
WRONG_VALUE = "mesh-auditor-wrong-value"


def route_policies(route: Route) -> list[AuthorizationPolicy]:
    policies = list(route.at_waypoint.policies) if route.at_waypoint else []
    return policies + [p for b in route.backends for p in b.ztunnel.policies]


def _rules(route: Route) -> Iterable[AuthzRule]:
    for policy in route_policies(route):
        yield from policy.rules


def intruders(ctx: AuditContext, protected: ProtectedService, route: Route) -> list[Caller]:
    td = ctx.trust_domain
    candidates = [
        f"{td}/ns/{OUTSIDE_NS}/sa/{INTRUDER_SA}",
        f"{td}/ns/{protected.namespace}/sa/{INTRUDER_SA}",
    ]
    namespaces = {protected.namespace}
    for rule in _rules(route):
        for source in rule.sources:
            candidates += [_from_principal(td, p) for p in source.principals + source.not_principals]
            candidates += [
                f"{td}/ns/{_instance(n)}/sa/{INTRUDER_SA}" for n in source.namespaces + source.not_namespaces
            ]
            candidates += [_from_account(td, a) for a in source.service_accounts + source.not_service_accounts]
            namespaces.update(_instance(n) for n in source.namespaces)
        for condition in rule.conditions:
            if condition.key == "source.principal":
                candidates += [_from_principal(td, p) for p in condition.values + condition.not_values]
            if condition.key == "source.namespace":
                candidates += [
                    f"{td}/ns/{_instance(n)}/sa/{INTRUDER_SA}" for n in condition.values + condition.not_values
                ]
    candidates += _accounts_in(ctx, namespaces)
    excluded = set(protected.allowed_principals)
    if route.waypoint_identity is not None and route.waypoint_identity.principal:
        excluded.add(route.waypoint_identity.principal)
    unique = dict.fromkeys(c for c in candidates if c and c not in excluded)
    return [Caller(principal) for principal in unique] + [Caller(None)]


def _instance(pattern: str) -> str:
    """A concrete value matching an Istio string pattern."""
    if pattern == "*":
        return INTRUDER_SA
    if pattern.endswith("*"):
        return pattern[:-1] + INTRUDER_SA
    if pattern.startswith("*"):
        return INTRUDER_SA + pattern[1:]
    return pattern


def _from_principal(td: str, pattern: str) -> str:
    pattern = pattern.removeprefix("spiffe://")
    if pattern.startswith("*") and pattern != "*":
        suffix = pattern[1:]
        if suffix.startswith("/sa/"):
            return f"{td}/ns/{OUTSIDE_NS}{suffix}"
        if suffix.startswith("/"):
            return f"{td}/ns/{OUTSIDE_NS}/sa/{INTRUDER_SA}{suffix}"
    return _instance(pattern) if pattern != "*" else f"{td}/ns/{OUTSIDE_NS}/sa/{INTRUDER_SA}"


def _from_account(td: str, pattern: str) -> str:
    namespace, _, account = _instance(pattern).partition("/")
    return f"{td}/ns/{namespace}/sa/{account or INTRUDER_SA}"


def _accounts_in(ctx: AuditContext, namespaces: set[str]) -> list[str]:
    """Every ServiceAccount (declared, or named by a pod) in the given namespaces, as principals."""
    return [
        f"{ctx.trust_domain}/ns/{ns}/sa/{sa}"
        for ns in sorted(namespaces)
        for sa in sorted(ctx.index.accounts_by_ns.get(ns, ()))
    ]


def allowed_caller(ctx: AuditContext, principal: str) -> Caller:
    """The allowed identity as the mesh sees it: plaintext if every pod running as it is outside.

    An allowed caller whose own pods are not captured sends plaintext: it never reaches a
    waypoint (§4.6) and meets STRICT at the destination. Without any such pod in the snapshot,
    the identity is taken as in-mesh (the promise is about the identity).
    """
    caller = Caller(principal)
    workloads = ctx.index.workloads_by_account.get((caller.namespace or "", caller.service_account or ""), [])
    if workloads and not any(capture_of(w, ctx.index).inbound_enforced for w in workloads):
        return Caller(None, label=f"{principal}, whose pods are outside the mesh (plaintext)")
    return caller


def request_variants(
    ctx: AuditContext,
    protected: ProtectedService,
    service: Service,
    route: Route,
    headers: dict[str, str],
) -> list[Request]:
    """The probe request, and the same on every method, path and port the policies single out."""
    base = probe_request(protected, service, headers)
    methods, paths = [base.method], [base.path]
    for rule in _rules(route):
        for operation in rule.operations:
            methods += list(operation.methods + operation.not_methods)
            paths += [_path_instance(p) for p in operation.paths + operation.not_paths]
    ports = [p.port for p in service.ports] or [base.port]
    return [
        Request(method=m, path=p, host=base.host, port=port, headers=headers)
        for m in dict.fromkeys(methods)
        for p in dict.fromkeys(paths)
        for port in dict.fromkeys([base.port, *ports])
    ]


def _path_instance(pattern: str) -> str:
    if pattern == "*":
        return "/mesh-auditor"
    if pattern.endswith("*"):
        return pattern[:-1] + "mesh-auditor"
    if pattern.startswith("*"):
        return "/mesh-auditor" + pattern[1:]
    return pattern


def required_headers(ctx: AuditContext, protected: ProtectedService) -> tuple[dict[str, str], list[str]]:
    """Header values the allowed caller sends, and the names whose value is unknown."""
    values, unknown = {}, []
    for header in protected.required_headers:
        value = ctx.header_values.get((protected.target, header.name))
        if value is None:
            unknown.append(header.name)
        else:
            values[header.name] = value
    return values, unknown


def header_conditions(rule: AuthzRule, header: str) -> list[str]:
    return [c.key for c in rule.conditions if header_name(c.key) == header]
