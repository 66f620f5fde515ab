"""Concrete callers and requests that exercise every matcher the policies use.

The allow-list promise is about *all* identities; we test it on a finite set of witnesses built
from the policies' own patterns, taken literally as Istio does (each prefix, suffix, namespace and
service account gets a caller that matches it but is not allowed, plus near misses sharing a
prefix or a suffix), the Service accounts of the namespaces they name, outsiders, a plaintext
client, and every sidecar pod and Istio gateway of the snapshot. Each witness is a kind of client
from the caller model (``mesh.CLIENTS``, semantics §9), which decides its hops. Header witnesses
are near misses of the required value and every value a condition on that header admits (§8.2).
For the patterns Istio supports (exact, ``*``, prefix, suffix) these sets contain a matching
non-allowed value whenever one exists (tests/unit/test_fidelity_properties.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from auditor.core.authz import Caller, Request, header_name
from auditor.core.checks.context import AuditContext
from auditor.core.checks.reach import Route, probe_request
from auditor.core.mesh import CLIENTS, ClientKind, client_of, is_auditor_probe
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import AuthorizationPolicy, AuthzRule, Service, SnapshotIndex, Workload

INTRUDER_SA = "mesh-auditor-intruder"
OUTSIDE_NS = "mesh-auditor-outside"
WRONG_VALUE = "mesh-auditor-wrong-value"
NEAR_MISS = "mesh-auditor-near-miss"
_IDENTITY = re.compile(r"^[A-Za-z0-9._-]+/ns/[^/]+/sa/[^/]+$")


def route_policies(route: Route) -> list[AuthorizationPolicy]:
    """Every policy enforced along ``route``: the waypoint's, then each backend ztunnel's (duplicates kept). Never
    raises.
    """
    policies = list(route.at_waypoint.policies) if route.at_waypoint else []
    return policies + [p for b in route.backends for p in b.ztunnel.policies]


def _rules(route: Route) -> Iterable[AuthzRule]:
    for policy in route_policies(route):
        yield from policy.rules


def intruders(ctx: AuditContext, protected: ProtectedService, route: Route) -> list[Caller]:
    """Callers outside the allow-list: identities built from the policies' patterns, the accounts of
    the namespaces they name, every client in the snapshot that skips the waypoint, and plaintext.

    Each identity is tried as every kind of client its workloads in the snapshot are (§9); an
    identity without workloads is an ambient pod, the kind whose path the promise is about.
    """
    td = ctx.trust_domain
    candidates = [
        f"{td}/ns/{OUTSIDE_NS}/sa/{INTRUDER_SA}",
        f"{td}/ns/{protected.namespace}/sa/{INTRUDER_SA}",
    ]
    namespaces = {protected.namespace}
    for policy in route_policies(route):
        for rule in policy.rules:
            for source in rule.sources:
                candidates += _principal_witnesses(td, source.principals + source.not_principals)
                candidates += [
                    f"{td}/ns/{n}/sa/{INTRUDER_SA}" for n in _instances(source.namespaces + source.not_namespaces)
                ]
                candidates += [
                    _from_account(td, a, policy.meta.namespace)
                    for a in source.service_accounts + source.not_service_accounts
                ]
                namespaces.update(_instances(source.namespaces))
                # The other accounts of a namespace a serviceAccounts entry names are near misses too.
                namespaces.update(
                    a.partition("/")[0] if "/" in a else policy.meta.namespace for a in source.service_accounts
                )
            for condition in rule.conditions:
                if condition.key == "source.principal":
                    candidates += _principal_witnesses(td, condition.values + condition.not_values)
                if condition.key == "source.namespace":
                    candidates += [
                        f"{td}/ns/{n}/sa/{INTRUDER_SA}" for n in _instances(condition.values + condition.not_values)
                    ]
    candidates += _accounts_in(ctx, namespaces)
    excluded = set(protected.allowed_principals)
    if route.waypoint_identity is not None and route.waypoint_identity.principal:
        excluded.add(route.waypoint_identity.principal)
    # Only identities that can exist: "<trust domain>/ns/<namespace>/sa/<account>" (SPIFFE, §8.1).
    unique = dict.fromkeys(c for c in candidates if _IDENTITY.match(c) and c not in excluded)
    callers = [caller for principal in unique for caller in callers_as(ctx, principal)]
    callers += [c for c in bypass_callers(ctx) if c.principal not in excluded]
    return [*dict.fromkeys(callers), Caller(None, kind=ClientKind.OUTSIDE)]


def _instances(patterns: tuple[str, ...]) -> list[str]:
    """Concrete values matching each Istio pattern, plus near misses of each."""
    found: list[str] = []
    for pattern in patterns:
        found.append(_instance(pattern))
        found += near_misses(pattern.strip("*")) if pattern != "*" else []
        if "*" in pattern.strip("*"):
            # A waypoint reads every * in a namespace as ".*" (srcNamespaceGenerator), ztunnel none.
            found.append(pattern.replace("*", INTRUDER_SA))
    return [f for f in found if f]


def _instance(pattern: str) -> str:
    """A concrete value matching an Istio string pattern (suffix is checked before prefix, like Istio)."""
    if pattern == "*":
        return INTRUDER_SA
    if pattern.startswith("*"):
        return INTRUDER_SA + pattern[1:]
    if pattern.endswith("*"):
        return pattern[:-1] + INTRUDER_SA
    return pattern


def near_misses(value: str) -> list[str]:
    """Values that share a prefix or a suffix with ``value`` without being it (Kind 1 witnesses)."""
    if not value:
        return [WRONG_VALUE]
    misses = [
        value + "-" + NEAR_MISS,  # the whole value as a prefix
        NEAR_MISS + "-" + value,  # the whole value as a suffix
        value[:1] + NEAR_MISS,  # the first character only
        NEAR_MISS + value[-1:],  # the last character only
        value[:-1],  # one character short
        value.upper() if value.upper() != value else value.lower(),  # another case
    ]
    return [m for m in dict.fromkeys(misses) if m and m != value]


def _principal_witnesses(td: str, patterns: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        found.append(_from_principal(td, pattern))
        found += near_misses(pattern.strip("*")) if pattern != "*" else []
    return found


def header_witnesses(route: Route, header: str, value: str) -> list[tuple[str, str]]:
    """Wrong values for a required header, each with a label that never shows the value.

    Near misses of the required value (sharing a prefix or a suffix with it), an unrelated value,
    the empty value, and one instance of every pattern a condition on that header admits (§8.2).
    """
    found: dict[str, str] = {WRONG_VALUE: "an unrelated value", "": "an empty value"}
    labels = (
        "the value plus a suffix",
        "a prefix plus the value",
        "the same first character",
        "the same last character",
        "the value one character short",
        "the value in another case",
    )
    for miss, label in zip(near_misses(value), labels, strict=False):
        found.setdefault(miss, f"a near miss ({label})")
    for policy in route_policies(route):
        for rule in policy.rules:
            for condition in rule.conditions:
                if header_name(condition.key) != header:
                    continue
                for pattern in condition.values + condition.not_values:
                    found.setdefault(_instance(pattern), f"a value a condition on it names ({_pattern_kind(pattern)})")
    found.pop(value, None)
    return list(found.items())


def _pattern_kind(pattern: str) -> str:
    if pattern == "*":
        return "presence"
    if pattern.startswith("*"):
        return "suffix match"
    return "prefix match" if pattern.endswith("*") else "exact"


def _from_principal(td: str, pattern: str) -> str:
    """An identity the pattern matches; the pattern is taken literally, as Istio does (§8.1)."""
    if pattern.startswith("*") and pattern != "*":
        suffix = pattern[1:]
        if suffix.startswith("/sa/"):
            return f"{td}/ns/{OUTSIDE_NS}{suffix}"
        if suffix.startswith("/"):
            return f"{td}/ns/{OUTSIDE_NS}/sa/{INTRUDER_SA}{suffix}"
    return _instance(pattern) if pattern != "*" else f"{td}/ns/{OUTSIDE_NS}/sa/{INTRUDER_SA}"


def _from_account(td: str, value: str, policy_namespace: str) -> str:
    """``<ns>/<sa>`` or ``<sa>`` in the policy's namespace (istiod ``stringToServiceAccountMatch``)."""
    namespace, slash, account = value.partition("/")
    if not slash:
        namespace, account = policy_namespace, value
    return f"{td}/ns/{namespace}/sa/{account or INTRUDER_SA}"


