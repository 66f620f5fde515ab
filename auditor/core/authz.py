"""AuthorizationPolicy evaluation as ztunnel and waypoints do it (semantics §4).

Given the policies that apply at one enforcement point, a caller identity and a request, decide
allow or deny, and say which policy and rule decided. Matching is three-valued: ``None`` means
the snapshot cannot tell (a source IP range, an external authorizer), and checks treat it as
"cannot prove" rather than as either answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from auditor.core.model import Evidence
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    Service,
    SnapshotIndex,
    Workload,
    selector_matches,
)

Tri = bool | None


class Point(StrEnum):
    ZTUNNEL = "ztunnel"
    WAYPOINT = "waypoint"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who connects: a SPIFFE principal without ``spiffe://``, or ``None`` for plaintext."""

    principal: str | None
    label: str = ""

    @property
    def namespace(self) -> str | None:
        parts = (self.principal or "").split("/")
        return parts[2] if len(parts) == 5 and parts[1] == "ns" else None

    @property
    def service_account(self) -> str | None:
        parts = (self.principal or "").split("/")
        return parts[4] if len(parts) == 5 and parts[3] == "sa" else None

    def describe(self) -> str:
        return self.label or self.principal or "a plaintext client outside the mesh"


@dataclass(frozen=True, slots=True)
class Request:
    method: str = "GET"
    path: str = "/"
    host: str = ""
    port: int = 80
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{k}: <{'set' if v else 'empty'}>" for k, v in sorted(self.headers.items()))
        return f"{self.method} {self.path} port {self.port}" + (f" with {shown}" if shown else " without headers")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: Tri
    reason: str
    policy: str = ""
    rule: AuthzRule | None = None


@dataclass(frozen=True, slots=True)
class Applicable:
    """Policies one enforcement point evaluates, and the ones it ignores with why."""

    point: Point
    policies: tuple[AuthorizationPolicy, ...]
    ignored: tuple[Evidence, ...] = ()


# --- Which policies apply where (§4.1) ------------------------------------------------------------


def at_ztunnel(workload: Workload, index: SnapshotIndex, root_namespace: str) -> Applicable:
    applied, ignored = [], []
    for policy in _candidates(workload.meta.namespace, index, root_namespace):
        reason = _ztunnel_skip_reason(policy, workload, root_namespace)
        if reason is None:
            applied.append(policy)
        elif reason:
            ignored.append(Evidence(policy.meta.ref, "", "ignored at ztunnel", reason))
    ignored += _wrong_namespace(workload, index, root_namespace)
    return Applicable(Point.ZTUNNEL, tuple(applied), tuple(ignored))


def _candidates(namespace: str, index: SnapshotIndex, root_namespace: str) -> list[AuthorizationPolicy]:
    local = index.authz_by_ns.get(namespace, [])
    return local + ([] if namespace == root_namespace else index.authz_by_ns.get(root_namespace, []))


def _ztunnel_skip_reason(policy: AuthorizationPolicy, workload: Workload, root_namespace: str) -> str | None:
    """``None``: applies; ``""``: irrelevant to this workload; text: relevant but not enforced."""
    if policy.target_refs:
        return (
            "" if not _names_workload_service(policy) else "targetRefs policies are enforced only by waypoints (§4.1)"
        )
    if policy.selector and not selector_matches(policy.selector, workload.pod_labels):
        return ""
    return _inert_reason(policy, Point.ZTUNNEL)


def _names_workload_service(policy: AuthorizationPolicy) -> bool:
    return any(ref.kind in {"Service", "Gateway"} for ref in policy.target_refs)


def _inert_reason(policy: AuthorizationPolicy, point: Point) -> str | None:
    if policy.dry_run:
        return "istio.io/dry-run: the policy is evaluated but never enforced (§2)"
    if policy.action == "AUDIT":
        return "AUDIT policies only log; they allow and deny nothing"
    if policy.action == "CUSTOM" and point is Point.ZTUNNEL:
        return "CUSTOM policies are ignored by ztunnel: fail-open (§4.3)"
    return None


def _wrong_namespace(workload: Workload, index: SnapshotIndex, root_namespace: str) -> list[Evidence]:
    """Selector policies elsewhere that match the workload's labels: a classic misplacement."""
    found = []
    for policy in index.authz_by_selector.select(workload.pod_labels):
        namespace = policy.meta.namespace
        if namespace in {workload.meta.namespace, root_namespace}:
            continue
        note = (
            f"selects {workload.meta.ref}'s labels but lives in {namespace}; "
            "policies apply only in their own namespace (or mesh-wide from the root namespace)"
        )
        found.append(Evidence(policy.meta.ref, "metadata.namespace", namespace, note))
    return found


