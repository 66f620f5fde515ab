"""AuthorizationPolicy evaluation as ztunnel and waypoints do it (semantics §4).

Given the policies that apply at one enforcement point, a caller identity and a request, decide
allow or deny, and say which policy and rule decided. Matching is three-valued: ``None`` means
the snapshot cannot tell (a source IP range, an external authorizer), and checks treat it as
"cannot prove" rather than as either answer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from auditor.core.mesh import ClientKind
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
    """Where an AuthorizationPolicy is enforced: ztunnel (L4 only) or a waypoint (L4 and L7) (semantics §4.1)."""

    ZTUNNEL = "ztunnel"
    WAYPOINT = "waypoint"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who connects: a SPIFFE principal without ``spiffe://``, or ``None`` for plaintext, and which
    kind of client it is (the caller model, ``mesh.CLIENTS``: it decides the hops)."""

    principal: str | None
    label: str = ""
    kind: ClientKind = ClientKind.AMBIENT

    @property
    def namespace(self) -> str | None:
        """The namespace of a ``<trust domain>/ns/<namespace>/sa/<name>`` principal; None for plaintext or any other
        form. Never raises.
        """
        parts = (self.principal or "").split("/")
        return parts[2] if len(parts) == 5 and parts[1] == "ns" else None

    @property
    def service_account(self) -> str | None:
        """The ServiceAccount name of a ``<trust domain>/ns/<namespace>/sa/<name>`` principal; None for plaintext or
        any other form. Never raises.
        """
        parts = (self.principal or "").split("/")
        return parts[4] if len(parts) == 5 and parts[3] == "sa" else None

    def describe(self) -> str:
        """The caller for a finding's message: its label, its principal (with its client kind unless ambient), or "a
        plaintext client outside the mesh". Never raises.
        """
        if self.label:
            return self.label
        if self.principal is None:
            return "a plaintext client outside the mesh"
        return self.principal if self.kind is ClientKind.AMBIENT else f"{self.principal} ({self.kind.value})"


@dataclass(frozen=True, slots=True)
class Request:
    """The request a caller makes: HTTP ``method``, ``path``, ``host`` (the authority), destination ``port`` (a
    number) and ``headers`` (name -> value; names as written, compared case-insensitively). ``opaque``: the
    enforcement point sees the connection as TCP, not HTTP (a waypoint's chain for a Service port of a TCP
    protocol, ``mesh.waypoint_sees_http``): HTTP attributes cannot be evaluated there (semantics §4.9).
    """

    method: str = "GET"
    path: str = "/"
    host: str = ""
    port: int = 80
    headers: Mapping[str, str] = field(default_factory=dict)
    opaque: bool = False

    def header(self, name: str) -> str | None:
        """The value of a header, names compared case-insensitively (HTTP, Envoy)."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def describe(self) -> str:
        """``"METHOD path port N"`` plus which headers are set or empty (values are never shown). Never raises."""
        shown = ", ".join(f"{k}: <{'set' if v else 'empty'}>" for k, v in sorted(self.headers.items()))
        return f"{self.method} {self.path} port {self.port}" + (f" with {shown}" if shown else " without headers")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``decide``: ``allowed`` is True, False or None (the snapshot cannot tell: an external
    authorizer, a source IP range); ``reason`` says why in words; ``policy`` names what decided (``"<ref>
    rules[<i>]"`` for a matching rule, the ALLOW policies' refs joined by ``", "`` when none matches, ``""``
    when no policy applies) and ``rule`` is the matching rule when one decided.
    """

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
    """The policies ztunnel enforces for ``workload`` (semantics §4.1): the selector policies of its namespace and of
    ``root_namespace`` that select it. ``ignored`` names relevant ones that enforce nothing there (targetRefs
    policies, dry-run, AUDIT, CUSTOM: §2, §4.3) and selector policies in other namespaces that match its labels.
    Never raises.
    """
    applied, ignored = [], []
    for policy in _candidates(workload.meta.namespace, index, root_namespace):
        reason = _ztunnel_skip_reason(policy, workload, root_namespace)
        if reason is None:
            applied.append(policy)
        elif reason:
            ignored.append(Evidence(policy.meta.ref, "", "ignored at ztunnel", reason))
    ignored += _wrong_namespace(workload, index, root_namespace)
    return Applicable(Point.ZTUNNEL, tuple(applied), tuple(ignored))


