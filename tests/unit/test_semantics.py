"""Unit tests of the ambient semantics the checks build on (mesh.py, authz.py), by example."""

from __future__ import annotations

import pytest

from auditor.core.authz import Applicable, Caller, Point, Request, decide, match_pattern, rule_matches
from auditor.core.mesh import CaptureState, capture_of, effective_waypoint
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    Gateway,
    Listener,
    Namespace,
    ObjectMeta,
    Service,
    Snapshot,
    SnapshotIndex,
    Workload,
)

UI = Caller("cluster.local/ns/default/sa/ui")
ORDERS = Caller("cluster.local/ns/default/sa/orders")
PLAINTEXT = Caller(None)


def _pod(annotations: dict[str, str], labels: dict[str, str] | None = None) -> Workload:
    meta = ObjectMeta(kind="Pod", name="catalog-1", namespace="default", annotations=annotations)
    return Workload(
        meta=meta, pod_labels=labels or {}, pod_annotations=annotations, service_account="catalog", is_pod=True
    )


def _live_index(workload: Workload) -> SnapshotIndex:
    namespace = Namespace(ObjectMeta(kind="Namespace", name="default", labels={"istio.io/dataplane-mode": "ambient"}))
    return SnapshotIndex(Snapshot(namespaces=(namespace,), workloads=(workload,), live=True))


@pytest.mark.parametrize(
    ("annotation", "state"),
    [
        ({"ambient.istio.io/redirection": "enabled"}, CaptureState.CAPTURED),
        ({"ambient.istio.io/redirection": "pending"}, CaptureState.PENDING),
        ({}, CaptureState.NOT_CAPTURED),
        (
            {"ambient.istio.io/redirection": "enabled", "ambient.istio.io/bypass-inbound-capture": "true"},
            CaptureState.NOT_CAPTURED,
        ),
    ],
)
def test_live_pods_are_captured_only_when_istio_cni_says_so(annotation: dict[str, str], state: CaptureState) -> None:
    """On a live cluster, labels are intent; istio-cni's redirection annotation is the fact (§2)."""
    pod = _pod(annotation)
    assert capture_of(pod, _live_index(pod)).state is state


def test_pod_opt_out_beats_the_namespace_label() -> None:
    pod = _pod({"ambient.istio.io/redirection": "enabled"}, labels={"istio.io/dataplane-mode": "none"})
    capture = capture_of(pod, _live_index(pod))
    assert capture.state is CaptureState.NOT_CAPTURED
    assert "opts out" in capture.reason


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "cluster.local/ns/a/sa/b", True),
        ("*", "", False),
        ("cluster.local/ns/default/*", "cluster.local/ns/default/sa/ui", True),
        ("cluster.local/ns/default/*", "cluster.local/ns/other/sa/ui", False),
        ("*/sa/ui", "cluster.local/ns/x/sa/ui", True),
        ("cluster.local/ns/default/sa/ui", "cluster.local/ns/default/sa/ui2", False),
    ],
)
def test_istio_string_match(pattern: str, value: str, expected: bool) -> None:
    assert match_pattern(pattern, value) is expected


def _policy(action: str, *rules: AuthzRule) -> AuthorizationPolicy:
    return AuthorizationPolicy(
        meta=ObjectMeta(kind="AuthorizationPolicy", name=action.lower(), namespace="default"),
        action=action,
        selector=None,
        rules=rules,
    )


FROM_UI = AuthzRule(sources=(AuthzSource(principals=("cluster.local/ns/default/sa/ui",)),))
HEADER = AuthzCondition(key="request.headers[x-auth-token]", values=("t",))


def test_no_allow_policy_allows_everyone_and_one_allow_flips_to_default_deny() -> None:
    """§4.4: without ALLOW policies everything is allowed; with one, only its matches are."""
    assert decide(Applicable(Point.ZTUNNEL, ()), ORDERS, Request()).allowed is True
    only_ui = Applicable(Point.ZTUNNEL, (_policy("ALLOW", FROM_UI),))
    assert decide(only_ui, UI, Request()).allowed is True
    assert decide(only_ui, ORDERS, Request()).allowed is False
    assert decide(only_ui, PLAINTEXT, Request()).allowed is False


def test_deny_wins_over_allow() -> None:
    both = Applicable(Point.WAYPOINT, (_policy("ALLOW", FROM_UI), _policy("DENY", FROM_UI)))
    decision = decide(both, UI, Request())
    assert decision.allowed is False
    assert decision.reason == "a DENY policy matches"


def test_allow_policy_without_rules_allows_nothing() -> None:
    assert decide(Applicable(Point.WAYPOINT, (_policy("ALLOW"),)), UI, Request()).allowed is False


