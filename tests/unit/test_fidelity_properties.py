"""Property-based tests of issue #9's four kinds over the pure core (docs/ambient-semantics.md §8-§10).

Each property states a rule read from Istio's or ztunnel's source and checks the model against
an independent reference written here from that source (never from the model itself):

- Kind 1, matching: ztunnel's ``StringMatch`` after istiod's ``stringToMatch`` (src/rbac.rs,
  ambient/authorization.go), Envoy's matchers after ``StringMatcherWithPrefix`` and the
  namespace / service account regexes (pilot/pkg/security/authz/{matcher,model}).
- Kind 2, callers: which hops each kind of client traverses (mesh.CLIENTS).
- Kind 3, HTTP attributes at ztunnel: ``handleRule`` per action, per entry.
- Kind 5, Istio's own objects: waypoint and gateway Services are never judged.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.core.authz import Caller, Point, Request, l7_attributes, match_pattern, rule_matches
from auditor.core.checks.witnesses import header_witnesses, near_misses
from auditor.core.mesh import CLIENTS, ClientKind, WaypointUse, istio_service, uses_service_waypoint
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    Container,
    ObjectMeta,
    Service,
    Snapshot,
    SnapshotIndex,
    Workload,
)

TD = "cluster.local"
LABEL = st.text(alphabet="abcdefgh-", min_size=1, max_size=6).filter(lambda s: s[0] != "-" and s[-1] != "-")
VALUE = st.text(alphabet="abcdeiXYZ-_./", min_size=1, max_size=10).filter(lambda s: "*" not in s)


@st.composite
def patterns(draw: st.DrawFn, base: st.SearchStrategy[str] = VALUE) -> str:
    """An Istio string pattern: exact, prefix ``x*``, suffix ``*x`` or presence ``*``."""
    value = draw(base)
    form = draw(st.sampled_from(["exact", "prefix", "suffix", "presence"]))
    return {"exact": value, "prefix": value + "*", "suffix": "*" + value, "presence": "*"}[form]


def _reference_string_match(pattern: str, value: str) -> bool:
    """istiod stringToMatch (the * checks in that order) then ztunnel StringMatch::matches."""
    if pattern == "*":
        return value != ""  # Presence
    if pattern.startswith("*"):
        return value.endswith(pattern.removeprefix("*"))  # Suffix
    if pattern.endswith("*"):
        return value.startswith(pattern.removesuffix("*"))  # Prefix
    return value == pattern  # Exact


def _caller(namespace: str, account: str) -> Caller:
    return Caller(f"{TD}/ns/{namespace}/sa/{account}")


def _source_rule(source: AuthzSource) -> AuthzRule:
    return AuthzRule(sources=(source,))


# --- Kind 1: values match as Istio translates them -----------------------------------------------


@given(patterns(), VALUE)
def test_string_match_is_ztunnels(pattern: str, value: str) -> None:
    assert match_pattern(pattern, value) is _reference_string_match(pattern, value)


@given(LABEL, LABEL, st.sampled_from(list(Point)))
def test_a_spiffe_scheme_in_a_principal_matches_no_identity(namespace: str, account: str, point: Point) -> None:
    """Case A: the value is taken literally; identities are compared without their scheme (ztunnel)
    or against "spiffe://" + value (waypoint), so "spiffe://<id>" never names <id>."""
    caller = _caller(namespace, account)
    assert caller.principal is not None
    rule = _source_rule(AuthzSource(principals=("spiffe://" + caller.principal,)))
    assert rule_matches(rule, caller, Request(), point, deny=False) is False
    plain = _source_rule(AuthzSource(principals=(caller.principal,)))
    assert rule_matches(plain, caller, Request(), point, deny=False) is True


@given(patterns(st.sampled_from([f"{TD}/ns/", f"{TD}/ns/shop/sa/", "/sa/api", "shop/sa/api", "api"])), LABEL, LABEL)
def test_principals_match_alike_at_both_points(pattern: str, namespace: str, account: str) -> None:
    """Without regex metacharacters, Envoy's "spiffe://"+pattern equals ztunnel's match on the stripped id."""
    caller = _caller(namespace, account)
    assert caller.principal is not None
    rule = _source_rule(AuthzSource(principals=(pattern,)))
    expected = _reference_string_match(pattern, caller.principal)
    for point in Point:
        assert rule_matches(rule, caller, Request(), point, deny=False) is expected, point


@given(patterns(LABEL), LABEL, LABEL)
def test_namespaces_at_ztunnel_and_waypoint(pattern: str, namespace: str, account: str) -> None:
    """ztunnel: StringMatch on the namespace; waypoint: regex ".*/ns/<* as .*>/.*" on the URI SAN."""
    caller = _caller(namespace, account)
    rule = _source_rule(AuthzSource(namespaces=(pattern,)))
    at_ztunnel = rule_matches(rule, caller, Request(), Point.ZTUNNEL, deny=False)
    assert at_ztunnel is _reference_string_match(pattern, namespace)
    regex = ".*/ns/" + pattern.replace("*", ".*") + "/.*"
    at_waypoint = rule_matches(rule, caller, Request(), Point.WAYPOINT, deny=False)
    assert at_waypoint is (re.fullmatch(regex, f"spiffe://{TD}/ns/{namespace}/sa/{account}") is not None)


@given(LABEL, LABEL, LABEL, st.booleans(), st.sampled_from(list(Point)))
def test_service_accounts_default_to_the_policy_namespace(
    policy_ns: str, caller_ns: str, account: str, short: bool, point: Point
) -> None:
    """serviceAccounts: "<sa>" means the policy's namespace; "<ns>/<sa>" is exact; both points agree."""
    value = account if short else f"{caller_ns}/{account}"
    rule = _source_rule(AuthzSource(service_accounts=(value,)))
    caller = _caller(caller_ns, account)
    expected = (policy_ns == caller_ns) if short else True
    assert rule_matches(rule, caller, Request(), point, deny=False, namespace=policy_ns) is expected