def enforced_at_ztunnel(policy: AuthorizationPolicy) -> bool:
    """Whether istiod hands ztunnel ``policy`` to enforce (semantics §4.1, §4.3): a policy without
    targetRefs, not dry-run, whose action is ALLOW or DENY. istiod 1.31 translates no other
    (pilot/pkg/serviceregistry/ambient/authorization.go ``convertAuthorizationPolicy``: CUSTOM and
    AUDIT get the ``ZtunnelAccepted`` condition False, reason ``UnsupportedValue``, "ztunnel does
    not support the CUSTOM action"; dry-run ones the same unless
    ``AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY``, and then only to log). Never raises."""
    return not policy.target_refs and _inert_reason(policy, Point.ZTUNNEL) is None


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
    if policy.dry_run and not (policy.action == "CUSTOM" and point is Point.WAYPOINT):
        # A dry-run CUSTOM policy is not inert at a waypoint: istiod 1.31 puts its rules in the
        # enforced rules (action DENY) of the provider's RBAC filter (§4.3, builder.go buildHTTP).
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
    """The policies the waypoint ``waypoint_ns/waypoint_name`` enforces for ``service`` (semantics §4.1): targetRefs
    policies naming the Service or the Gateway in their own namespace, or the ``istio-waypoint`` GatewayClass in
    ``root_namespace``. ``ignored`` names targetRefs that do not resolve and inert policies (dry-run, AUDIT).
    Never raises.
    """
    applied, ignored = [], []
    for policy in _waypoint_candidates(service, waypoint_ns, waypoint_name, index, root_namespace):
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


def at_workload_waypoint(waypoint_ns: str, waypoint_name: str, index: SnapshotIndex, root_namespace: str) -> Applicable:
    """The policies the waypoint ``waypoint_ns/waypoint_name`` enforces on traffic addressed to a pod IP (a pod's own,
    workload waypoint; semantics §4.8): those whose targetRefs name the Gateway in its own namespace, or the
    ``istio-waypoint`` GatewayClass in ``root_namespace``. Policies targeting a Service never apply there: istiod
    builds the waypoint's direct-pod filter chain without a Service (pilot/pkg/networking/core/listener_waypoint.go
    ``buildWaypointInternal``); ``ignored`` names those of the waypoint's namespace, and inert ones. Never raises.
    """
    applied, ignored = [], []
    for namespace in dict.fromkeys([waypoint_ns, root_namespace]):
        for policy in index.authz_by_ns.get(namespace, []):
            gateway = any(
                (ref.kind == "Gateway" and ref.name == waypoint_name and namespace == waypoint_ns)
                or (ref.kind == "GatewayClass" and ref.name == "istio-waypoint" and namespace == root_namespace)
                for ref in policy.target_refs
            )
            if not gateway:
                if namespace == waypoint_ns and any(ref.kind == "Service" for ref in policy.target_refs):
                    note = "targets a Service: never applied to traffic addressed to a pod IP (§4.8)"
                    ignored.append(Evidence(policy.meta.ref, "spec.targetRefs", "Service", note))
                continue
            reason = _inert_reason(policy, Point.WAYPOINT)
            if reason is None:
                applied.append(policy)
            else:
                ignored.append(Evidence(policy.meta.ref, "", "ignored at the waypoint", reason))
    return Applicable(Point.WAYPOINT, tuple(applied), tuple(ignored))


