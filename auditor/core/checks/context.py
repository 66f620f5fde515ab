"""What every check receives: the indexed snapshot, the posture and resolved header values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from auditor.core.model import NO_FIX, CheckMeta, Evidence, Finding, Fix, Status
from auditor.core.posture import Posture
from auditor.core.snapshot import Service, SnapshotIndex


@dataclass(frozen=True, slots=True)
class AuditContext:
    """What every check receives: the ``index`` of the snapshot, the ``posture``, the resolved ``header_values``
    (``(target, header name) -> value``, None when unresolved) and, when set, ``reads`` collecting the namespaces
    whose callers the checks consulted (incremental audit, #16).
    """

    index: SnapshotIndex
    posture: Posture
    # (target, header name) -> value; None when the value could not be resolved (e.g. a Secret
    # that offline manifests do not contain). Values are never rendered into findings.
    header_values: Mapping[tuple[str, str], str | None]
    # When set, the namespaces whose callers (workloads, accounts) the checks consulted are added:
    # the incremental audit re-evaluates a protected Service when one of those changes (#16).
    reads: set[str] | None = None

    @property
    def root_namespace(self) -> str:
        """Istio's root namespace from the posture (``mesh.rootNamespace``)."""
        return self.posture.mesh.root_namespace

    @property
    def trust_domain(self) -> str:
        """The mesh trust domain from the posture (``mesh.trustDomain``)."""
        return self.posture.mesh.trust_domain


def finding(
    meta: CheckMeta,
    service: Service | str,
    status: Status,
    message: str,
    evidence: list[Evidence] | tuple[Evidence, ...] = (),
    *,
    fix: Fix = NO_FIX,
) -> Finding:
    """A ``Finding`` of ``meta`` on ``service`` (a Service, or a ``"namespace/name"`` target), with duplicate
    evidence removed (first kept). Never raises.
    """
    target = service if isinstance(service, str) else service.meta.key
    return Finding(check=meta, target=target, status=status, message=message, evidence=_unique(evidence), fix=fix)


def _unique(evidence: list[Evidence] | tuple[Evidence, ...]) -> tuple[Evidence, ...]:
    return tuple(dict.fromkeys(evidence))


def worst(statuses: list[Status]) -> Status:
    """FAIL beats INCONCLUSIVE beats PASS: one proven violation is enough to fail."""
    for status in (Status.FAIL, Status.ERROR, Status.INCONCLUSIVE):
        if status in statuses:
            return status
    return Status.PASS
