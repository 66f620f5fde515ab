"""Table (80 columns, grouped by target) and Markdown renderings of an audit.

Every string from a finding (names, values, messages; from a stored run also titles and
remediations) is hostile input. The table shows control characters as escapes
(``escape.visible``), so no ESC sequence, carriage return or newline can erase or forge a line.
Markdown does the same and then escapes the syntax that would build links, images, raw HTML or
new table cells (``_md``, ``_prose``), and puts values in code spans and fences longer than any
backtick run inside them (``_code``, ``_fence``).
"""

from __future__ import annotations

import re
import textwrap
from itertools import groupby

from auditor.core.model import Evidence, Finding, Status, summarize
from auditor.render.escape import visible
from auditor.render.fixes import fix_yaml
from auditor.report import AuditReport

WIDTH = 80
_STATUS = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.ERROR: "ERR ",
    Status.INCONCLUSIVE: "INC ",
    Status.SKIPPED: "SKIP",
}
_PROPERTY_WIDTH = 21
_INDENT = " " * (2 + 4 + 2 + _PROPERTY_WIDTH)


def render_table(report: AuditReport, *, verbose: bool = False) -> str:
    findings = report.findings
    lines = [_headline(findings), *_wrap(visible(report.semantics_line), WIDTH, subsequent_indent="  "), ""]
    for target, group in groupby(findings, key=lambda f: f.target):
        lines.append(visible(target))
        for finding in group:
            lines += _row(finding, verbose=verbose)
        lines.append("")
    lines.append(_legend(findings))
    return "\n".join(lines) + "\n"


def _headline(findings: tuple[Finding, ...]) -> str:
    summary = summarize(findings)
    counts = ", ".join(f"{n} {s.value}" for s, n in summary.counts.items() if n)
    return f"mesh-auditor: {summary.targets} target(s), {len(findings)} finding(s): {counts or 'none'}"


def _row(finding: Finding, *, verbose: bool) -> list[str]:
    head = f"  {_STATUS[finding.status]}  {finding.property.value:<{_PROPERTY_WIDTH}}"
    body = _wrap(visible(finding.message), WIDTH - len(_INDENT)) or [""]
    lines = [head + body[0], *(_INDENT + line for line in body[1:])]
    if finding.status is not Status.PASS or verbose:
        lines.append(f"{_INDENT}check: {visible(finding.check.id)}")
    if finding.status in {Status.FAIL, Status.ERROR}:
        lines += _wrap(
            "fix: " + visible(finding.check.remediation),
            WIDTH,
            initial_indent=_INDENT,
            subsequent_indent=_INDENT + "     ",
        )
    if finding.status in {Status.FAIL, Status.ERROR} or (verbose and finding.status is not Status.PASS):
        lines += _fix_lines(finding, verbose=verbose)
    if verbose:
        for evidence in finding.evidence:
            lines += _evidence_lines(evidence)
    return lines


def _fix_lines(finding: Finding, *, verbose: bool) -> list[str]:
    """This finding's fix: its note, then (at ``-v``) its YAML, unwrapped so it copies whole."""
    lines = []
    if finding.fix.note:
        lines += _wrap(
            "this finding: " + visible(finding.fix.note),
            WIDTH,
            initial_indent=_INDENT + "     ",
            subsequent_indent=_INDENT + "     ",
        )
    text = fix_yaml(finding.fix).rstrip()
    if text and verbose:
        lines += [_INDENT + "     " + visible(line) for line in text.splitlines()]
    elif text:
        lines.append(f"{_INDENT}     (the YAML fix, {len(text.splitlines())} lines: -v)")
    return lines


def _evidence_lines(evidence: Evidence) -> list[str]:
    """``- <object>: <field>=<value>``, then the note on its own lines: the three never run together."""
    fact = f"{evidence.field}={evidence.value}" if evidence.field else evidence.value
    head = visible(f"- {evidence.object}: {fact}" if fact else f"- {evidence.object}")
    lines = _wrap(head, WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT + "    ")
    if evidence.note:
        lines += _wrap(visible(evidence.note), WIDTH, initial_indent=_INDENT + "  ", subsequent_indent=_INDENT + "  ")
    return lines