def _waypoint_candidates(
    service: Service, waypoint_ns: str, waypoint_name: str, index: SnapshotIndex, root_namespace: str
) -> list[AuthorizationPolicy]:
    """Every policy of the Service's, the waypoint's and the root namespace, then those of other
    namespaces whose targetRefs name the Service or the waypoint (they resolve to nothing there,
    which ``at_waypoint`` reports; any other policy says nothing about this waypoint), each group
    in ``authz_by_ns`` order. Looked up by name, not by scanning every policy per Service (#16)."""
    first = dict.fromkeys([service.meta.namespace, waypoint_ns, root_namespace])
    found = [p for ns in first for p in index.authz_by_ns.get(ns, [])]
    named = {
        id(policy): policy
        for name in (service.meta.name, waypoint_name)
        for policy in index.authz_by_ref_name.get(name, ())
        if policy.meta.namespace not in first
    }
    if not named:
        return found
    rank = {ns: i for i, ns in enumerate(index.authz_by_ns)}  # rare: a policy naming it from elsewhere

    def order(policy: AuthorizationPolicy) -> tuple[int, int]:
        local = index.authz_by_ns[policy.meta.namespace]
        return rank[policy.meta.namespace], next(i for i, p in enumerate(local) if p is policy)

    return found + sorted(named.values(), key=order)


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
    """CUSTOM (waypoint), then DENY, then "no ALLOW applies" allows, then any ALLOW match.

    A waypoint runs the filters of CUSTOM policies before the others (istiod 1.31
    pilot/pkg/networking/core/listener_waypoint.go ``buildWaypointHTTPFilters``, networkfilter.go):
    a request a CUSTOM policy selects is then decided by its provider and by the DENY and ALLOW
    policies, so it is denied when those deny it, and otherwise the model cannot tell (the
    provider's answer; istiod denies it instead for a provider it cannot build, passes it for an
    HTTP provider on a port served as TCP, and a dry-run CUSTOM policy's rules deny it when the
    provider is valid: semantics §4.3). Never raises.
    """
    point = applicable.point
    by_action: dict[str, list[AuthorizationPolicy]] = {"ALLOW": [], "DENY": [], "CUSTOM": []}
    for policy in applicable.policies:
        by_action.setdefault(policy.action, []).append(policy)
    custom, custom_policy, _ = _first_match(by_action["CUSTOM"], caller, request, point)
    local = _local_decision(by_action, caller, request, point)
    if custom is False or local.allowed is False:
        return local
    if custom is None:
        return Decision(None, "a CUSTOM (external) authorizer may decide", custom_policy)
    return Decision(None, "a CUSTOM (external) authorizer decides", custom_policy)


def custom_selects(applicable: Applicable, caller: Caller, request: Request) -> Tri:
    """Whether a CUSTOM policy of ``applicable`` selects ``request``: its provider is asked (or,
    for a provider istiod cannot build, the request is denied). A dry-run CUSTOM policy selects
    only with a valid provider (its rules then deny; with an invalid one istiod leaves it out,
    builder.go ``getBadCustomDenyRules`` takes the enforced policies only), so its match alone is
    ``None``, as is whatever the model cannot tell. Semantics §4.3; compared with the waypoint's
    XDS by tests/integration/test_waypoint_oracle.py. Never raises."""
    customs = [p for p in applicable.policies if p.action == "CUSTOM"]
    enforced = _first_match([p for p in customs if not p.dry_run], caller, request, applicable.point)[0]
    if enforced is not False:
        return enforced
    dry_run = _first_match([p for p in customs if p.dry_run], caller, request, applicable.point)[0]
    return None if dry_run is not False else False


def _local_decision(
    by_action: Mapping[str, list[AuthorizationPolicy]], caller: Caller, request: Request, point: Point
) -> Decision:
    """DENY, then "no ALLOW applies" allows, then any ALLOW match (RBAC filters, no CUSTOM)."""
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


def widened_when_untranslatable(policy: AuthorizationPolicy) -> bool:
    """Whether istiod drops only a value it cannot translate (True) or the whole rule (False, ALLOW).

    pilot/pkg/security/authz/model ``rule.checkError`` returns the error only for an ALLOW action;
    the builder generates CUSTOM rules with the DENY action (the CUSTOM policy's RBAC selects what the
    external authorizer sees) and AUDIT rules with LOG, so for both the value goes and the rule
    widens, as for DENY (§4.9). Never raises.
    """
    return policy.action != "ALLOW"


def _first_match(
    policies: Iterable[AuthorizationPolicy], caller: Caller, request: Request, point: Point
) -> tuple[Tri, str, AuthzRule | None]:
    maybe: tuple[Tri, str, AuthzRule | None] = (False, "", None)
    for policy in policies:
        for position, rule in enumerate(policy.rules):
            result = rule_matches(
                rule, caller, request, point, deny=widened_when_untranslatable(policy), namespace=policy.meta.namespace
            )
            where = f"{policy.meta.ref} rules[{position}]"
            if result:
                return True, where, rule
            if result is None and maybe[0] is False:
                maybe = (None, where, rule)
    return maybe


