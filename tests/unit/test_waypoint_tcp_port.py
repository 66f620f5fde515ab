"""§4.9: a waypoint serves a Service port of a TCP protocol as TCP, and istiod builds its RBAC for TCP.

Found by the waypoint oracle (tests/integration/test_waypoint_oracle.py, fixture
tests/fixtures/oracle/waypoint-tcp-port). Also the test rig's Envoy RBAC evaluator on the shapes
istiod emits (testrigs.devtools.waypointxds).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from auditor.core.authz import Applicable, Caller, Point, Request, decide, rule_matches, widened_when_untranslatable
from auditor.core.mesh import port_protocol, waypoint_sees_http
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    ObjectMeta,
    Service,
    ServicePort,
)
from testrigs.devtools import waypointxds

UI = Caller("cluster.local/ns/default/sa/ui")


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (ServicePort(80, 8080, name="http"), "http"),
        (ServicePort(80, 8080, name="HTTP2-web"), "http2"),
        (ServicePort(80, 8080, name="grpc-web-api"), "grpc-web"),
        (ServicePort(80, 8080, name="http", app_protocol="tcp"), "tcp"),  # appProtocol first
        (ServicePort(80, 8080, name="tcp", app_protocol="kubernetes.io/h2c"), "http2"),
        (ServicePort(443, 8443, name="https"), "https"),
        (ServicePort(80, 8080, name="web"), ""),  # unknown: sniffed
        (ServicePort(80, 8080), ""),
        (ServicePort(3306, 3306, name="db"), "tcp"),  # well-known port
        (ServicePort(53, 53, name="http", protocol="UDP"), "udp"),
    ],
)
def test_port_protocol_follows_istios_conversion(port: ServicePort, expected: str) -> None:
    assert port_protocol(port) == expected


def test_waypoint_sees_http_except_on_tcp_protocol_ports() -> None:
    ports = (ServicePort(80, 8080, name="http"), ServicePort(81, 8080, name="web"), ServicePort(443, 8443, name="tls"))
    service = Service(ObjectMeta("Service", "catalog", "default"), {"app": "catalog"}, ports)
    assert [waypoint_sees_http(service, p) for p in (80, 81, 443, 9999)] == [True, True, False, True]


HEADER = AuthzCondition("request.headers[x-auth-token]", values=("t",))


@pytest.mark.parametrize(
    ("rule", "deny", "expected"),
    [
        # ALLOW: the HTTP-only value makes istiod skip the rule: it never matches.
        (AuthzRule(sources=(AuthzSource(principals=(UI.principal or "",)),), conditions=(HEADER,)), False, False),
        (AuthzRule(operations=(AuthzOperation(methods=("GET",)),)), False, False),
        # DENY: only the value goes; what is left (here nothing, or the principal) matches.
        (AuthzRule(conditions=(HEADER,)), True, True),
        (AuthzRule(operations=(AuthzOperation(paths=("/admin",)),)), True, True),
        (AuthzRule(sources=(AuthzSource(principals=("cluster.local/ns/x/sa/y",)),), conditions=(HEADER,)), True, False),
        # L4 attributes are unaffected.
        (AuthzRule(operations=(AuthzOperation(ports=("80",)),)), False, True),
    ],
)
def test_rules_on_an_opaque_waypoint_chain(rule: AuthzRule, deny: bool, expected: bool) -> None:
    request = Request(port=80, headers={"x-auth-token": "t"}, opaque=True)
    assert rule_matches(rule, UI, request, Point.WAYPOINT, deny=deny) is expected
    # The same request on an HTTP chain: the header is there.
    if not deny and rule.conditions:
        assert rule_matches(rule, UI, Request(port=80, headers={"x-auth-token": "t"}), Point.WAYPOINT, deny=deny)


def _chain(*filters: Mapping[str, object]) -> dict[str, object]:
    http_filters = [{"name": waypointxds.RBAC_HTTP, "typedConfig": f} for f in filters]
    return {"filters": [{"name": waypointxds.HCM, "typedConfig": {"httpFilters": http_filters}}]}


def _principal(exact: str) -> dict[str, object]:
    return {"filterState": {"key": "io.istio.peer_principal", "stringMatch": {"exact": exact}}}


def test_envoy_rbac_evaluator_on_istios_shapes() -> None:
    allow = {
        "rules": {
            "policies": {
                "ns[default]-policy[catalog]-rule[0]": {
                    "permissions": [
                        {"andRules": {"rules": [{"notRule": {"urlPath": {"path": {"prefix": "/admin"}}}}]}}
                    ],
                    "principals": [
                        {
                            "andIds": {
                                "ids": [
                                    {"orIds": {"ids": [_principal("spiffe://cluster.local/ns/default/sa/ui")]}},
                                    {"header": {"name": "x-auth-token", "stringMatch": {"exact": "t"}}},
                                ]
                            }
                        }
                    ],
                }
            }
        }
    }
    deny = {
        "rules": {
            "action": "DENY",
            "policies": {
                "p": {
                    "permissions": [{"any": True}],
                    "principals": [{"header": {"name": ":method", "stringMatch": {"exact": "DELETE"}}}],
                }
            },
        }
    }
    chain = _chain(deny, allow)
    ui = "cluster.local/ns/default/sa/ui"
    assert waypointxds.chain_allows(chain, waypointxds.Witness(ui, headers={"x-auth-token": "t"})) is True
    assert waypointxds.chain_allows(chain, waypointxds.Witness(ui)) is False
    assert (
        waypointxds.chain_allows(chain, waypointxds.Witness(ui, path="/admin/x", headers={"x-auth-token": "t"}))
        is False
    )
    assert (
        waypointxds.chain_allows(chain, waypointxds.Witness(ui, method="DELETE", headers={"x-auth-token": "t"}))
        is False
    )
    other = "cluster.local/ns/default/sa/orders"
    assert waypointxds.chain_allows(chain, waypointxds.Witness(other, headers={"x-auth-token": "t"})) is False
    # An ALLOW filter with rules but no policy denies all; shadow rules alone enforce nothing.
    assert waypointxds.chain_allows(_chain({"rules": {}}), waypointxds.Witness(ui)) is False
    assert waypointxds.chain_allows(_chain({"shadowRules": {"policies": {}}}), waypointxds.Witness(ui)) is True


def test_envoy_rbac_evaluator_refuses_unknown_matchers() -> None:
    chain = _chain({"rules": {"policies": {"p": {"permissions": [{"any": True}], "principals": [{"frobnicate": {}}]}}}})
    with pytest.raises(ValueError, match="not modelled"):
        waypointxds.chain_allows(chain, waypointxds.Witness("cluster.local/ns/a/sa/b"))


@pytest.mark.parametrize(("action", "widened"), [("ALLOW", False), ("DENY", True), ("CUSTOM", True), ("AUDIT", True)])
def test_custom_and_audit_rules_lose_only_the_untranslatable_value(action: str, widened: bool) -> None:
    """builder.go generates CUSTOM rules with the DENY action (AUDIT with LOG); rule.checkError
    drops the whole rule for ALLOW only."""
    rule = AuthzRule(operations=(AuthzOperation(ports=("http",)),))
    policy = AuthorizationPolicy(
        ObjectMeta("AuthorizationPolicy", "p", "default"), action=action, selector=None, rules=(rule,)
    )
    assert widened_when_untranslatable(policy) is widened
    applicable = Applicable(Point.WAYPOINT, (policy,))
    allowed = decide(applicable, UI, Request(port=80)).allowed
    assert allowed == {"ALLOW": False, "DENY": False, "CUSTOM": None, "AUDIT": True}[action]
