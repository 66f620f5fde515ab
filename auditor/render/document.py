"""The JSON document of an audit: the stable output contract of ``auditor check --output json``.

Schema version 1: ``{"schema_version": 1, "summary": {...}, "findings": [...]}``; fields are
only ever added (``findings[].details``, a string-to-string map such as a probe's ``run_id``, was
added within version 1; documents without it still read). ``findings[].remediation_yaml`` is the
finding's own fix, filled in from its objects (it was the check's template before), and
``findings[].remediation_note`` says what it changes and how to apply it, or why there is none.
Every renderer starts from this, so table, Markdown and JSON agree.
"""

from __future__ import annotations

from typing import Any

from auditor.core.model import CheckMeta, Evidence, Finding, Fix, Method, Property, Severity, Status, summarize
from auditor.render.fixes import fix_yaml
from auditor.report import AuditReport, RunRecord

SCHEMA_VERSION = 1
_RANK = {Status.FAIL: 0, Status.ERROR: 1, Status.INCONCLUSIVE: 2, Status.PASS: 3, Status.SKIPPED: 4}


def finding_dict(finding: Finding) -> dict[str, Any]:
    meta = finding.check
    return {
        "check": meta.id,
        "property": meta.property.value,
        "status": finding.status.value,
        "target": finding.target,
        "method": finding.method.value,
        "title": meta.title,
        "severity": meta.severity.value,
        "message": finding.message,
        "remediation": meta.remediation,
        "remediation_yaml": fix_yaml(finding.fix),
        "remediation_note": finding.fix.note,
        "references": list(meta.references),
        "evidence": [e.as_dict() for e in finding.evidence],
        "details": dict(finding.details),
    }


def by_target(findings: tuple[Finding, ...]) -> dict[str, dict[str, str]]:
    """Per target, per property: the worst status of its checks (what "property passes" means)."""
    result: dict[str, dict[str, Status]] = {}
    for finding in findings:
        properties = result.setdefault(finding.target, {})
        current = properties.get(finding.property.value)
        if current is None or _RANK[finding.status] < _RANK[current]:
            properties[finding.property.value] = finding.status
    return {target: {p: s.value for p, s in sorted(props.items())} for target, props in sorted(result.items())}


def audit_document(report: AuditReport) -> dict[str, Any]:
    """The JSON document of ``report``: ``schema_version``, ``summary`` (counts, ``by_target``,
    ``inputs``), ``findings`` and, for a daemon run, ``run`` (``RunRecord.as_dict``)."""
    findings, inputs = report.findings, dict(report.inputs)
    summary = summarize(findings)
    document = {
        "schema_version": SCHEMA_VERSION,
        "summary": {
            "exit_code": summary.exit_code,
            "targets": summary.targets,
            "findings": len(findings),
            "counts": {status.value: count for status, count in summary.counts.items()},
            "by_target": by_target(findings),
            "inputs": inputs,
        },
        "findings": [finding_dict(f) for f in findings],
    }
    if report.run is not None:
        document["run"] = report.run.as_dict()
    return document


class DocumentError(ValueError):
    """A stored run is not an audit document this version can read."""


def findings_from_document(document: dict[str, Any]) -> tuple[Finding, ...]:
    """Rebuild findings from a stored JSON run (``auditor report``): the document is self-describing."""
    if document.get("schema_version") != SCHEMA_VERSION:
        raise DocumentError(f"schema_version {document.get('schema_version')!r} is not {SCHEMA_VERSION}")
    try:
        return tuple(_finding_from(item) for item in document["findings"])
    except (KeyError, ValueError, TypeError) as error:
        raise DocumentError(f"a finding is malformed: {error}") from error


def report_from_document(document: dict[str, Any]) -> AuditReport:
    """The ``AuditReport`` a stored JSON run holds (``auditor report``, the daemon's archive).
    Raises ``DocumentError`` naming what is malformed: the findings, ``summary.inputs`` or ``run``."""
    findings = findings_from_document(document)
    summary = document.get("summary")
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k), dict) for k in ("counts", "by_target")):
        raise DocumentError("summary is not an audit summary (an object with counts and by_target objects)")
    inputs = summary.get("inputs", {})
    if not isinstance(inputs, dict):
        raise DocumentError("summary.inputs is not an object")
    stored_run = document.get("run")
    try:
        run = None if stored_run is None else RunRecord.from_dict(stored_run)
    except (KeyError, ValueError, TypeError) as error:
        raise DocumentError(f"run is malformed: {error!r}") from error
    return AuditReport(findings, inputs, run)


def _finding_from(item: dict[str, Any]) -> Finding:
    meta = CheckMeta(
        id=str(item["check"]),
        property=Property(item["property"]),
        title=str(item["title"]),
        severity=Severity(item["severity"]),
        protects="",
        remediation=str(item["remediation"]),
        references=tuple(str(r) for r in item.get("references", [])),
    )
    evidence = tuple(
        Evidence(str(e["object"]), str(e["field"]), str(e["value"]), str(e["note"])) for e in item["evidence"]
    )
    details = {str(k): str(v) for k, v in (item.get("details") or {}).items()}
    return Finding(
        meta,
        str(item["target"]),
        Status(item["status"]),
        str(item["message"]),
        evidence,
        Method(item["method"]),
        details,
        Fix(note=str(item.get("remediation_note", "")), yaml=str(item.get("remediation_yaml", ""))),
    )
