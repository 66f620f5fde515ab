"""waypoint-enrollment: the Service's traffic really goes through the waypoint it must use.

Label resolution (Service, then namespace; ``none``; ``use-waypoint-namespace``), then the
Gateway itself as istiod binds it (``mesh.waypoint_problems``): class, traffic type, attachment
through the 15008/HBONE listener and, when the snapshot has status, ``status.addresses`` /
``istio.io/WaypointBound``; then whether ztunnel can reach the bound waypoint on port 15008
(``mesh.waypoint_unreachable``) (§2, §4.7).
"""

from __future__ import annotations

from auditor.core.checks import fixes
from auditor.core.checks.catalog import WAYPOINT_BOUND, WAYPOINT_GATEWAY
from auditor.core.checks.context import AuditContext, finding
from auditor.core.mesh import (
    HBONE_PORT,
    condition,
    hbone_listener,
    waypoint_binding,
    waypoint_problems,
    waypoint_unreachable,
)
from auditor.core.model import Evidence, Finding, Status
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import Service


def check_bound(ctx: AuditContext, protected: ProtectedService, service: Service) -> Finding:
    """``waypoint-enrollment``: is ``service`` bound to the waypoint the posture names (Istio's
    label precedence: Service, then namespace)? One finding."""
    binding = waypoint_binding(service, ctx.index)
    expected = f"{protected.waypoint_namespace}/{protected.waypoint.name if protected.waypoint else ''}"
    evidence = list(binding.evidence)
    if binding.exempt:
        return finding(
            WAYPOINT_BOUND,
            service,
            Status.FAIL,
            f"the Service is istiod's own for a gateway and never uses a waypoint; expected {expected}",
            evidence,
        )
    if binding.opted_out:
        return finding(
            WAYPOINT_BOUND,
            service,
            Status.FAIL,
            f"the Service opts out of waypoints (use-waypoint: none); expected {expected}",
            evidence,
            fix=fixes.bound_fix(ctx, protected, service),
        )
    if binding.name is None:
        return finding(
            WAYPOINT_BOUND,
            service,
            Status.FAIL,
            f"no istio.io/use-waypoint label on the Service or its namespace; expected {expected}",
            evidence,
            fix=fixes.bound_fix(ctx, protected, service),
        )
    actual = f"{binding.namespace}/{binding.name}"
    if actual != expected:
        message = (
            f"labelled for waypoint {actual}, expected {expected}: "
            "traffic goes elsewhere or, for a typo, straight to the pods (§4.7)"
        )
        fix = fixes.bound_fix(ctx, protected, service)
        return finding(WAYPOINT_BOUND, service, Status.FAIL, message, evidence, fix=fix)
    bound = condition(service.conditions, "istio.io/WaypointBound")
    if bound is not None and bound.status != "True":
        evidence.append(
            Evidence(
                service.meta.ref,
                "status.conditions[istio.io/WaypointBound]",
                f"{bound.status} ({bound.reason})",
                bound.message,
            )
        )
        return finding(
            WAYPOINT_BOUND,
            service,
            Status.FAIL,
            f"labelled for {expected} but Istio reports WaypointBound={bound.status} ({bound.reason})",
            evidence,
            fix=fixes.bound_fix(ctx, protected, service),
        )
    if bound is None:
        evidence.append(
            Evidence(
                service.meta.ref,
                "status.conditions[istio.io/WaypointBound]",
                "(absent)",
                "no status in the input; labels decided",
            )
        )
    source = (
        "the Service's" if binding.evidence and binding.evidence[0].object == service.meta.ref else "its namespace's"
    )
    status = (
        "Istio reports WaypointBound=True"
        if bound is not None
        else "Istio's WaypointBound status is not in the input: labels decided"
    )
    message = f"labelled for waypoint {expected} ({source} istio.io/use-waypoint label); {status}"
    return finding(WAYPOINT_BOUND, service, Status.PASS, message, evidence)


def check_gateway(ctx: AuditContext, protected: ProtectedService, service: Service) -> Finding:
    """``waypoint-enrollment``: does the named waypoint exist as a ready Gateway of class
    ``istio-waypoint`` that serves Service traffic? One finding."""
    waypoint = protected.waypoint
    assert waypoint is not None  # noqa: S101 - only called for protected services with a waypoint
    key = f"{protected.waypoint_namespace}/{waypoint.name}"
    gateway = ctx.index.gateways.get(key)
    if gateway is None:
        ev = Evidence(
            f"Gateway {key}",
            "",
            "(not found)",
            "a missing waypoint is skipped: traffic goes straight to the pods (§4.7)",
        )
        fix = fixes.gateway_fix(ctx, protected, service)
        return finding(WAYPOINT_GATEWAY, service, Status.FAIL, f"waypoint Gateway {key} does not exist", [ev], fix=fix)
    problems = waypoint_problems(gateway, service, ctx.index)
    unreachable = None if problems else waypoint_unreachable(gateway, ctx.index)
    problems += (unreachable,) if unreachable else ()
    evidence = [p.evidence for p in problems]
    if problems:
        message = "; ".join(p.message for p in problems)
        fix = fixes.gateway_fix(ctx, protected, service)
        return finding(WAYPOINT_GATEWAY, service, Status.FAIL, message, evidence, fix=fix)
    evidence.append(Evidence(gateway.meta.ref, "spec.gatewayClassName", gateway.class_name))
    extra = [lst for lst in gateway.listeners if lst is not hbone_listener(gateway)]
    evidence.append(
        Evidence(
            gateway.meta.ref,
            "spec.listeners",
            ", ".join(f"{lst.name}:{lst.port}/{lst.protocol}" for lst in gateway.listeners),
            "istiod binds through 15008/HBONE; other listeners are not Accepted but do not unbind it (§2)"
            if extra
            else "",
        )
    )
    if not gateway.has_status:
        evidence.append(
            Evidence(
                gateway.meta.ref,
                "status",
                "(absent)",
                "no status in the input; readiness not shown",
            )
        )
    ready = "Programmed, with an address" if gateway.has_status else "readiness not shown: no status in the input"
    message = (
        f"{gateway.meta.ref} is a valid waypoint for Service traffic (class {gateway.class_name}, one HBONE "
        f"listener on {HBONE_PORT}, serves this Service's namespace); {ready}"
    )
    return finding(WAYPOINT_GATEWAY, service, Status.PASS, message, evidence)
