"""Table (80 columns, grouped by target) and Markdown renderings of an audit."""

from __future__ import annotations

import textwrap
from itertools import groupby

from auditor.core.model import Evidence, Finding, Status, summarize

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


def render_table(findings: tuple[Finding, ...], *, verbose: bool = False) -> str:
    lines = [_headline(findings), ""]
    for target, group in groupby(findings, key=lambda f: f.target):
        lines.append(target)
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
    body = _wrap(finding.message, WIDTH - len(_INDENT)) or [""]
    lines = [head + body[0], *(_INDENT + line for line in body[1:])]
    if finding.status is not Status.PASS or verbose:
        lines.append(f"{_INDENT}check: {finding.check.id}")
    if finding.status in {Status.FAIL, Status.ERROR}:
        lines += _wrap(
            "fix: " + finding.check.remediation,
            WIDTH,
            initial_indent=_INDENT,
            subsequent_indent=_INDENT + "     ",
        )
    if verbose:
        for evidence in finding.evidence:
            lines += _evidence_lines(evidence)
    return lines


def _evidence_lines(evidence: Evidence) -> list[str]:
    """``- <object>: <field>=<value>``, then the note on its own lines: the three never run together."""
    fact = f"{evidence.field}={evidence.value}" if evidence.field else evidence.value
    head = f"- {evidence.object}: {fact}" if fact else f"- {evidence.object}"
    lines = _wrap(head, WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT + "    ")
    if evidence.note:
        lines += _wrap(evidence.note, WIDTH, initial_indent=_INDENT + "  ", subsequent_indent=_INDENT + "  ")
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


def render_markdown(findings: tuple[Finding, ...]) -> str:
    lines = [
        "# mesh-auditor report",
        "",
        _headline(findings),
        "",
        "| target | property | status | check | message |",
        "|---|---|---|---|---|",
    ]
    for f in findings:
        lines.append(
            f"| `{f.target}` | {f.property.value} | **{f.status.value.upper()}** "
            f"| `{f.check.id}` | {_cell(f.message)} |"
        )
    failing = [f for f in findings if f.status in {Status.FAIL, Status.ERROR}]
    if failing:
        lines += ["", "## Remediation", ""]
        for f in failing:
            lines += [f"### `{f.target}`: {f.check.title}", "", f.check.remediation, ""]
            if f.check.remediation_yaml:
                lines += ["```yaml", f.check.remediation_yaml.rstrip(), "```", ""]
            lines += [_evidence_markdown(e) for e in f.evidence]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _evidence_markdown(evidence: Evidence) -> str:
    """``- evidence: <object>: `field` = `value` — note``; no empty code span when there is no field."""
    fact = f"`{evidence.field}` = `{evidence.value}`" if evidence.field else f"`{evidence.value}`"
    note = f" — {_cell(evidence.note)}" if evidence.note else ""
    return f"- evidence: {_cell(evidence.object)}: {fact}{note}"


def _cell(text: str) -> str:
    # < and > as entities: GitHub drops what looks like an HTML tag (``<set>`` would vanish).
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")
