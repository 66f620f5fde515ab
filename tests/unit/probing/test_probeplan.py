"""Probe plans: which identity sends which request, expecting what, and where header values go."""

from __future__ import annotations

from typing import Any

from auditor.core.probing.probeplan import AGAIN, NotPlanned, PlanOptions, Role, plan_probes, service_url
from probes.wire import Outcome
from tests.unit.probing.builders import (
    CATALOG,
    RUN,
    TOKEN,
    catalog_rules,
    header_values,
    make_plan,
    posture,
    snapshot,
)


def _expectations(rules_service: dict[str, Any]) -> dict[str, Outcome]:
    plan = make_plan(posture(rules_service))
    return {r.id: r.expect for b in plan.batches for r in b.requests}


def test_waypoint_service_with_control_plans_every_identity_and_header() -> None:
    """Outside: l4; intruder with headers: l7 (waypoint); control: allowed, and l7 without each header."""
    expectations = _expectations(catalog_rules(headers=("x-auth-token", "x-tenant")))
    assert expectations == {
        "default/catalog:outside:plaintext": Outcome.L4_DENIED,
        "default/catalog:outside:again:plaintext": Outcome.L4_DENIED,
        "default/catalog:intruder:with-headers": Outcome.L7_DENIED,
        "default/catalog:control:with-headers": Outcome.ALLOWED,
        "default/catalog:control:again:with-headers": Outcome.ALLOWED,
        "default/catalog:control:without:x-auth-token": Outcome.L7_DENIED,
        "default/catalog:control:without:x-tenant": Outcome.L7_DENIED,
        "default/catalog:control:near-miss:x-auth-token": Outcome.L7_DENIED,
        "default/catalog:control:near-miss:x-tenant": Outcome.L7_DENIED,
    }


def test_intruder_expects_ztunnel_denial_without_a_waypoint() -> None:
    """No waypoint in the rules: the intruder must be refused at L4 by ztunnel (semantics §1.1)."""
    expectations = _expectations(catalog_rules(waypoint=False))
    assert expectations["default/catalog:intruder:with-headers"] is Outcome.L4_DENIED
    assert "default/catalog:control:with-headers" in expectations


def test_each_identity_is_one_batch_in_its_namespace_as_its_service_account() -> None:
    """Three batches: outside (not in mesh), intruder (probe namespace), control (the Service's ns as ui)."""
    plan = make_plan(posture(catalog_rules()))
    identities = {
        (b.identity.role, b.identity.namespace, b.identity.service_account, b.identity.in_mesh) for b in plan.batches
    }
    assert identities == {
        (Role.OUTSIDE, "mesh-auditor-outside", "mesh-auditor-probe", False),
        (Role.INTRUDER, "mesh-auditor-probes", "mesh-auditor-probe", True),
        (Role.CONTROL, "default", "ui", True),
    }


def test_two_services_share_one_pod_per_identity() -> None:
    """Requests of one identity for several Services are batched into one pod."""
    orders = {**catalog_rules(), "name": "orders"}
    rules = posture(catalog_rules(), orders)
    plan = plan_probes(
        rules, snapshot(CATALOG, "default/orders"), header_values(rules), RUN, PlanOptions(control_allowed=True)
    )
    assert len(plan.batches) == 3
    outside = next(b for b in plan.batches if b.identity.role is Role.OUTSIDE)
    assert [r.id for r in outside.requests] == [
        "default/catalog:outside:plaintext",
        "default/catalog:outside:again:plaintext",
        "default/orders:outside:plaintext",
        "default/orders:outside:again:plaintext",
    ]


def test_header_values_reach_only_the_wire_requests() -> None:
    """The intruder and control carry the value; outside never does; no id or repr contains it."""
    plan = make_plan(posture(catalog_rules()))
    sent = {r.id: r.wire.headers for b in plan.batches for r in b.requests}
    assert sent["default/catalog:intruder:with-headers"] == {"x-auth-token": TOKEN}
    assert sent["default/catalog:control:with-headers"] == {"x-auth-token": TOKEN}
    assert sent["default/catalog:control:without:x-auth-token"] == {}
    near_miss = sent["default/catalog:control:near-miss:x-auth-token"]["x-auth-token"]
    assert near_miss != TOKEN
    assert near_miss.startswith(TOKEN)  # §8.2: shares the value as a prefix
    assert sent["default/catalog:outside:plaintext"] == {}
    assert TOKEN not in repr(plan.batches)
    assert (
        TOKEN
        in next(b for b in plan.batches if b.identity.role is Role.INTRUDER).wire_plan(RUN, None).model_dump_json()
    )