@given(patterns(), st.one_of(st.none(), VALUE), st.booleans(), st.sampled_from(["x-auth-token", "X-Auth-Token"]))
def test_header_conditions_are_envoy_header_matchers(
    pattern: str, value: str | None, negate: bool, key_name: str
) -> None:
    """values: OR of matchers, notValues: NOT(OR); "*" is presence; a missing header matches no value;
    header names compare case-insensitively."""
    condition = AuthzCondition(
        f"request.headers[{key_name}]", values=() if negate else (pattern,), not_values=(pattern,) if negate else ()
    )
    headers = {} if value is None else {"x-auth-token": value}
    matched = value is not None and (pattern == "*" or _reference_string_match(pattern, value))
    got = rule_matches(
        AuthzRule(conditions=(condition,)), _caller("a", "b"), Request(headers=headers), Point.WAYPOINT, deny=False
    )
    assert got is (not matched if negate else matched)


@st.composite
def _wildcards_admitting(draw: st.DrawFn) -> tuple[str, str]:
    """A required value and a prefix, suffix or presence pattern cut from it, so the pattern admits
    the value (drawn directly: filtering random pairs rejects almost all of them)."""
    required = draw(VALUE)
    cut = draw(st.integers(min_value=0, max_value=len(required)))
    form = draw(st.sampled_from(["prefix", "suffix", "presence"]))
    pattern = {"prefix": required[:cut] + "*", "suffix": "*" + required[cut:], "presence": "*"}[form]
    return pattern, required


@given(_wildcards_admitting())
def test_header_witnesses_find_every_other_admitted_value(case: tuple[str, str]) -> None:
    """Case B: whenever a condition admits the required value and some other value, the witnesses
    contain one of those other values (a near miss or an instance of the pattern)."""
    pattern, required = case
    assert _reference_string_match(pattern, required)
    policy = AuthorizationPolicy(
        meta=ObjectMeta("AuthorizationPolicy", "p", "default"),
        action="ALLOW",
        selector=None,
        rules=(AuthzRule(conditions=(AuthzCondition("request.headers[x-auth-token]", values=(pattern,)),)),),
    )

    class _Route:  # the one attribute header_witnesses reads through route_policies
        at_waypoint = type("A", (), {"policies": (policy,)})()
        backends = ()

    wrong = [v for v, _ in header_witnesses(_Route(), "x-auth-token", required)]  # type: ignore[arg-type]  # a duck-typed Route
    assert required not in wrong
    assert any(_reference_string_match(pattern, v) for v in wrong)


@given(VALUE)
def test_near_misses_share_a_prefix_or_suffix(value: str) -> None:
    misses = near_misses(value)
    assert value not in misses
    assert any(m.startswith(value) for m in misses)
    assert any(m.endswith(value) for m in misses)


# --- Kind 2: who the callers are -----------------------------------------------------------------


@given(st.sampled_from(list(ClientKind)), st.one_of(st.none(), st.sampled_from(["true", "false", "True"])))
def test_caller_model_decides_the_waypoint_hop(kind: ClientKind, label: str | None) -> None:
    """Ambient pods always meet a Service's waypoint, gateways only when the Service opts in,
    sidecars, waypoints and plaintext clients never (§9)."""
    labels = {} if label is None else {"istio.io/ingress-use-waypoint": label}
    service = Service(ObjectMeta("Service", "catalog", "default", labels=labels), selector={"app": "catalog"})
    expected = {
        ClientKind.AMBIENT: True,
        ClientKind.GATEWAY: (label or "").lower() == "true",
    }.get(kind, False)
    assert uses_service_waypoint(kind, service) is expected
    model = CLIENTS[kind]
    assert model.identity is model.mtls
    assert (model.service_waypoint is WaypointUse.NEVER) or model.identity


# --- Kind 3: HTTP attributes in ztunnel-bound policies -------------------------------------------

