"""Runs every static check over a snapshot and a posture: the pure entry point of an audit.

``run_static_audit`` is what ``auditor check`` (offline or live) and, later, the daemon call; it
returns findings sorted by target, property and check id, so outputs are stable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from auditor.core.checks import allowlist, fixes, headers, nodes, strict_mtls, waypoint
from auditor.core.checks.catalog import (
    ALLOWED_ADMITTED,
    HEADERS_ENFORCED,
    INTRUDERS_REFUSED,
    PEER_AUTHENTICATION,
    SNAPSHOT_READ,
    TARGET_EXISTS,
)
from auditor.core.checks.context import AuditContext, finding
from auditor.core.checks.reach import route_for
from auditor.core.checks.revision import revision_findings, uncertain_revision
from auditor.core.istioversion import semantics_findings, semantics_of
from auditor.core.model import Evidence, Finding, Status
from auditor.core.posture import Posture, ProtectedService, ScopeEntry
from auditor.core.revision import every_revision
from auditor.core.snapshot import ReadProblem, Service, Snapshot, SnapshotIndex, selector_matches


def run_static_audit(
    snapshot: Snapshot, posture: Posture, header_values: Mapping[tuple[str, str], str | None]
) -> tuple[Finding, ...]:
    """Every static finding for ``snapshot`` under ``posture``, sorted by ``Finding.sort_key``.

    ``header_values``: ``(target, header name) -> value`` (None: the source had no value, the
    header finding is INCONCLUSIVE). Each read problem of the snapshot is an ERROR finding, and
    every check that reads an unreadable kind is "not evaluated" (never a pass). When the serving
    istiod revision is assumed and objects of another revision were left out, the input is judged
    a second time with them read, and a verdict that differs is INCONCLUSIVE
    (``checks.revision.uncertain_revision``). Never raises."""
    findings = _judged(snapshot, posture, header_values)
    if snapshot.revision.assumed and snapshot.ignored_config:
        findings = uncertain_revision(findings, _judged(every_revision(snapshot), posture, header_values), snapshot)
    return tuple(sorted((fixes.explained(f) for f in findings), key=Finding.sort_key))


def _judged(snapshot: Snapshot, posture: Posture, header_values: Mapping[tuple[str, str], str | None]) -> list[Finding]:
    ctx = AuditContext(index=SnapshotIndex(snapshot), posture=posture, header_values=header_values)
    findings = [_read_problem(problem) for problem in snapshot.problems]
    findings += snapshot_wide_findings(snapshot)
    findings += scoped_findings(ctx)
    findings += protected_findings(ctx, posture.protected)
    unreadable = {problem.kind: problem for problem in snapshot.problems}
    return [_not_evaluated(f, unreadable) if f.check.reads & unreadable.keys() else f for f in findings]


def snapshot_wide_findings(snapshot: Snapshot) -> tuple[Finding, ...]:
    """The findings about the whole snapshot, not one Service: each istiod whose version is not
    the model's (``audit.istio-semantics``) and each Istio config object the serving istiod does
    not read (``audit.config-revision``). Unsorted, not explained. Never raises."""
    return semantics_findings(semantics_of(snapshot)) + revision_findings(snapshot)


def scoped_findings(ctx: AuditContext) -> list[Finding]:
    """The strict-mTLS findings of every Service in scope (and of every protected one), plus an
    ERROR per scope entry that selects nothing; unsorted. They read only the Service's own
    namespace, the root namespace, Namespaces and Gateways (``auditor.core.incremental`` relies
    on it to re-audit one namespace from a snapshot of that namespace)."""
    in_scope, findings, not_strict = _scoped_services(ctx)
    for service in in_scope:
        findings.append(strict_mtls.check_captured(ctx, service))
        node = nodes.check_node_ztunnel(ctx, service)
        if node is not None:
            findings.append(node)
        waiver = not_strict.get(service.meta.key)
        if waiver is None:
            findings.append(strict_mtls.check_peer_authentication(ctx, service))
        else:
            findings.append(_strict_not_required(service, waiver))
    return findings


def protected_findings(ctx: AuditContext, protected: Iterable[ProtectedService]) -> list[Finding]:
    """The allow-list, waypoint and header findings of the given protected Services; unsorted.
    They read the whole snapshot (callers come from every namespace)."""
    findings: list[Finding] = []
    for service in protected:
        findings += _protected_findings(ctx, service)
    return findings


def _not_evaluated(original: Finding, unreadable: Mapping[str, ReadProblem]) -> Finding:
    """A check that needs a kind the reader could not read proves nothing either way."""
    missing = sorted(original.check.reads & unreadable.keys())
    needs = ", ".join(unreadable[kind].permission or kind for kind in missing)
    evidence = [Evidence(unreadable[kind].resource, "", "(unreadable)", unreadable[kind].message) for kind in missing]
    message = f"not evaluated: could not read {', '.join(missing)} (needs {needs})"
    return finding(original.check, original.target, Status.ERROR, message, evidence)


def _read_problem(problem: ReadProblem) -> Finding:
    evidence = [Evidence(problem.resource, "", problem.permission or "(unreadable)", problem.message)]
    needs = f" (needs {problem.permission})" if problem.permission else ""
    text = f"could not read {problem.resource}: {problem.message}{needs}"
    return finding(SNAPSHOT_READ, f"cluster/{problem.kind}", Status.ERROR, text, evidence)


def _strict_not_required(service: Service, entry: ScopeEntry) -> Finding:
    ev = Evidence(f"rules scope namespace {entry.namespace}", "requireStrictMtls", "false", "set in the rules")
    message = "not asserted: requireStrictMtls is false in every rules scope that selects this Service"
    return finding(PEER_AUTHENTICATION, service, Status.SKIPPED, message, [ev])


def _scoped_services(ctx: AuditContext) -> tuple[list[Service], list[Finding], dict[str, ScopeEntry]]:
    """Services in scope, plus every protected one (L7 promises need STRICT beside them, §4.6).

    The third value maps each Service whose STRICT mode is not promised (every scope entry that
    selects it says ``requireStrictMtls: false``, and it is not protected) to one such entry:
    it is still checked for capture, its PeerAuthentication mode is reported SKIPPED.
    """
    chosen: dict[str, Service] = {}
    empty: list[Finding] = []
    strict: set[str] = set()
    waived: dict[str, ScopeEntry] = {}
    for entry in ctx.posture.scope:
        # Only the entry's namespace can match: linear in Services, not scope entries x Services.
        candidates = ctx.index.services_by_ns.get(entry.namespace, ())
        matched = [s for s in candidates if _in_scope(entry, s)]
        if not matched:
            ev = Evidence(
                f"rules scope namespace {entry.namespace}",
                "",
                "(no match)",
                "selector, services and excludeServices applied",
            )
            empty.append(
                finding(
                    TARGET_EXISTS,
                    f"{entry.namespace}/*",
                    Status.ERROR,
                    "the scope selects no Service in the input",
                    [ev],
                )
            )
        chosen.update((s.meta.key, s) for s in matched)
        for selected in matched:
            if entry.require_strict_mtls:
                strict.add(selected.meta.key)
            else:
                waived.setdefault(selected.meta.key, entry)
    for protected in ctx.posture.protected:
        service = ctx.index.services.get(protected.target)
        if service is not None:
            chosen.setdefault(service.meta.key, service)
            strict.add(service.meta.key)
    not_strict = {key: entry for key, entry in waived.items() if key not in strict}
    return sorted(chosen.values(), key=lambda s: s.meta.key), empty, not_strict


def _in_scope(entry: ScopeEntry, service: Service) -> bool:
    if service.meta.namespace != entry.namespace or service.meta.name in entry.exclude_services:
        return False
    if entry.services is not None and service.meta.name not in entry.services:
        return False
    return entry.selector is None or selector_matches(entry.selector.match_labels, service.meta.labels)


def _protected_findings(ctx: AuditContext, protected: ProtectedService) -> list[Finding]:
    service = ctx.index.services.get(protected.target)
    if service is None:
        ev = Evidence(f"Service {protected.target}", "", "(not found)", "named in rules protectedServices")
        return [
            finding(
                TARGET_EXISTS,
                protected.target,
                Status.ERROR,
                "the protected Service is not in the input",
                [ev],
            )
        ]
    route = route_for(ctx, service)
    findings = [
        allowlist.check_intruders_refused(ctx, protected, service, route),
        allowlist.check_allowed_admitted(ctx, protected, service, route),
    ]
    if protected.waypoint is not None:
        findings += [
            waypoint.check_bound(ctx, protected, service),
            waypoint.check_gateway(ctx, protected, service),
        ]
    if protected.required_headers:
        findings.append(headers.check_headers_enforced(ctx, protected, service, route))
    if route.unknown:
        findings = [_unknown_backends(f, route.unknown) if f.check.id in _AT_BACKENDS else f for f in findings]
    return findings


# The promises decided at the Service's backends (their ztunnel, their waypoint): an unknown backend
# leaves them unproven. Waypoint binding is decided by the Service's and Gateway's own config.
_AT_BACKENDS = frozenset({ALLOWED_ADMITTED.id, INTRUDERS_REFUSED.id, HEADERS_ENFORCED.id})


def _unknown_backends(found: Finding, unknown: tuple[str, ...]) -> Finding:
    """A PASS becomes INCONCLUSIVE when an EndpointSlice of the Service names an endpoint that is no Pod of
    the input: traffic reaching it meets an enforcement point nothing in the snapshot describes."""
    if found.status is not Status.PASS:
        return found
    shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    ev = Evidence(f"EndpointSlices of Service {found.target}", "endpoints[].addresses", shown, "no Pod of the input")
    message = f"unknown backend(s) from the Service's EndpointSlices, no Pod of the input: {shown}; {found.message}"
    return dataclasses.replace(found, status=Status.INCONCLUSIVE, message=message, evidence=(*found.evidence, ev))
