"""The witnesses a static audit decides, as a list: who sends what to which Service, and the model's verdict.

Role: the static checks (``allowlist``, ``headers``) build callers and requests (``witnesses``) and
decide each along the Service's route (``reach``); this module replays the same construction and
lists every (promise, check, target, caller, request, expected outcome) so that something outside
the auditor (the lab's ``scripts/lab verify``, issue #12) can send each one as real traffic and
compare. Pure: snapshot + posture + resolved header values in, ``Witness`` values out.

Which witnesses (the same as the checks use):

- ``principal-allowlist.allowed-admitted``: each allowed identity, as every kind of client its
  workloads are, on the probe request with the required headers; expected allowed.
- ``principal-allowlist.intruders-refused``: every intruder (``witnesses.intruders``) on every
  request variant (``witnesses.request_variants``) with the required headers.
- ``required-headers.enforced``: the allowed callers and the snapshot's waypoint-skipping clients,
  each request variant without a required header or with each wrong value
  (``witnesses.header_witnesses``), plus the allowed callers' control with the headers.

``expected`` is the model's verdict over the Service's backends: "allowed" or "denied" when every
backend agrees, "unknown" when the model cannot tell or the backends differ (a Service-addressed
request lands on one of them). Header values are in ``headers`` (they must be sent); ``label``
names the variant without showing a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditor.core.authz import Caller, Request
from auditor.core.checks.catalog import ALLOWED_ADMITTED, HEADERS_ENFORCED, INTRUDERS_REFUSED
from auditor.core.checks.context import AuditContext
from auditor.core.checks.reach import Reach, Route, probe_request, reach, route_for
from auditor.core.checks.witnesses import (
    bypass_callers,
    callers_as,
    header_witnesses,
    intruders,
    request_variants,
    required_headers,
)
from auditor.core.model import CheckMeta
from auditor.core.posture import Posture, ProtectedService
from auditor.core.snapshot import Service, Snapshot, SnapshotIndex

ALLOWED = "allowed"
DENIED = "denied"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Witness:
    """One request the static audit decided.

    ``promise``/``check``: the property and check id; ``target``: ``<namespace>/<name>`` of the
    protected Service; ``caller``: the SPIFFE principal without ``spiffe://`` (None: plaintext);
    ``kind``: the client kind (``mesh.ClientKind`` value); ``caller_label``: the caller in words;
    ``method``/``path``/``host``/``port``: the request (``port`` is the Service port);
    ``headers``: name -> value to send (values may be secrets: never render them); ``label``:
    which variant ("control", "without x-auth-token", "with a near miss ... in x-auth-token",
    "intruder"); ``expected``: ``ALLOWED``, ``DENIED`` or ``UNKNOWN``; ``reason``: the model's
    explanation (hop by hop, from the first backend that decided it).
    """

    promise: str
    check: str
    target: str
    caller: str | None
    kind: str
    caller_label: str
    method: str
    path: str
    host: str
    port: int
    label: str
    expected: str
    reason: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def as_dict(self, *, with_values: bool = False) -> dict[str, object]:
        """The witness as JSON-ready fields; header values only when ``with_values`` (else names). Never raises."""
        return {
            "promise": self.promise,
            "check": self.check,
            "target": self.target,
            "caller": self.caller,
            "kind": self.kind,
            "caller_label": self.caller_label,
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "port": self.port,
            "label": self.label,
            "expected": self.expected,
            "reason": self.reason,
            "headers": dict(self.headers) if with_values else sorted(name for name, _ in self.headers),
        }


def plan_witnesses(
    snapshot: Snapshot, posture: Posture, header_values: Mapping[tuple[str, str], str | None]
) -> list[Witness]:
    """Every witness the static checks decide for the posture's protected Services, in a stable order.

    A protected Service missing from the snapshot, without backends, or with an unresolved
    required header value has no witnesses (its checks are ERROR/INCONCLUSIVE). Never raises.
    """
    ctx = AuditContext(index=SnapshotIndex(snapshot), posture=posture, header_values=header_values)
    found: list[Witness] = []
    for protected in posture.protected:
        service = ctx.index.services.get(protected.target)
        if service is None:
            continue
        route = route_for(ctx, service)
        headers, unknown = required_headers(ctx, protected)
        if not route.backends or unknown:
            continue
        found += _allowed(ctx, protected, service, route, headers)
        found += _intruders(ctx, protected, service, route, headers)
        if protected.required_headers:
            found += _headers(ctx, protected, service, route, headers)
    return list(dict.fromkeys(found))


def _allowed(
    ctx: AuditContext, protected: ProtectedService, service: Service, route: Route, headers: dict[str, str]
) -> list[Witness]:
    request = probe_request(protected, service, headers)
    return [
        _witness(ctx, route, protected, check=ALLOWED_ADMITTED, caller=caller, request=request, label="control")
        for principal in protected.allowed_principals
        for caller in callers_as(ctx, principal)
    ]


def _intruders(
    ctx: AuditContext, protected: ProtectedService, service: Service, route: Route, headers: dict[str, str]
) -> list[Witness]:
    variants = request_variants(ctx, protected, service, route, headers)
    return [
        _witness(ctx, route, protected, check=INTRUDERS_REFUSED, caller=caller, request=request, label="intruder")
        for caller in intruders(ctx, protected, route)
        for request in variants
    ]


def _headers(
    ctx: AuditContext, protected: ProtectedService, service: Service, route: Route, headers: dict[str, str]
) -> list[Witness]:
    check = HEADERS_ENFORCED
    allowed = [c for p in protected.allowed_principals for c in callers_as(ctx, p)]
    control = probe_request(protected, service, headers)
    found = [_witness(ctx, route, protected, check=check, caller=c, request=control, label="control") for c in allowed]
    for caller in dict.fromkeys([*allowed, *bypass_callers(ctx)]):
        for name, value in headers.items():
            missing = {k: v for k, v in headers.items() if k != name}
            degraded = [(f"without {name}", missing)]
            degraded += [
                (f"with {label} in {name}", {**missing, name: wrong})
                for wrong, label in header_witnesses(route, name, value)
            ]
            for label, variant in degraded:
                for request in request_variants(ctx, protected, service, route, variant):
                    found.append(
                        _witness(ctx, route, protected, check=check, caller=caller, request=request, label=label)
                    )
    return found


def _witness(
    ctx: AuditContext,
    route: Route,
    protected: ProtectedService,
    *,
    check: CheckMeta,
    caller: Caller,
    request: Request,
    label: str,
) -> Witness:
    expected, reason = _verdict(reach(ctx, route, caller, request))
    return Witness(
        promise=str(check.property),
        check=check.id,
        target=protected.target,
        caller=caller.principal,
        kind=caller.kind.value,
        caller_label=caller.describe(),
        method=request.method,
        path=request.path,
        host=request.host,
        port=request.port,
        label=label,
        expected=expected,
        reason=reason,
        headers=tuple(sorted(request.headers.items())),
    )


def _verdict(reaches: tuple[Reach, ...]) -> tuple[str, str]:
    values = {item.allowed for item in reaches}
    if len(values) != 1 or None in values:
        return UNKNOWN, " | ".join(f"{r.backend.workload.meta.ref}: {r.explain()}" for r in reaches)
    return (ALLOWED if values == {True} else DENIED), reaches[0].explain()