# --- Matching (§4.2, §4.3, §8) --------------------------------------------------------------------
#
# Two enforcement points, two translations of the same rule (docs/ambient-semantics.md §8):
#
# - ztunnel: istiod converts each rule (pilot/pkg/serviceregistry/kube/controller/ambient/
#   authorization.go, ``handleRule``) into clauses: one for ``to`` (one match per operation, ports
#   only), one for ``from`` (one match per source), one per ``when`` condition. ztunnel
#   (src/rbac.rs, ``Authorization::matches``) ANDs the clauses, ORs the matches in a clause, skips
#   an empty match (so a clause made only of empty matches never matches) and takes a clause with
#   no match at all as matching. In an ALLOW policy a rule with any HTTP attribute is dropped; in a
#   DENY policy only the HTTP attributes are dropped, the rule's L4 matches stay.
# - waypoint: Envoy RBAC built by pilot/pkg/security/authz/model (``New``, ``Generate``) and
#   ``generator.go``: principals become ``spiffe://`` + value matched against the peer's URI SAN,
#   namespaces and service accounts become regexes over it, headers use Envoy header matchers.
#   A value the generator cannot translate drops the whole rule of an ALLOW policy and only that
#   value of any other (DENY; CUSTOM and AUDIT, built as DENY and LOG) (``rule.checkError``, §4.9).

L4_WHEN_KEYS = frozenset({"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"})
_HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_HTTP_SOURCE_FIELDS = ("remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals")
SPIFFE = "spiffe://"


def l7_attributes(rule: AuthzRule) -> tuple[str, ...]:
    """The HTTP attributes istiod finds in a rule (``httpOperations``, ``httpSources``, non-L4 ``when`` keys)."""
    found = [f"from.source.{n}" for s in rule.sources for n in _HTTP_SOURCE_FIELDS if _field(s, n)]
    found += [f"to.operation.{n}" for o in rule.operations for n in _HTTP_OPERATION_FIELDS if _field(o, n)]
    found += [f"when[{c.key}]" for c in rule.conditions if c.key not in L4_WHEN_KEYS]
    return tuple(dict.fromkeys(found))


def _field(obj: AuthzSource | AuthzOperation, camel: str) -> tuple[str, ...]:
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    value: tuple[str, ...] = getattr(obj, snake)
    return value


def rule_matches(
    rule: AuthzRule, caller: Caller, request: Request, point: Point, *, deny: bool, namespace: str = ""
) -> Tri:
    """Whether one rule of a policy in ``namespace`` matches, as the enforcement point computes it."""
    if point is Point.ZTUNNEL:
        return _ztunnel_rule(rule, caller, request.port, deny=deny, namespace=namespace)
    return _waypoint_rule(rule, caller, request, deny=deny, namespace=namespace)


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


