"""§4.3: CUSTOM AuthorizationPolicies at ztunnel and at a waypoint, as istiod 1.31 builds them.

Found by the oracles (tests/integration/test_translation_oracle.py, test_waypoint_oracle.py) with
an extension provider in the test istiod's mesh config. Also the test rig's Envoy evaluator on
the shapes istiod emits for CUSTOM (testrigs.devtools.waypointxds): the provider's RBAC filter
with shadow rules that enable its ext_authz filter, and the deny rules for a provider istiod
cannot build.
"""

from __future__ import annotations

from typing import Any

import pytest

from auditor.core.authz import (
    Applicable,
    Caller,
    Point,
    Request,
    at_ztunnel,
    custom_selects,
    decide,
    enforced_at_ztunnel,
)
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    ObjectMeta,
    Snapshot,
    SnapshotIndex,
    TargetRef,
    Workload,
)
from testrigs.devtools import waypointxds

UI = Caller("cluster.local/ns/default/sa/ui")
ORDERS = Caller("cluster.local/ns/default/sa/orders")
ADMIN = AuthzRule(operations=(AuthzOperation(paths=("/admin",)),))
FROM_UI = AuthzRule(sources=(AuthzSource(principals=("cluster.local/ns/default/sa/ui",)),))


def _policy(name: str, action: str, *rules: AuthzRule, dry_run: bool = False, **kwargs: Any) -> AuthorizationPolicy:
    annotations = {"istio.io/dry-run": "true"} if dry_run else {}
    return AuthorizationPolicy(
        ObjectMeta("AuthorizationPolicy", name, "default", annotations=annotations),
        action=action,
        selector=kwargs.pop("selector", None),
        rules=rules,
        provider="ext-authz" if action == "CUSTOM" else "",
        **kwargs,
    )


def _waypoint(*policies: AuthorizationPolicy) -> Applicable:
    return Applicable(Point.WAYPOINT, policies)


@pytest.mark.parametrize(
    ("others", "caller", "path", "expected"),
    [
        ((), UI, "/admin", None),  # the provider decides
        ((), UI, "/", True),  # not selected: no other policy, allowed
        ((_policy("deny-ui", "DENY", FROM_UI),), UI, "/admin", False),  # denied whatever the provider says
        (
            (_policy("allow-orders", "ALLOW", AuthzRule(sources=(AuthzSource(principals=("x",)),))),),
            UI,
            "/admin",
            False,
        ),
        ((_policy("allow-ui", "ALLOW", FROM_UI),), UI, "/admin", None),  # allowed only if the provider allows
        ((_policy("allow-ui", "ALLOW", FROM_UI),), ORDERS, "/admin", False),
    ],
)
def test_a_custom_selected_request_is_denied_when_the_other_policies_deny_it(
    others: tuple[AuthorizationPolicy, ...], caller: Caller, path: str, expected: bool | None
) -> None:
    """listener_waypoint.go buildWaypointHTTPFilters: CUSTOM filters first, then DENY and ALLOW."""
    applicable = _waypoint(_policy("ext", "CUSTOM", ADMIN), *others)
    assert decide(applicable, caller, Request(path=path)).allowed is expected


def test_custom_selects_names_the_requests_sent_to_the_provider() -> None:
    applicable = _waypoint(_policy("ext", "CUSTOM", ADMIN), _policy("deny-ui", "DENY", FROM_UI))
    assert custom_selects(applicable, UI, Request(path="/admin")) is True
    assert custom_selects(applicable, UI, Request(path="/")) is False
    assert custom_selects(_waypoint(_policy("deny-ui", "DENY", FROM_UI)), UI, Request(path="/admin")) is False


def test_a_dry_run_custom_policy_is_not_inert_at_a_waypoint() -> None:
    """builder.go buildHTTP: a dry-run CUSTOM policy's rules are the enforced rules (action DENY)
    of its provider's RBAC filter: the request it matches is denied when the provider is valid."""
    dry = _policy("ext", "CUSTOM", ADMIN, dry_run=True)
    applicable = _waypoint(dry)
    assert decide(applicable, UI, Request(path="/admin")).allowed is None
    assert decide(applicable, UI, Request(path="/")).allowed is True
    assert enforced_at_ztunnel(dry) is False
    # Selected only if its provider is valid (with an unknown one istiod leaves it out).
    assert custom_selects(applicable, UI, Request(path="/admin")) is None
    assert custom_selects(applicable, UI, Request(path="/")) is False