def test_ztunnel_drops_rules_with_l7_attributes() -> None:
    """§4.3: the header rule is dropped at ztunnel, so the ALLOW policy admits nobody there."""
    rule = AuthzRule(sources=FROM_UI.sources, conditions=(HEADER,))
    request = Request(headers={"x-auth-token": "t"})
    assert rule_matches(rule, UI, request, Point.WAYPOINT, deny=False) is True
    assert rule_matches(rule, UI, request, Point.ZTUNNEL, deny=False) is False


def test_ip_blocks_cannot_be_decided_from_config() -> None:
    rule = AuthzRule(sources=(AuthzSource(ip_blocks=("10.0.0.0/8",)),))
    assert decide(Applicable(Point.ZTUNNEL, (_policy("ALLOW", rule),)), ORDERS, Request()).allowed is None


@pytest.mark.parametrize(
    ("source", "waypoint"),
    [
        (AuthzSource(trust_domains=("cluster.local",)), True),
        (AuthzSource(trust_domains=("other.domain",)), False),
        (AuthzSource(trust_domains=("cluster.*",)), True),
        (AuthzSource(trust_domains=("*.local",)), True),
        (AuthzSource(trust_domains=("*",)), True),
        (AuthzSource(not_trust_domains=("cluster.local",)), False),
    ],
)
def test_trust_domains_match_at_the_waypoint_and_are_unknown_at_ztunnel(source: AuthzSource, waypoint: bool) -> None:
    """Istio 1.31's trustDomains: the waypoint matches the peer's trust domain (generator.go
    srcTrustDomainGenerator); at ztunnel the translation is not established, so it cannot be told
    (a DENY on it used to read as deny-all: a false PASS)."""
    rule = AuthzRule(sources=(source,))
    assert rule_matches(rule, UI, Request(), Point.WAYPOINT, deny=True) is waypoint
    assert rule_matches(rule, UI, Request(), Point.ZTUNNEL, deny=True) is None
    assert decide(Applicable(Point.ZTUNNEL, (_policy("DENY", rule),)), UI, Request()).allowed is None


@pytest.mark.parametrize(
    ("condition", "headers", "expected"),
    [
        (AuthzCondition("request.headers[x-auth-token]", values=("t",)), {"x-auth-token": "t"}, True),
        (AuthzCondition("request.headers[x-auth-token]", values=("t",)), {}, False),
        (AuthzCondition("request.headers[x-auth-token]", values=("*",)), {"x-auth-token": "anything"}, True),
        (AuthzCondition("request.headers[x-auth-token]", not_values=("bad",)), {}, True),
        (AuthzCondition("request.headers[x-auth-token]", not_values=("bad",)), {"x-auth-token": "bad"}, False),
    ],
)
def test_header_conditions(condition: AuthzCondition, headers: dict[str, str], expected: bool) -> None:
    rule = AuthzRule(conditions=(condition,))
    assert rule_matches(rule, UI, Request(headers=headers), Point.WAYPOINT, deny=False) is expected


def test_named_ports_are_dropped_at_ztunnel() -> None:
    """§8.3: istiod drops a named port, leaving an empty match that ztunnel skips: the rule never matches."""
    rule = AuthzRule(operations=(AuthzOperation(ports=("http",)),))
    assert rule_matches(rule, UI, Request(port=8080), Point.ZTUNNEL, deny=False) is False
    assert rule_matches(rule, UI, Request(port=8080), Point.ZTUNNEL, deny=True) is False


@pytest.mark.parametrize(
    ("operation", "deny", "expected"),
    [
        # generator.go destPortGenerator refuses "http": the ALLOW rule is skipped (rule.checkError) ...
        (AuthzOperation(ports=("http",)), False, False),
        # ... a DENY only loses that value, so the rule has no port constraint left and matches.
        (AuthzOperation(ports=("http",)), True, True),
        (AuthzOperation(ports=("http", "80")), True, True),
        (AuthzOperation(ports=("8080",)), False, False),
    ],
)
def test_untranslatable_values_at_the_waypoint(operation: AuthzOperation, deny: bool, expected: bool) -> None:
    """§8.2: at the waypoint the port is the Service port (80 here)."""
    rule = AuthzRule(operations=(operation,))
    assert rule_matches(rule, UI, Request(port=80), Point.WAYPOINT, deny=deny) is expected


def test_unknown_when_key_drops_the_rule_at_the_waypoint_whatever_the_action() -> None:
    rule = AuthzRule(conditions=(AuthzCondition("request.nonsense", values=("x",)),))
    for deny in (False, True):
        assert rule_matches(rule, UI, Request(), Point.WAYPOINT, deny=deny) is False


def test_suffix_principal_at_the_waypoint_is_an_unescaped_regex() -> None:
    """StringMatcherWithPrefix("*.local/ns/default/sa/ui", "spiffe://") is regex spiffe://.*.local/..."""
    rule = AuthzRule(sources=(AuthzSource(principals=("*.local/ns/default/sa/ui",)),))
    assert rule_matches(rule, UI, Request(), Point.WAYPOINT, deny=False) is True
    xlocal = Caller("clusterxlocal/ns/default/sa/ui")
    assert rule_matches(rule, xlocal, Request(), Point.WAYPOINT, deny=False) is True  # "." is any character
    assert rule_matches(rule, xlocal, Request(), Point.ZTUNNEL, deny=False) is False  # ztunnel: a plain suffix