def test_control_needs_both_the_rules_and_the_settings_switch() -> None:
    """Rules enabled but settings off, or the reverse: no control request, and the reason is recorded."""
    for service, allowed, reason in (
        (catalog_rules(control=True), False, "AUDITOR_PROBES__CONTROL_ENABLED"),
        (catalog_rules(control=False), True, "control.enabled"),
    ):
        plan = make_plan(posture(service), control_allowed=allowed)
        assert all(b.identity.role is not Role.CONTROL for b in plan.batches)
        skipped = plan.not_planned_for(CATALOG, Role.CONTROL)
        assert skipped is not None
        assert reason in skipped.reason


def test_control_account_defaults_to_an_allowed_principal_in_the_services_namespace() -> None:
    """Without control.serviceAccount the first allowed principal of the Service's namespace is used."""
    service = catalog_rules()
    service["control"] = {"enabled": True}
    plan = make_plan(posture(service))
    control = next(b for b in plan.batches if b.identity.role is Role.CONTROL)
    assert control.identity.service_account == "ui"


def test_unresolved_header_value_leaves_intruder_and_control_out() -> None:
    """Without the value the in-mesh requests would test the header, not the identity: not planned."""
    rules = posture(catalog_rules())
    plan = plan_probes(
        rules, snapshot(CATALOG), {(CATALOG, "x-auth-token"): None}, RUN, PlanOptions(control_allowed=True)
    )
    assert [b.identity.role for b in plan.batches] == [Role.OUTSIDE]
    skipped = plan.not_planned_for(CATALOG, Role.INTRUDER)
    assert skipped is not None
    assert "x-auth-token" in skipped.reason


def test_missing_service_or_port_plans_nothing_and_says_why() -> None:
    """A Service absent from the snapshot, or without the probe port, gets no requests."""
    rules = posture(catalog_rules())
    absent = plan_probes(rules, snapshot("default/other"), header_values(rules), RUN, PlanOptions())
    wrong_port = plan_probes(rules, snapshot(CATALOG, port=8080), header_values(rules), RUN, PlanOptions())
    assert absent.batches == wrong_port.batches == ()
    assert "not in the snapshot" in (absent.not_planned_for(CATALOG, Role.OUTSIDE) or _none()).reason
    assert "port 80" in (wrong_port.not_planned_for(CATALOG, Role.OUTSIDE) or _none()).reason


def _none() -> NotPlanned:
    raise AssertionError("expected a NotPlanned entry")


def test_service_url_is_the_service_name_unless_overridden_per_role() -> None:
    """The default URL addresses the Service by DNS name; a role-specific override beats a plain one."""
    protected = posture(catalog_rules()).protected[0]
    overrides = {CATALOG: "http://127.0.0.1:1000/", "outside:default/catalog": "http://127.0.0.2:2000"}
    assert (
        service_url(protected, Role.CONTROL, PlanOptions())
        == "http://catalog.default.svc.cluster.local:80/catalog/tags"
    )
    assert (
        service_url(protected, Role.CONTROL, PlanOptions(url_overrides=overrides))
        == "http://127.0.0.1:1000/catalog/tags"
    )
    assert (
        service_url(protected, Role.OUTSIDE, PlanOptions(url_overrides=overrides))
        == "http://127.0.0.2:2000/catalog/tags"
    )


def test_large_batches_split_under_the_plan_size_limit() -> None:
    """Many Services: one identity's requests spread over numbered parts, none over the limit."""
    names = [f"svc{i}" for i in range(40)]
    rules = posture(*({**catalog_rules(waypoint=False), "name": n} for n in names))
    options = PlanOptions(max_plan_bytes=2048)
    plan = plan_probes(rules, snapshot(*(f"default/{n}" for n in names)), {}, RUN, options)
    outside = [b for b in plan.batches if b.identity.role is Role.OUTSIDE]
    assert len(outside) > 1
    assert [b.part for b in outside] == list(range(1, len(outside) + 1))
    assert all(len(b.wire_plan(RUN, None).model_dump_json()) <= 2048 for b in plan.batches)
    firsts = [r for b in outside for r in b.requests if not r.variant.startswith(AGAIN)]
    assert sorted(r.target for r in firsts) == sorted(f"default/{n}" for n in names)
    # Each confirmation stays in the part of the request it follows (``after`` names one of its plan).
    for batch in plan.batches:
        ids = [r.id for r in batch.requests]
        assert all(r.wire.after in ids[:i] for i, r in enumerate(batch.requests) if r.wire.after is not None)