def _accounts_in(ctx: AuditContext, namespaces: set[str]) -> list[str]:
    """Every ServiceAccount (declared, or named by a pod) in the given namespaces, as principals."""
    if ctx.reads is not None:
        ctx.reads.update(namespaces)
    return [
        f"{ctx.trust_domain}/ns/{ns}/sa/{sa}"
        for ns in sorted(namespaces)
        for sa in sorted(ctx.index.accounts_by_ns.get(ns, ()))
    ]


def callers_as(ctx: AuditContext, principal: str) -> list[Caller]:
    """The identity as every kind of client its workloads are (§9); an ambient pod without any.

    A workload outside the mesh (or on the host network) sends plaintext: it has no identity on
    the wire, never reaches a waypoint (§4.6) and meets STRICT at the destination.
    """
    caller = Caller(principal)
    if ctx.reads is not None:
        ctx.reads.add(caller.namespace or "")
    workloads = [
        w
        for w in ctx.index.workloads_by_account.get((caller.namespace or "", caller.service_account or ""), [])
        # The positive control runs as an allowed identity from a pod the cluster may not capture
        # (a probe, not a client the promise is about): the audit must not judge it as one.
        if not is_auditor_probe(w)
    ]
    kinds = dict.fromkeys(_client_kind(w, ctx.index) for w in workloads) or {ClientKind.AMBIENT: None}
    found = []
    for kind in kinds:
        if CLIENTS[kind].identity:
            found.append(Caller(principal, kind=kind))
        else:
            found.append(Caller(None, label=f"{principal}, whose pods are a {kind.value} (plaintext)", kind=kind))
    return found