def at_waypoint(
    service: Service,
    waypoint_ns: str,
    waypoint_name: str,
    index: SnapshotIndex,
    root_namespace: str,
) -> Applicable:
    applied, ignored = [], []
    for policy in _waypoint_candidates(service, waypoint_ns, index, root_namespace):
        if not policy.target_refs:
            continue
        if not _targets(policy, service, waypoint_ns, waypoint_name, root_namespace):
            ignored += _unresolved_target(policy, service, waypoint_name)
            continue
        reason = _inert_reason(policy, Point.WAYPOINT)
        if reason is None:
            applied.append(policy)
        else:
            ignored.append(Evidence(policy.meta.ref, "", "ignored at the waypoint", reason))
    return Applicable(Point.WAYPOINT, tuple(applied), tuple(ignored))


def _waypoint_candidates(
    service: Service, waypoint_ns: str, index: SnapshotIndex, root_namespace: str
) -> list[AuthorizationPolicy]:
    namespaces = dict.fromkeys([service.meta.namespace, waypoint_ns, root_namespace])
    namespaces.update(dict.fromkeys(ns for ns in index.authz_by_ns if ns not in namespaces))
    return [p for ns in namespaces for p in index.authz_by_ns.get(ns, [])]


def _targets(
    policy: AuthorizationPolicy,
    service: Service,
    waypoint_ns: str,
    waypoint_name: str,
    root_namespace: str,
) -> bool:
    """targetRefs are local references: the target lives in the policy's own namespace."""
    ns = policy.meta.namespace
    for ref in policy.target_refs:
        if ref.kind == "Gateway" and ref.name == waypoint_name and ns == waypoint_ns:
            return True
        if ref.kind == "Service" and ref.name == service.meta.name and ns == service.meta.namespace:
            return True
        if ref.kind == "GatewayClass" and ref.name == "istio-waypoint" and ns == root_namespace:
            return True
    return False


def _unresolved_target(policy: AuthorizationPolicy, service: Service, waypoint_name: str) -> list[Evidence]:
    names = {service.meta.name, waypoint_name}
    misses = [ref for ref in policy.target_refs if ref.name in names]
    return [
        Evidence(
            policy.meta.ref,
            "spec.targetRefs",
            f"{ref.kind}/{ref.name}",
            f"does not resolve from namespace {policy.meta.namespace}: enforces nothing",
        )
        for ref in misses
    ]


# --- Decision (§4.4) ----------------------------------------------------------------------------


def decide(applicable: Applicable, caller: Caller, request: Request) -> Decision:
    """CUSTOM (waypoint), then DENY, then "no ALLOW applies" allows, then any ALLOW match."""
    point = applicable.point
    by_action: dict[str, list[AuthorizationPolicy]] = {"ALLOW": [], "DENY": [], "CUSTOM": []}
    for policy in applicable.policies:
        by_action.setdefault(policy.action, []).append(policy)
    custom, custom_policy, _ = _first_match(by_action["CUSTOM"], caller, request, point)
    if custom is not False:
        return Decision(None, "a CUSTOM (external) authorizer decides", custom_policy)
    denied, deny_policy, deny_rule = _first_match(by_action["DENY"], caller, request, point)
    if denied:
        return Decision(False, "a DENY policy matches", deny_policy, deny_rule)
    allows = by_action["ALLOW"]
    if not allows:
        if denied is None:
            return Decision(
                None,
                "a DENY policy may match (depends on attributes the snapshot cannot tell)",
                deny_policy,
            )
        return Decision(True, f"no ALLOW policy applies at {point}: everything is allowed")
    allowed, allow_policy, allow_rule = _first_match(allows, caller, request, point)
    if allowed and denied is False:
        return Decision(True, "an ALLOW policy matches", allow_policy, allow_rule)
    if allowed is False:
        return Decision(False, "ALLOW policies apply and none matches", ", ".join(p.meta.ref for p in allows))
    return Decision(
        None,
        "the decision depends on attributes the snapshot cannot tell",
        allow_policy or deny_policy,
    )


def _first_match(
    policies: Iterable[AuthorizationPolicy], caller: Caller, request: Request, point: Point
) -> tuple[Tri, str, AuthzRule | None]:
    maybe: tuple[Tri, str, AuthzRule | None] = (False, "", None)
    for policy in policies:
        for position, rule in enumerate(policy.rules):
            result = rule_matches(rule, caller, request, point, deny=policy.action == "DENY")
            where = f"{policy.meta.ref} rules[{position}]"
            if result:
                return True, where, rule
            if result is None and maybe[0] is False:
                maybe = (None, where, rule)
    return maybe


L4_WHEN_KEYS = frozenset({"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"})