L4_SOURCE = st.builds(
    AuthzSource,
    principals=st.lists(st.sampled_from(["*", f"{TD}/ns/a/sa/b", "*/sa/b"]), max_size=1).map(tuple),
    namespaces=st.lists(st.sampled_from(["a", "x*"]), max_size=1).map(tuple),
)
L7_SOURCE = st.builds(AuthzSource, request_principals=st.just(("*",)))
L4_OPERATION = st.builds(
    AuthzOperation, ports=st.lists(st.sampled_from(["8080", "9090"]), min_size=1, max_size=1).map(tuple)
)
L7_OPERATION = st.builds(AuthzOperation, methods=st.just(("GET",)), paths=st.sampled_from([(), ("/x",)]))


@st.composite
def rules(draw: st.DrawFn) -> AuthzRule:
    sources = draw(st.lists(st.one_of(L4_SOURCE, L7_SOURCE), max_size=2))
    operations = draw(st.lists(st.one_of(L4_OPERATION, L7_OPERATION), max_size=2))
    conditions = draw(
        st.lists(
            st.sampled_from(
                [
                    AuthzCondition("source.namespace", values=("a",)),
                    AuthzCondition("destination.port", values=("8080",)),
                    AuthzCondition("request.headers[x-a]", values=("1",)),
                ]
            ),
            max_size=2,
        )
    )
    return AuthzRule(tuple(sources), tuple(operations), tuple(conditions))


def _reference_deny_at_ztunnel(rule: AuthzRule, caller: Caller, port: int) -> bool:
    """handleRule for DENY, then ztunnel: each from/to entry keeps its L4 fields (an entry left empty
    is skipped, so a clause of empty entries never matches); each when is its own clause."""

    def source_ok(s: AuthzSource) -> bool | None:
        fields = []
        if s.principals:
            fields.append(any(_reference_string_match(p, caller.principal or "") for p in s.principals))
        if s.namespaces:
            fields.append(any(_reference_string_match(n, caller.namespace or "") for n in s.namespaces))
        return all(fields) if fields else None  # None: an empty match

    def operation_ok(o: AuthzOperation) -> bool | None:
        return (str(port) in o.ports) if o.ports else None

    def clause(results: list[bool | None]) -> bool:
        return not results or any(r for r in results if r is not None)

    clauses = []
    if rule.operations:
        clauses.append(clause([operation_ok(o) for o in rule.operations]))
    if rule.sources:
        clauses.append(clause([source_ok(s) for s in rule.sources]))
    for condition in rule.conditions:
        if condition.key == "source.namespace":
            clauses.append((caller.namespace or "") in condition.values)
        elif condition.key == "destination.port":
            clauses.append(str(port) in condition.values)
        else:
            clauses.append(False)  # an HTTP key leaves a clause with one empty match
    return all(clauses)


@settings(max_examples=300)
@given(rules(), st.sampled_from(["a", "b", "xy"]), st.sampled_from([8080, 9090]))
def test_ztunnel_translation_per_action(rule: AuthzRule, namespace: str, port: int) -> None:
    """ALLOW: a rule with any HTTP attribute never matches. DENY: the HTTP attributes are dropped and
    the L4 matches kept, per entry; an empty match is skipped."""
    caller = _caller(namespace, "b")
    request = Request(port=port)
    allow = rule_matches(rule, caller, request, Point.ZTUNNEL, deny=False)
    deny = rule_matches(rule, caller, request, Point.ZTUNNEL, deny=True)
    if l7_attributes(rule):
        assert allow is False
    else:
        assert allow is deny
    assert deny is _reference_deny_at_ztunnel(rule, caller, port)


# --- Kind 5: Istio's own objects ------------------------------------------------------------------


@given(
    st.sampled_from(["gateway.networking.k8s.io/gateway-name", "gateway.istio.io/managed", None]),
    st.sampled_from([("istio-proxy",), ("app",), ("app", "istio-proxy")]),
    st.dictionaries(st.sampled_from(["app", "tier", "istio.io/dataplane-mode"]), st.sampled_from(["web", "none"])),
)
def test_istio_infrastructure_is_recognised(
    label: str | None, containers: tuple[str, ...], pod_labels: dict[str, str]
) -> None:
    """A Service istiod labels for a Gateway, or whose pods are only an istio-proxy, is Istio's own;
    an application (its own container, whatever its mesh labels) never is."""
    service_labels = {label: "w"} if label else {}
    meta = ObjectMeta("Service", "svc", "default", labels=service_labels)
    service = Service(meta, selector={"sel": "1"})
    workload = Workload(
        meta=ObjectMeta("Deployment", "svc", "default"),
        pod_labels={**pod_labels, "sel": "1"},
        pod_annotations={},
        service_account="svc",
        containers=tuple(Container(name) for name in containers),
    )
    index = SnapshotIndex(Snapshot(services=(service,), workloads=(workload,)))
    infra = istio_service(service, index) is not None
    assert infra is (label is not None or containers == ("istio-proxy",))