def match_pattern(pattern: str, value: str | None) -> bool:
    """Istio's string match (istiod ``stringToMatch``, Envoy ``StringMatcher``; ztunnel ``StringMatch``).

    ``*`` is presence (a non-empty value); a leading ``*`` is checked first and makes a suffix
    match, then a trailing ``*`` a prefix match; anything else is exact and case-sensitive. The
    value is compared as written: no scheme is added or removed.
    """
    if value is None:
        return False
    if pattern == "*":
        return bool(value)
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _port(value: str) -> int | None:
    """istiod ``stringToPort`` / Envoy ``convertToPort``: decimal digits up to 65535, else dropped."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= 65535 else None


def _ip(value: str) -> bool:
    """Whether istiod can parse an address or CIDR (invalid ones are dropped, ``stringToIP``)."""
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --- ztunnel --------------------------------------------------------------------------------------

# One match of a clause, already evaluated against the connection: one entry per declared field.
_Match = list[Tri]


def _field_result(positive: Iterable[Tri], negative: Iterable[Tri]) -> list[Tri]:
    """ztunnel ``matches_internal``: any positive matches, none of the negative does; absent = no field."""
    found: list[Tri] = []
    pos, neg = list(positive), list(negative)
    if pos:
        found.append(_any(pos))
    if neg:
        found.append(_not(_any(neg)))
    return found


def _zt_principal(pattern: str, caller: Caller) -> bool:
    # ztunnel matches_principal: strips spiffe:// from the peer identity, never from the pattern.
    return caller.principal is not None and match_pattern(pattern, caller.principal)


def _zt_namespace(pattern: str, caller: Caller) -> bool:
    return match_pattern(pattern, caller.namespace or "")


def _zt_account(value: str, caller: Caller, namespace: str) -> bool:
    # istiod stringToServiceAccountMatch: "<ns>/<sa>" or "<sa>" in the policy's namespace; exact.
    ns, slash, sa = value.partition("/")
    if not slash:
        ns, sa = namespace, value
    return caller.principal is not None and (caller.namespace, caller.service_account) == (ns, sa)


def _zt_ports(values: tuple[str, ...], port: int) -> list[Tri]:
    return [_port(v) == port for v in values if _port(v) is not None]


def _zt_ips(values: tuple[str, ...]) -> list[Tri]:
    return [None for v in values if v and _ip(v)]  # addresses are not in a config snapshot


def _zt_from(source: AuthzSource, caller: Caller, namespace: str) -> _Match:
    found = _field_result(_zt_ips(source.ip_blocks), _zt_ips(source.not_ip_blocks))
    # trustDomains (Istio 1.31): how istiod hands it to ztunnel is not established here (neither
    # the ambient translation nor the oracle covers it yet), so it cannot be told from config:
    # unknown, never a silent "no field" (a DENY on it would otherwise read as deny-all).
    found += _field_result((None for _ in source.trust_domains), (None for _ in source.not_trust_domains))
    found += _field_result(
        (_zt_namespace(p, caller) for p in source.namespaces), (_zt_namespace(p, caller) for p in source.not_namespaces)
    )
    found += _field_result(
        (_zt_account(v, caller, namespace) for v in source.service_accounts),
        (_zt_account(v, caller, namespace) for v in source.not_service_accounts),
    )
    found += _field_result(
        (_zt_principal(p, caller) for p in source.principals), (_zt_principal(p, caller) for p in source.not_principals)
    )
    return found


def _zt_to(operation: AuthzOperation, port: int) -> _Match:
    return _field_result(_zt_ports(operation.ports, port), _zt_ports(operation.not_ports, port))


def _zt_when(condition: AuthzCondition, caller: Caller, port: int) -> _Match:
    key, values, not_values = condition.key, condition.values, condition.not_values
    if key == "source.namespace":
        return _field_result((_zt_namespace(v, caller) for v in values), (_zt_namespace(v, caller) for v in not_values))
    if key == "source.principal":
        return _field_result((_zt_principal(v, caller) for v in values), (_zt_principal(v, caller) for v in not_values))
    if key == "destination.port":
        return _field_result(_zt_ports(values, port), _zt_ports(not_values, port))
    if key in {"source.ip", "destination.ip"}:
        return _field_result(_zt_ips(values), _zt_ips(not_values))
    return []  # an HTTP key leaves an empty match behind


def _clause(matches: list[_Match]) -> Tri:
    """ztunnel: a clause without matches matches; empty matches are skipped; else any match."""
    if not matches:
        return True
    return _any(_all(m) for m in matches if m)


def ztunnel_clauses(rule: AuthzRule, caller: Caller, port: int, namespace: str) -> list[list[_Match]]:
    """The clauses istiod's ``handleRule`` builds for one rule, evaluated for one connection."""
    clauses: list[list[_Match]] = []
    if rule.operations:
        clauses.append([_zt_to(o, port) for o in rule.operations])
    if rule.sources:
        clauses.append([_zt_from(s, caller, namespace) for s in rule.sources])
    clauses += [[_zt_when(c, caller, port)] for c in rule.conditions]
    return clauses


def ztunnel_form(rule: AuthzRule, *, deny: bool) -> str:
    """What istiod's translation leaves of a rule at ztunnel (§8.3), for evidence; "" if unchanged.

    ``dropped``: an ALLOW rule with an HTTP attribute, never matches; ``inert``: a clause is left
    with only empty matches, never matches; ``broader``: a DENY rule kept without its HTTP attributes.
    """
    if not deny and l7_attributes(rule):
        return "dropped"
    if any(clause and not any(clause) for clause in ztunnel_clauses(rule, Caller(None), 0, "")):
        return "inert"
    return "broader" if l7_attributes(rule) else ""


def _ztunnel_rule(rule: AuthzRule, caller: Caller, port: int, *, deny: bool, namespace: str) -> Tri:
    if not deny and l7_attributes(rule):
        return False  # handleRule: "L7 policies never match for ALLOW"
    return _all(_clause(c) for c in ztunnel_clauses(rule, caller, port, namespace))


# --- waypoint (Envoy RBAC) ------------------------------------------------------------------------


class _UntranslatableError(Exception):
    """A value istiod's generator refuses (named port, bad address, unknown key)."""


def _regex(pattern: str, value: str) -> Tri:
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        return None  # Envoy would reject the configuration: the outcome is unknown