def l7_attributes(rule: AuthzRule) -> tuple[str, ...]:
    """Attributes ztunnel cannot evaluate (§4.2)."""
    found = [
        f"from.source.{n}" for s in rule.sources for n in ("requestPrincipals", "notRequestPrincipals") if _field(s, n)
    ]
    found += [
        f"to.operation.{n}"
        for o in rule.operations
        for n in ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
        if _field(o, n)
    ]
    found += [f"when[{c.key}]" for c in rule.conditions if c.key not in L4_WHEN_KEYS]
    return tuple(found)


def _field(obj: AuthzSource | AuthzOperation, camel: str) -> tuple[str, ...]:
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    value: tuple[str, ...] = getattr(obj, snake)
    return value


def rule_matches(rule: AuthzRule, caller: Caller, request: Request, point: Point, *, deny: bool) -> Tri:
    if point is Point.ZTUNNEL and l7_attributes(rule):
        # §4.3: ALLOW rules with L7 attributes are dropped; a DENY with them never matches at
        # ztunnel (unverified, and the conservative reading for "never a false pass").
        return False
    sources = [_source_matches(s, caller, point) for s in rule.sources] or [True]
    operations = [_operation_matches(o, request, point, deny=deny) for o in rule.operations] or [True]
    conditions = [_condition_matches(c, caller, request) for c in rule.conditions]
    return _all([_any(sources), _any(operations), *conditions])


def _all(values: Iterable[Tri]) -> Tri:
    result: Tri = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def _any(values: Iterable[Tri]) -> Tri:
    result: Tri = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def _not(value: Tri) -> Tri:
    return None if value is None else not value


def match_pattern(pattern: str, value: str) -> bool:
    """Istio string match: exact, ``*``, ``prefix*`` or ``*suffix``."""
    if pattern == "*":
        return bool(value)
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _in(patterns: tuple[str, ...], value: str | None) -> bool:
    return value is not None and any(match_pattern(p.removeprefix("spiffe://"), value) for p in patterns)


def _source_matches(source: AuthzSource, caller: Caller, point: Point) -> Tri:
    checks: list[Tri] = []
    account = f"{caller.namespace}/{caller.service_account}" if caller.principal else None
    for positive, negative, value in (
        (source.principals, source.not_principals, caller.principal),
        (source.namespaces, source.not_namespaces, caller.namespace),
        (source.service_accounts, source.not_service_accounts, account),
    ):
        if positive:
            checks.append(_in(positive, value))
        if negative:
            checks.append(not _in(negative, value))
    if source.ip_blocks or source.not_ip_blocks or source.remote_ip_blocks or source.not_remote_ip_blocks:
        checks.append(None)  # addresses are not in a config snapshot
    if source.request_principals:
        checks.append(False)  # probes and the callers we model carry no JWT
    return _all(checks)


def _operation_matches(operation: AuthzOperation, request: Request, point: Point, *, deny: bool) -> Tri:
    ports = tuple(p for p in operation.ports if p.isdigit())
    not_ports = tuple(p for p in operation.not_ports if p.isdigit())
    checks: list[Tri] = []
    if operation.ports:
        # §4.2: named ports are dropped; a list left empty cannot be read safely either way.
        checks.append(str(request.port) in ports if ports else (not deny))
    if not_ports:
        checks.append(str(request.port) not in not_ports)
    for positive, negative, value in (
        (operation.methods, operation.not_methods, request.method),
        (operation.paths, operation.not_paths, request.path),
        (operation.hosts, operation.not_hosts, request.host),
    ):
        if positive:
            checks.append(_in(positive, value))
        if negative:
            checks.append(not _in(negative, value))
    return _all(checks)


def header_name(key: str) -> str | None:
    if key.startswith("request.headers[") and key.endswith("]"):
        return key[len("request.headers[") : -1].lower()
    return None


def _condition_matches(condition: AuthzCondition, caller: Caller, request: Request) -> Tri:
    known, value = _condition_value(condition.key, caller, request)
    if not known:
        return None
    checks: list[Tri] = []
    if condition.values:
        checks.append(_in(condition.values, value))
    if condition.not_values:
        checks.append(not _in(condition.not_values, value))
    return _all(checks)


def _condition_value(key: str, caller: Caller, request: Request) -> tuple[bool, str | None]:
    """(known, value): ``known`` is False for attributes a config snapshot cannot tell (IPs, SNI)."""
    header = header_name(key)
    if header is not None:
        return True, request.headers.get(header)
    known: dict[str, str | None] = {
        "source.principal": caller.principal,
        "source.namespace": caller.namespace,
        "destination.port": str(request.port),
    }
    if key in known:
        return True, known[key]
    if key.startswith("request.auth"):
        return True, None  # no JWT on the requests we model
    return False, None
