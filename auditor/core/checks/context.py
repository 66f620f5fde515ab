"""What every check receives: the indexed snapshot, the posture and resolved header values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from auditor.core.model import NO_FIX, CheckMeta, Evidence, Finding, Fix, Status
from auditor.core.posture import Posture
from auditor.core.snapshot import Service, SnapshotIndex


@dataclass(frozen=True, slots=True)
class AuditContext:
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
        return self.posture.mesh.root_namespace

    @property
    def trust_domain(self) -> str:
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
