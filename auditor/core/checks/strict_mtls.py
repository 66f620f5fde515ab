"""strict-mtls: a client outside the mesh is refused by the Service's workloads.

Two checks per in-scope Service: every backing workload is captured (§2), and the effective
PeerAuthentication mode on every target port is STRICT (§3). Istio's own Services (waypoints,
gateways, istiod, ztunnel, istio-cni) are ``skipped`` with the reason (§10).
"""

from __future__ import annotations

from auditor.core.checks import fixes
from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION
from auditor.core.checks.context import AuditContext, finding
from auditor.core.mesh import CaptureState, MtlsDecision, capture_of, effective_mtls, istio_service
from auditor.core.model import CheckMeta, Evidence, Finding, Status
from auditor.core.snapshot import Service, Workload

_SHOWN = 5  # unknown endpoints named in a message


def check_captured(ctx: AuditContext, service: Service) -> Finding:
    """``strict-mtls.captured``: is ``service``'s every pod in ambient (ztunnel) capture? One finding."""
    infra = _istio_own(service, ctx, CAPTURED)
    if infra:
        return infra
    workloads = ctx.index.workloads_for(service)
    missing = _no_workloads(ctx, service, workloads, CAPTURED.id)
    if missing:
        return missing
    captures = [(w, capture_of(w, ctx.index)) for w in workloads]
    evidence = [ev for _, c in captures for ev in c.evidence]
    out = [f"{w.meta.ref}: {c.reason}" for w, c in captures if c.state is CaptureState.NOT_CAPTURED]
    if out:
        message = "not captured by ztunnel: " + "; ".join(out)
        return finding(CAPTURED, service, Status.FAIL, message, evidence, fix=fixes.capture_fix(ctx, captures))
    unknown = _unknown(ctx, service, CAPTURED)
    if unknown:
        return unknown
    pending = [w.meta.ref for w, c in captures if c.state is CaptureState.PENDING]
    if pending:
        return finding(
            CAPTURED,
            service,
            Status.INCONCLUSIVE,
            "capture pending for " + ", ".join(pending),
            evidence,
        )
    return finding(CAPTURED, service, Status.PASS, _captured_message(ctx, workloads), evidence)


def _captured_message(ctx: AuditContext, workloads: tuple[Workload, ...]) -> str:
    """What a capture PASS proves: labels read from config, or istio-cni's own report on live pods."""
    names = ", ".join(w.meta.ref for w in workloads)
    if all(w.is_pod for w in workloads) and ctx.index.snapshot.live:
        return f"istio-cni reports every pod behind the Service redirected to ztunnel: {names}"
    return (
        f"labelled for ambient capture (pod templates and namespace labels, read from config; "
        f"istio-cni's redirection is not observed offline): {names}"
    )


def _istio_own(service: Service, ctx: AuditContext, meta: CheckMeta) -> Finding | None:
    """Istio's own Services (waypoints, gateways, istiod, ztunnel, istio-cni) are not applications (§10)."""
    evidence = istio_service(service, ctx.index)
    if evidence is None:
        return None
    message = (
        "Istio's own infrastructure, not an application Service: its pods are outside ztunnel's capture by "
        f"design ({evidence.note or evidence.field})"
    )
    return finding(meta, service, Status.SKIPPED, message, [evidence])


def _no_workloads(
    ctx: AuditContext, service: Service, workloads: tuple[Workload, ...], check_id: str
) -> Finding | None:
    meta = CAPTURED if check_id == CAPTURED.id else PEER_AUTHENTICATION
    backends = ctx.index.backends(service)
    if backends.from_slices:
        if workloads:
            return None
        return _unknown(ctx, service, meta) or finding(
            meta,
            service,
            Status.INCONCLUSIVE,
            "no EndpointSlice entry of the Service names a Pod: nothing proves the promise",
            [_slices_evidence(ctx, service, "no serving entry names a Pod")],
        )
    if service.selector is None:
        ev = Evidence(service.meta.ref, "spec.selector", "(absent)")
        return finding(
            meta,
            service,
            Status.SKIPPED,
            "the Service has no selector: no workloads to audit",
            [ev],
        )
    if not workloads:
        shown = ",".join(f"{k}={v}" for k, v in sorted(service.selector.items()))
        ev = Evidence(service.meta.ref, "spec.selector", shown, "no Pod or pod template in the input matches")
        return finding(
            meta,
            service,
            Status.INCONCLUSIVE,
            "no workload matches the Service selector: nothing proves the promise",
            [ev],
        )
    return None


