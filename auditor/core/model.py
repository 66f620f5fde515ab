"""Findings, statuses and check metadata: the renderer-neutral vocabulary of every audit.

Reports, the CLI and (later) Slack render these; nothing here knows how it will be shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Outcome of one check on one target. Only PASS means "proven"."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


class Property(StrEnum):
    """The zero-trust promises the auditor proves (plus the audit's own health)."""

    STRICT_MTLS = "strict-mtls"
    PRINCIPAL_ALLOWLIST = "principal-allowlist"
    WAYPOINT_ENROLLMENT = "waypoint-enrollment"
    REQUIRED_HEADERS = "required-headers"
    AUDIT_INTEGRITY = "audit-integrity"


class Severity(StrEnum):
    """How much a failed finding matters: critical, high, medium or low."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Method(StrEnum):
    """How a finding was established: by reading config, or by sending traffic."""

    STATIC = "static"
    PROBE = "probe"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One fact that decided a finding: which object, which field, what it said."""

    object: str
    field: str = ""
    value: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        """``{"object", "field", "value", "note"}`` (all strings), as the JSON output carries it. Never raises."""
        return {"object": self.object, "field": self.field, "value": self.value, "note": self.note}


@dataclass(frozen=True, slots=True)
class CheckMeta:
    """The human story of a check, shared by every renderer. Ids are stable and never reused."""

    id: str
    property: Property
    title: str
    severity: Severity
    protects: str
    remediation: str
    # Unused by renderers: every finding carries its own fix (``Finding.fix``), filled in from its
    # objects. Kept so a stored run or a new catalog entry still builds.
    remediation_yaml: str = ""
    references: tuple[str, ...] = ()
    # What a finding's own fix holds, or why findings of this check have none (docs/checks.md).
    fix_summary: str = ""
    # Kinds the check reads; when one of them could not be read, the check is not run and
    # reports ERROR instead (a partial snapshot must produce neither a pass nor a false fail).
    reads: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class FixDocument:
    """One object of a fix: a complete object to ``kubectl apply``, or a patch of a named object.

    ``body`` is the Kubernetes-shaped mapping (apiVersion, kind, metadata.name/namespace, ...).
    ``patch`` documents are strategic merge patches (``kubectl patch <kind> <name> -n <namespace>
    --type strategic --patch-file FILE``): a ``null`` value removes that key; other fields of the
    object are left as they are.
    """

    body: Mapping[str, Any]
    patch: bool = False


@dataclass(frozen=True, slots=True)
class Fix:
    """This finding's own fix, filled in from the objects that decided it.

    ``documents`` change the input (none of them is YAML the input already holds); ``note`` says
    what they change and how to apply them, or, with no documents, plainly why there is no YAML
    fix (nothing proven wrong, a cluster setting, a permission of the auditor's...). ``yaml`` is
    the rendered text when the fix comes from a stored run (its documents are not kept).
    """

    documents: tuple[FixDocument, ...] = ()
    note: str = ""
    yaml: str = ""


NO_FIX = Fix()


@dataclass(frozen=True, slots=True)
class Finding:
    """The result of one check on one target (``<namespace>/<service>``)."""

    check: CheckMeta
    target: str
    status: Status
    message: str
    evidence: tuple[Evidence, ...] = ()
    method: Method = Method.STATIC
    details: Mapping[str, str] = field(default_factory=dict)
    fix: Fix = NO_FIX

    @property
    def property(self) -> Property:
        """The promise (``Property``) of the finding's check. Never raises."""
        return self.check.property

    def sort_key(self) -> tuple[str, str, str]:
        """Target, property, check id: the order of every output."""
        return (self.target, self.check.property.value, self.check.id)


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts per status and the exit code they imply (the CLI contract)."""

    counts: Mapping[Status, int]
    targets: int

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 1 on any FAIL; 3 on ERROR, INCONCLUSIVE or no target; else 0."""
        if self.counts.get(Status.FAIL, 0):
            return 1
        if not self.targets:
            # An audit that looked at nothing proves nothing: never exit 0 on an empty result.
            return 3
        if self.counts.get(Status.ERROR, 0) or self.counts.get(Status.INCONCLUSIVE, 0):
            return 3
        return 0


def summarize(findings: tuple[Finding, ...]) -> Summary:
    """Counts per status and the number of distinct targets of ``findings``."""
    counts = dict.fromkeys(Status, 0)
    for finding in findings:
        counts[finding.status] += 1
    return Summary(counts=counts, targets=len({f.target for f in findings}))