@pytest.mark.parametrize(
    ("action", "dry_run", "target", "expected"),
    [
        ("ALLOW", False, False, True),
        ("DENY", False, False, True),
        ("CUSTOM", False, False, False),  # ZtunnelAccepted False: "ztunnel does not support the CUSTOM action"
        ("AUDIT", False, False, False),
        ("ALLOW", True, False, False),
        ("DENY", False, True, False),  # targetRefs: the waypoint's
    ],
)
def test_enforced_at_ztunnel_follows_istiods_translation(
    action: str, dry_run: bool, target: bool, expected: bool
) -> None:
    refs = (TargetRef("Service", "catalog"),) if target else ()
    assert enforced_at_ztunnel(_policy("p", action, FROM_UI, dry_run=dry_run, target_refs=refs)) is expected


def test_ztunnel_ignores_custom_policies_fail_open() -> None:
    pod = Workload(ObjectMeta("Pod", "catalog-1", "default"), {"app": "catalog"}, {}, "catalog")
    custom = _policy("ext", "CUSTOM", AuthzRule(), selector={"app": "catalog"})
    applicable = at_ztunnel(
        pod, SnapshotIndex(Snapshot(workloads=(pod,), authorization_policies=(custom,))), "istio-system"
    )
    assert applicable.policies == ()
    assert "CUSTOM policies are ignored by ztunnel" in applicable.ignored[0].note


# --- the Envoy evaluator on istiod's CUSTOM shapes ---------------------------------------------

ADMIN_PERMISSION = {"urlPath": {"path": {"exact": "/admin"}}}
ANY_PRINCIPAL = {"any": True}


def _custom_chain(*, shadow: bool = True, dry_run_rules: bool = False, bad: bool = False) -> dict[str, Any]:
    policy = {"permissions": [ADMIN_PERMISSION], "principals": [ANY_PRINCIPAL]}
    name = "istio-ext-authz-ext-authz-ns[default]-policy[ext]-rule[0]"
    if bad:
        rbac: dict[str, Any] = {"rules": {"action": "DENY", "policies": {name + waypointxds.BAD_CUSTOM_SUFFIX: policy}}}
        filters = [{"name": waypointxds.RBAC_HTTP, "typedConfig": rbac}]
    else:
        rbac = {"shadowRulesStatPrefix": waypointxds.EXT_AUTHZ_STAT_PREFIX}
        if shadow:
            rbac["shadowRules"] = {"action": "DENY", "policies": {name: policy}}
        if dry_run_rules:
            rbac["rules"] = {"action": "DENY", "policies": {name: policy}}
        filters = [
            {"name": waypointxds.RBAC_HTTP, "typedConfig": rbac},
            {"name": "envoy.filters.http.ext_authz", "typedConfig": {}},
        ]
    return {"filters": [{"name": waypointxds.HCM, "typedConfig": {"httpFilters": filters}}]}


def test_evaluator_sends_only_the_shadow_rules_matches_to_the_provider() -> None:
    chain = _custom_chain()
    admin = waypointxds.chain_outcome(chain, waypointxds.Witness(UI.principal or "", path="/admin"))
    other = waypointxds.chain_outcome(chain, waypointxds.Witness(UI.principal or "", path="/"))
    assert (admin.external, admin.custom, admin.allowed) == (True, True, None)
    assert (other.external, other.custom, other.allowed) == (False, False, True)


def test_evaluator_denies_what_a_bad_custom_policy_or_a_dry_run_one_selects() -> None:
    for chain in (_custom_chain(bad=True), _custom_chain(shadow=False, dry_run_rules=True)):
        admin = waypointxds.chain_outcome(chain, waypointxds.Witness(UI.principal or "", path="/admin"))
        assert (admin.allowed, admin.custom, admin.custom_filters) == (False, True, True)
        other = waypointxds.chain_outcome(chain, waypointxds.Witness(UI.principal or "", path="/"))
        assert (other.allowed, other.custom) == (True, False)