def _wrap(text: str, width: int, initial_indent: str = "", subsequent_indent: str = "") -> list[str]:
    """Wrap at spaces only: an identifier (``istio.io/dataplane-mode=ambient``, a SPIFFE id, a
    check id) is never split at a hyphen or mid-word, so it copies and pastes whole; a word longer
    than the line overflows it instead."""
    return textwrap.wrap(
        text,
        width,
        initial_indent=initial_indent,
        subsequent_indent=subsequent_indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _legend(findings: tuple[Finding, ...]) -> str:
    code = summarize(findings).exit_code
    meaning = {0: "every finding passes", 1: "drift found", 3: "some promises could not be proven"}[code]
    return f"exit {code}: {meaning}.\nMore: -v for evidence, --output json|markdown, `auditor checks`."


def render_markdown(report: AuditReport) -> str:
    findings, semantics = report.findings, report.semantics_line
    lines = [
        "# mesh-auditor report",
        "",
        _headline(findings),
        "",
        *([_md(semantics), ""] if semantics else []),
        "| target | property | status | check | message |",
        "|---|---|---|---|---|",
    ]
    for f in findings:
        lines.append(
            f"| {_code(f.target, cell=True)} | {f.property.value} | **{f.status.value.upper()}** "
            f"| {_code(f.check.id, cell=True)} | {_md(f.message)} |"
        )
    failing = [f for f in findings if f.status in {Status.FAIL, Status.ERROR}]
    if failing:
        lines += ["", "## Remediation", ""]
        for f in failing:
            lines += [f"### {_code(f.target)}: {_md(f.check.title)}", "", _prose(f.check.remediation), ""]
            if f.fix.note:
                lines += [f"This finding: {_md(f.fix.note)}", ""]
            text = fix_yaml(f.fix)
            if text:
                body = visible(text.rstrip(), multiline=True)
                fence = _fence(body)
                lines += [fence + "yaml", body, fence, ""]
            lines += [_evidence_markdown(e) for e in f.evidence]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _evidence_markdown(evidence: Evidence) -> str:
    """``- evidence: <object>: `field` = `value` — note``; no empty code span when there is no field."""
    fact = f"{_code(evidence.field)} = {_code(evidence.value)}" if evidence.field else _code(evidence.value)
    note = f" — {_md(evidence.note)}" if evidence.note else ""
    return f"- evidence: {_md(evidence.object)}: {fact}{note}"


# CommonMark lets any ASCII punctuation be backslash-escaped; these start emphasis, code, links,
# images, raw HTML, entities, headings, strikethrough or (GFM) a new table cell.
_MD_SYNTAX = re.compile(r"([\\`*_\[\]<>|!~#&])")
# Remediation prose keeps its code spans and emphasis; links, images, HTML, entities and cells go.
_PROSE_SYNTAX = re.compile(r"([\\\[\]<>|!&])")
_BACKTICKS = re.compile(r"`+")


def _md(text: str) -> str:
    """Plain text in Markdown: visible controls, every syntax character escaped."""
    return _MD_SYNTAX.sub(r"\\\1", visible(text))


def _prose(text: str) -> str:
    return _PROSE_SYNTAX.sub(r"\\\1", visible(text))


def _code(text: str, *, cell: bool = False) -> str:
    """A code span that no backtick in ``text`` can close early; in a GFM table cell ``|`` is escaped."""
    body = visible(text)
    if cell:
        body = body.replace("|", "\\|")
    ticks = "`" * (_longest_backtick_run(body) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") or not body.strip() else ""
    return f"{ticks}{pad}{body}{pad}{ticks}"


def _fence(body: str) -> str:
    return "`" * max(3, _longest_backtick_run(body) + 1)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in _BACKTICKS.findall(text)), default=0)