def _san(caller: Caller) -> str:
    return SPIFFE + caller.principal if caller.principal is not None else ""


def _wp_principal(pattern: str, caller: Caller) -> Tri:
    # generator.go srcPrincipalGenerator -> matcher.StringMatcherWithPrefix(value, "spiffe://").
    san = _san(caller)
    if pattern == "*":
        return bool(san)  # regex ".+"
    if pattern.startswith("*"):
        return _regex(SPIFFE + ".*" + pattern[1:], san)
    if pattern.endswith("*"):
        return san.startswith(SPIFFE + pattern[:-1])
    return san == SPIFFE + pattern


def _wp_namespace(pattern: str, caller: Caller) -> Tri:
    # srcNamespaceGenerator: regex ".*/ns/<value with * as .*>/.*" over the URI SAN.
    return _regex(".*/ns/" + pattern.replace("*", ".*") + "/.*", _san(caller))


def _wp_account(value: str, caller: Caller, namespace: str) -> Tri:
    # srcServiceAccountGenerator / serviceAccountRegex.
    ns, slash, sa = value.partition("/")
    if not slash:
        ns, sa = namespace, value
    return _regex(f"spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?", _san(caller))


def _wp_port(value: str, port: int) -> Tri:
    number = _port(value)
    if number is None:
        raise _UntranslatableError(f"port {value!r}")
    return number == port


def _wp_ip(value: str) -> Tri:
    if not _ip(value):
        raise _UntranslatableError(f"address {value!r}")
    return None


def _wp_trust_domain(pattern: str, caller: Caller) -> Tri:
    # model/generator.go srcTrustDomainGenerator: an authenticated principal matched by prefix
    # "spiffe://<td>/"; "*" any trust domain; one "*" inside becomes "[^/]*" (no slash).
    if caller.principal is None:
        return False
    domain = caller.principal.split("/", 1)[0]
    if pattern == "*":
        return True
    if "*" not in pattern:
        return domain == pattern
    head, tail = pattern.split("*", 1)
    return len(domain) >= len(head) + len(tail) and domain.startswith(head) and domain.endswith(tail)


def _wp_header(pattern: str, value: str | None) -> Tri:
    # matcher.HeaderMatcher: "*" is present_match (an empty value is present); else StringMatcher.
    if value is None:
        return False
    return True if pattern == "*" else match_pattern(pattern, value)


def _wp_path(pattern: str, path: str) -> Tri:
    if "{" in pattern:
        return None  # path templates ({*}, {**}) are not modelled
    return bool(path) if pattern == "*" else match_pattern(pattern, path)


def _wp_host(pattern: str, host: str) -> Tri:
    # matcher.HostMatcher: ignore case.
    return True if pattern == "*" else match_pattern(pattern.lower(), host.lower())


_Predicate = Callable[[str], Tri]


def _wp_field(values: tuple[str, ...], not_values: tuple[str, ...], predicate: _Predicate, deny: bool) -> list[Tri]:
    """model.go ``rule.permission`` / ``rule.principal``: OR of values, NOT(OR) of notValues."""
    if not values and not not_values:
        return []  # the common case (most fields of a rule are unset): nothing to translate (#16)
    found: list[Tri] = []
    for group, negate in ((values, False), (not_values, True)):
        results = []
        for value in group:
            try:
                results.append(predicate(value))
            except _UntranslatableError:
                if not deny:
                    raise
        if results:
            found.append(_not(_any(results)) if negate else _any(results))
    return found


def _http_only(predicate: _Predicate, request: Request, what: str) -> _Predicate:
    """istiod builds a TCP chain's RBAC with ``forTCP``: an HTTP-only generator (headers, paths,
    methods, hosts, request principals and JWT claims) refuses every value there ("is HTTP only"),
    which drops the rule of an ALLOW policy and only the value of a DENY one (§4.9)."""
    if not request.opaque:
        return predicate

    def refused(value: str) -> Tri:
        raise _UntranslatableError(f"{what} {value!r} is HTTP only, the chain is TCP")

    return refused