def test_no_jwt_fails_request_principals_and_passes_their_not_form() -> None:
    values = AuthzRule(conditions=(AuthzCondition("request.auth.principal", values=("*",)),))
    not_values = AuthzRule(conditions=(AuthzCondition("request.auth.principal", not_values=("*",)),))
    assert rule_matches(values, UI, Request(), Point.WAYPOINT, deny=False) is False
    assert rule_matches(not_values, UI, Request(), Point.WAYPOINT, deny=False) is True


# --- Waypoint binding as istiod does it (pilot/pkg/serviceregistry/ambient/waypoints.go) ---------


def _gateway(listeners: tuple[Listener, ...] | None = None, addresses: tuple[str, ...] | None = None) -> Gateway:
    """Gateway default/wp; ``addresses`` given = the Gateway has a status with those addresses."""
    return Gateway(
        meta=ObjectMeta(kind="Gateway", name="wp", namespace="default"),
        class_name="istio-waypoint",
        listeners=listeners if listeners is not None else (Listener("mesh", 15008, "HBONE"),),
        addresses=addresses or (),
        has_status=addresses is not None,
    )


def _service(name: str, namespace: str = "default", **labels: str) -> Service:
    return Service(meta=ObjectMeta(kind="Service", name=name, namespace=namespace, labels=labels), selector={})


def _index(*objects: Gateway | Service, ns_labels: dict[str, str] | None = None) -> SnapshotIndex:
    namespaces = (
        Namespace(ObjectMeta(kind="Namespace", name="default", labels=ns_labels or {})),
        Namespace(ObjectMeta(kind="Namespace", name="other", labels={"team": "a"})),
    )
    gateways = tuple(o for o in objects if isinstance(o, Gateway))
    services = tuple(o for o in objects if isinstance(o, Service))
    return SnapshotIndex(Snapshot(namespaces=namespaces, gateways=gateways, services=services))


def test_a_waypoints_own_service_never_uses_a_waypoint() -> None:
    """fetchWaypointForService: gateway.istio.io/managed=istio.io-mesh-controller beats every label."""
    own = _service("wp", **{"gateway.istio.io/managed": "istio.io-mesh-controller", "istio.io/use-waypoint": "wp"})
    index = _index(_gateway(), own, ns_labels={"istio.io/use-waypoint": "wp"})
    waypoint = effective_waypoint(own, index)
    assert (waypoint.gateway, waypoint.binding.exempt) == (None, True)
    app = _service("catalog")
    assert effective_waypoint(app, index).gateway is not None


@pytest.mark.parametrize(
    ("listeners", "bound", "fails_closed"),
    [
        ((Listener("mesh", 15008, "HBONE"), Listener("http", 80, "HTTP")), True, False),
        ((Listener("mesh", 15009, "HBONE"),), True, True),
        ((), True, True),
    ],
)
def test_listeners_do_not_unbind_a_waypoint_but_port_15008_must_exist(
    listeners: tuple[Listener, ...], bound: bool, fails_closed: bool
) -> None:
    """istiod binds on status.addresses; ztunnel connects to port 15008 of the waypoint's Service."""
    gateway = _gateway(listeners=listeners)
    waypoint = effective_waypoint(_service("catalog", **{"istio.io/use-waypoint": "wp"}), _index(gateway))
    assert (waypoint.gateway is not None, waypoint.fails_closed is not None) == (bound, fails_closed)


def test_with_status_the_address_decides_the_binding() -> None:
    service = _service("catalog", **{"istio.io/use-waypoint": "wp"})
    assert effective_waypoint(service, _index(_gateway(addresses=("10.0.0.1",)), service)).gateway is not None
    assert effective_waypoint(service, _index(_gateway(addresses=()), service)).gateway is None


@pytest.mark.parametrize(
    ("allowed", "selector", "bound"),
    [
        ("Same", {}, False),
        ("All", {}, True),
        ("Selector", {"team": "a"}, True),
        ("Selector", {"team": "b"}, False),
        ("Selector", None, False),
    ],
)
def test_attachment_follows_the_hbone_listener(allowed: str, selector: dict[str, str] | None, bound: bool) -> None:
    """makeAllowedRoutes: the 15008/HBONE listener's allowedRoutes decide cross-namespace use."""
    gateway = _gateway(
        listeners=(Listener("mesh", 15008, "HBONE", allowed, selector), Listener("x", 80, "HTTP", "All"))
    )
    service = _service(
        "catalog", "other", **{"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "default"}
    )
    assert (effective_waypoint(service, _index(gateway, service)).gateway is not None) is bound