def _unknown(ctx: AuditContext, service: Service, meta: CheckMeta) -> Finding | None:
    """INCONCLUSIVE when an EndpointSlice of ``service`` sends traffic to an address that is no Pod of the
    input: its capture and policies cannot be judged, so the promise is not proven (never a pass)."""
    unknown = ctx.index.backends(service).unknown
    if not unknown:
        return None
    shown = ", ".join(unknown[:_SHOWN]) + (f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else "")
    return finding(
        meta,
        service,
        Status.INCONCLUSIVE,
        f"unknown backend(s) from the Service's EndpointSlices, no Pod of the input: {shown}",
        [_slices_evidence(ctx, service, "an endpoint that names no Pod of the input cannot be judged")],
    )


def _slices_evidence(ctx: AuditContext, service: Service, note: str) -> Evidence:
    names = ", ".join(s.meta.name for s in ctx.index.slices_for(service))
    return Evidence(f"EndpointSlices of {service.meta.ref}", "endpoints[].targetRef", names, note)


def check_peer_authentication(ctx: AuditContext, service: Service) -> Finding:
    """``strict-mtls.peer-authentication``: does the effective PeerAuthentication (workload, namespace,
    root namespace; port-level overrides) make ``service``'s ports refuse plaintext? One finding."""
    infra = _istio_own(service, ctx, PEER_AUTHENTICATION)
    if infra:
        return infra
    workloads = ctx.index.workloads_for(service)
    missing = _no_workloads(ctx, service, workloads, PEER_AUTHENTICATION.id)
    if missing:
        return missing
    failures: list[str] = []
    failing: list[tuple[Workload, int, MtlsDecision]] = []
    unclear: list[str] = []
    passed: list[str] = []
    evidence: list[Evidence] = []
    for workload in workloads:
        for port in _target_ports(service, workload):
            if isinstance(port, str):
                unclear.append(f"{workload.meta.ref}: named target port {port!r} has no container port")
                continue
            decision = effective_mtls(workload, port, ctx.index, ctx.root_namespace)
            evidence += decision.evidence
            label = f"{workload.meta.ref} port {port}"
            if decision.ambiguous:
                unclear.append(f"{label}: {decision.ambiguity}")
            elif not decision.refuses_plaintext:
                failures.append(f"{label} accepts plaintext (effective mode {decision.mode})")
                failing.append((workload, port, decision))
            else:
                passed.append(f"{label}")
    if not passed and not failures and not unclear:
        ev = Evidence(service.meta.ref, "spec.ports", "(none)")
        return finding(
            PEER_AUTHENTICATION,
            service,
            Status.INCONCLUSIVE,
            "the Service has no ports to audit",
            [ev],
        )
    if failures:
        fix = fixes.mtls_fix(ctx, failing)
        return finding(PEER_AUTHENTICATION, service, Status.FAIL, "; ".join(failures), evidence, fix=fix)
    unknown = _unknown(ctx, service, PEER_AUTHENTICATION)
    if unknown:
        return unknown
    if unclear:
        return finding(PEER_AUTHENTICATION, service, Status.INCONCLUSIVE, "; ".join(unclear), evidence)
    return finding(
        PEER_AUTHENTICATION,
        service,
        Status.PASS,
        "config: the effective PeerAuthentication mode is STRICT on the Service's target ports ("
        + ", ".join(passed)
        + "); it refuses plaintext where ztunnel captures the pods (strict-mtls.captured)",
        evidence,
    )


def _target_ports(service: Service, workload: Workload) -> list[int | str]:
    """Container ports the Service targets: portLevelMtls keys are these, not Service ports (§3)."""
    ports: list[int | str] = []
    for port in service.ports:
        target = port.target_port
        if isinstance(target, str):
            resolved = workload.container_port(target)
            target = resolved if resolved is not None else target
        if target not in ports:
            ports.append(target)
    return ports