def bypass_callers(ctx: AuditContext) -> list[Caller]:
    """Every client in the snapshot with an identity that does not always use a Service's waypoint
    (sidecar pods, Istio gateways): the callers a waypoint-only policy does not see (§9)."""
    # Once per index, not once per protected Service. Kept in the index itself, not in a
    # module-level cache: an lru_cache kept the last indexes (whole snapshots) alive after the
    # audit, so an offline check's interpreter exit re-scanned them all in its final garbage
    # collections (0.7 s of CPU at 10,000 Services, #16) and the daemon held old snapshots.
    key = ("bypass-callers", ctx.trust_domain)
    held = ctx.index.index_memo.get(key)
    if not isinstance(held, tuple):
        held = ctx.index.index_memo[key] = _bypass_callers(ctx.index, ctx.trust_domain)
    return list(held)


def _bypass_callers(index: SnapshotIndex, td: str) -> tuple[Caller, ...]:
    # Namespace by namespace, in the snapshot's order (build_snapshot sorts it by namespace);
    # each namespace's callers are remembered in the index (#16: kept across an incremental
    # audit's changes for the namespaces that did not change).
    found: dict[Caller, None] = {}
    for namespace, workloads in index.workloads_by_ns.items():
        key = ("bypass-callers", namespace, td)
        held = index.namespace_memo.get(key)
        if not isinstance(held, tuple):
            held = index.namespace_memo[key] = tuple(_bypass_in(workloads, index, td))
        found.update(dict.fromkeys(held))
    return tuple(found)


def _bypass_in(workloads: Iterable[Workload], index: SnapshotIndex, td: str) -> Iterable[Caller]:
    for workload in workloads:
        kind = _client_kind(workload, index)
        if kind in {ClientKind.SIDECAR, ClientKind.GATEWAY}:
            yield Caller(f"{td}/ns/{workload.meta.namespace}/sa/{workload.service_account}", kind=kind)


def _client_kind(workload: Workload, index: SnapshotIndex) -> ClientKind:
    """``client_of(workload).kind``, remembered in the index: it depends only on the workload and
    its namespace, and an incremental audit's index keeps it for unchanged namespaces (#16)."""
    held = index.workload_memo.get(id(workload))
    if held is not None and held[0] is workload and isinstance(held[1], ClientKind):
        return held[1]
    kind = client_of(workload, index).kind
    index.workload_memo[id(workload)] = (workload, kind)
    return kind


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
    """The ``when`` keys of ``rule`` that test ``header`` (``request.headers[<name>]``, names compared lower case as
    Envoy does). Never raises.
    """
    return [c.key for c in rule.conditions if header_name(c.key) == header]


def bypass_fix(caller: Caller) -> str:
    """The remediation for a client that skips the waypoint (§9)."""
    return (
        f"Fix: a ztunnel-bound ALLOW on the pods admitting only the waypoint's identity, or move namespace "
        f"{caller.namespace} to ambient (a {caller.kind.value} skips a Service's waypoint)"
    )
