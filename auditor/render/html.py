"""The human compliance report: one self-contained HTML page, readable without JavaScript.

Built from an ``AuditReport`` (as every renderer), drawn through its JSON audit document (the
contract, ``auditor.render.document``), plus an optional history of earlier runs, so a stored run
renders the same today and next year (``auditor report``). Per property and target it shows the current status and the last days as a
small inline SVG strip (one square per run, oldest left). A stored run is untrusted input: every
value read from it, whatever its JSON type (summary counts and targets included), goes through
``_text``: control characters shown as escapes (``escape.visible``), then HTML-escaped, quotes
included. A document whose shape is wrong raises ``ReportError``, never a half-written page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from auditor.render.document import audit_document
from auditor.render.escape import visible
from auditor.report import AuditReport

PROPERTIES = ("strict-mtls", "principal-allowlist", "waypoint-enrollment", "required-headers")
_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "error": "#ef6c00", "inconclusive": "#f9a825", "skipped": "#9e9e9e"}
_SQUARE, _GAP, _MAX_RUNS = 9, 2, 60


class ReportError(ValueError):
    """A stored run whose summary or findings do not have the audit document's shape."""


def _text(value: object, *, multiline: bool = False) -> str:
    """Any stored value as HTML text: controls made visible, ``& < > " '`` escaped."""
    return escape(visible(str(value), multiline=multiline))


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One earlier run: when (ISO 8601, as stored) and its per-target, per-property statuses."""

    at: str
    by_target: Mapping[str, Mapping[str, str]]


def render_html(
    report: AuditReport, history: Sequence[HistoryPoint] = (), *, title: str = "Mesh compliance report"
) -> str:
    """The page for one audit, drawn from its JSON document (``audit_document``); ``history``:
    earlier runs, oldest first. ``ReportError`` when the document's shape is wrong."""
    try:
        return _render(audit_document(report), history, title)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ReportError(
            f"the document's shape is not an audit document's: {type(error).__name__}: {error}"
        ) from error


def _render(document: Mapping[str, Any], history: Sequence[HistoryPoint], title: str) -> str:
    summary = document["summary"]
    run = document.get("run") or {}
    parts = [
        _head(title),
        f"<h1>{escape(title)}</h1>",
        _run_block(run, summary),
        "<h2 id='properties'>Promises by target</h2>",
        _matrix(summary["by_target"], history),
        "<h2 id='findings'>Findings</h2>",
        _findings(document["findings"]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _head(title: str) -> str:
    style = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#212121;max-width:72rem}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}td,th{border:1px solid #ddd;padding:0.3rem 0.6rem;vertical-align:top;text-align:left}
th{background:#f5f5f5}.badge{display:inline-block;padding:0.05rem 0.45rem;border-radius:0.3rem;color:#fff;font-size:0.85em;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.error{background:#ef6c00}.inconclusive{background:#f9a825;color:#212121}.skipped{background:#9e9e9e}
pre{background:#f5f5f5;padding:0.6rem;overflow-x:auto}details{margin:0.4rem 0 0.8rem}.muted{color:#616161}
"""
    return f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}</style></head><body>"


def _badge(status: str) -> str:
    return f"<span class='badge {_text(status)}'>{_text(str(status).upper())}</span>"


def _run_block(run: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{_text(n)} {_text(s)}" for s, n in summary["counts"].items() if n) or "no findings"
    rows = [("Result", _badge(_overall(summary))), ("Findings", counts), ("Targets", _text(summary["targets"]))]
    rows += [(_text(str(k).replace("_", " ").capitalize()), _text(v)) for k, v in run.items()]
    semantics = (summary.get("inputs") or {}).get("istio_semantics") or {}
    if semantics.get("line"):
        rows.append(("Istio semantics", _text(semantics["line"])))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<section id='summary'><h2>Summary</h2><table>{body}</table></section>"


def _overall(summary: Mapping[str, Any]) -> str:
    return {0: "pass", 1: "fail"}.get(summary["exit_code"], "inconclusive")


def _matrix(by_target: Mapping[str, Mapping[str, str]], history: Sequence[HistoryPoint]) -> str:
    header = "".join(f"<th>{p}</th>" for p in PROPERTIES)
    rows = []
    for target, properties in by_target.items():
        cells = "".join(_cell(target, prop, properties.get(prop), history) for prop in PROPERTIES)
        rows.append(f"<tr><th>{_text(target)}</th>{cells}</tr>")
    return f"<table><tr><th>target</th>{header}</tr>{''.join(rows)}</table>"


def _cell(target: str, prop: str, status: str | None, history: Sequence[HistoryPoint]) -> str:
    if status is None:
        return "<td class='muted'>—</td>"
    strip = _strip([h.by_target.get(target, {}).get(prop) for h in history[-_MAX_RUNS:]], f"{target} {prop}")
    return f"<td>{_badge(status)}<br>{strip}</td>"


def _strip(statuses: Sequence[str | None], label: str) -> str:
    if not statuses:
        return ""
    width = len(statuses) * (_SQUARE + _GAP)
    squares = "".join(
        f"<rect x='{i * (_SQUARE + _GAP)}' y='0' width='{_SQUARE}' height='{_SQUARE}' fill='{_COLOURS.get(str(s or ''), '#eeeeee')}'><title>{_text(s or 'not audited')}</title></rect>"
        for i, s in enumerate(statuses)
    )
    return f"<svg role='img' aria-label='history of {_text(label)}' width='{width}' height='{_SQUARE}' viewBox='0 0 {width} {_SQUARE}'>{squares}</svg>"


def _findings(findings: Sequence[Mapping[str, Any]]) -> str:
    order = {"fail": 0, "error": 1, "inconclusive": 2, "skipped": 3, "pass": 4}
    ranked = sorted(findings, key=lambda f: (order.get(str(f["status"]), 5), str(f["target"]), str(f["check"])))
    return "\n".join(_finding(f) for f in ranked)


def _finding(finding: Mapping[str, Any]) -> str:
    evidence = "".join(
        f"<li>{_text(e['object'])} <code>{_text(e['field'])}</code> = <code>{_text(e['value'])}</code> {_text(e['note'])}</li>"
        for e in finding["evidence"]
    )
    fix = ""
    if finding["status"] in {"fail", "error"}:
        yaml_fix = (
            f"<pre>{_text(finding['remediation_yaml'], multiline=True)}</pre>"
            if finding.get("remediation_yaml")
            else ""
        )
        note = (
            f"<p><strong>This finding:</strong> {_text(finding['remediation_note'])}</p>"
            if finding.get("remediation_note")
            else ""
        )
        fix = f"<p><strong>Fix:</strong> {_text(finding['remediation'])}</p>{note}{yaml_fix}"
    opened = " open" if finding["status"] != "pass" else ""
    return (
        f"<details{opened}><summary>{_badge(finding['status'])} <strong>{_text(finding['target'])}</strong> "
        f"{_text(finding['property'])} — <code>{_text(finding['check'])}</code> ({_text(finding['method'])})</summary>"
        f"<p>{_text(finding['message'])}</p>{fix}<ul>{evidence}</ul></details>"
    )