def _wp_condition(condition: AuthzCondition, caller: Caller, request: Request, deny: bool) -> list[Tri]:
    key = condition.key
    predicate: _Predicate
    if key == "source.principal":
        predicate = lambda v: _wp_principal(v, caller)  # noqa: E731 - one-line dispatch table entries
    elif key == "source.namespace":
        predicate = lambda v: _wp_namespace(v, caller)  # noqa: E731 - one-line dispatch table entries
    elif key == "destination.port":
        predicate = lambda v: _wp_port(v, request.port)  # noqa: E731 - one-line dispatch table entries
    elif key in {"source.ip", "remote.ip", "destination.ip"}:
        predicate = _wp_ip
    elif key.startswith("request.headers"):
        predicate = _http_only(_header_predicate(key, request), request, key)
    elif key in {"request.auth.principal", "request.auth.audiences", "request.auth.presenter"} or key.startswith(
        "request.auth.claims["
    ):
        predicate = _http_only(lambda v: False, request, key)  # the callers we model carry no JWT
    elif key == "connection.sni" or key.startswith("experimental.envoy.filters."):
        predicate = lambda v: None  # noqa: E731 - not in a config snapshot
    else:
        raise _UntranslatableError(f"unknown attribute {key!r}")  # model.New refuses the rule
    return _wp_field(condition.values, condition.not_values, predicate, deny)


def _header_predicate(key: str, request: Request) -> _Predicate:
    name = header_name(key)

    def predicate(value: str) -> Tri:
        if name is None:
            raise _UntranslatableError(f"key {key!r}")  # extractNameInBrackets fails per value
        return _wp_header(value, request.header(name))

    return predicate


def _wp_source(source: AuthzSource, caller: Caller, request: Request, namespace: str, deny: bool) -> list[Tri]:
    found = _wp_field(source.ip_blocks, source.not_ip_blocks, _wp_ip, deny)
    found += _wp_field(source.remote_ip_blocks, source.not_remote_ip_blocks, _wp_ip, deny)
    found += _wp_field(source.namespaces, source.not_namespaces, lambda v: _wp_namespace(v, caller), deny)
    found += _wp_field(
        source.service_accounts, source.not_service_accounts, lambda v: _wp_account(v, caller, namespace), deny
    )
    found += _wp_field(
        source.request_principals,
        source.not_request_principals,
        _http_only(lambda v: False, request, "requestPrincipals"),
        deny,
    )
    found += _wp_field(source.trust_domains, source.not_trust_domains, lambda v: _wp_trust_domain(v, caller), deny)
    found += _wp_field(source.principals, source.not_principals, lambda v: _wp_principal(v, caller), deny)
    return found


def _wp_operation(operation: AuthzOperation, request: Request, deny: bool) -> list[Tri]:
    found = _wp_field(operation.ports, operation.not_ports, lambda v: _wp_port(v, request.port), deny)
    paths = _http_only(lambda v: _wp_path(v, request.path), request, "paths")
    methods = _http_only(lambda v: _wp_header(v, request.method), request, "methods")
    hosts = _http_only(lambda v: _wp_host(v, request.host), request, "hosts")
    found += _wp_field(operation.paths, operation.not_paths, paths, deny)
    found += _wp_field(operation.methods, operation.not_methods, methods, deny)
    found += _wp_field(operation.hosts, operation.not_hosts, hosts, deny)
    return found


_PERMISSION_KEYS = frozenset({"destination.ip", "destination.port", "connection.sni"})


def _waypoint_rule(rule: AuthzRule, caller: Caller, request: Request, *, deny: bool, namespace: str) -> Tri:
    """Envoy RBAC: (any ``to`` permission) AND (any ``from`` principal); ``when`` is ANDed into each."""
    try:
        base_permission: list[Tri] = []
        base_principal: list[Tri] = []
        for condition in rule.conditions:
            target = base_permission if condition.key in _PERMISSION_KEYS else base_principal
            target += _wp_condition(condition, caller, request, deny)
        permissions = [_all([*_wp_operation(o, request, deny), *base_permission]) for o in rule.operations]
        principals = [_all([*_wp_source(s, caller, request, namespace, deny), *base_principal]) for s in rule.sources]
    except _UntranslatableError:
        return False  # the ALLOW rule is skipped; an unknown key skips a DENY rule too
    return _all([_any(permissions or [_all(base_permission)]), _any(principals or [_all(base_principal)])])


def header_name(key: str) -> str | None:
    """The header a ``request.headers[...]`` key names, lower-cased as Envoy compares header names."""
    if key.startswith("request.headers[") and key.endswith("]") and len(key) > len("request.headers[]"):
        return key[len("request.headers[") : -1].lower()
    return None
