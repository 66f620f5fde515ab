"""A drill's result as text: the table ``auditor drill`` prints, and the report's Drills section
(Markdown). Everything shown comes from the cluster or the rules, so it goes through ``visible``."""

from __future__ import annotations

from auditor.core.drill import DrillOutcome, DrillResult
from auditor.render.escape import visible


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _row(outcome: DrillOutcome) -> list[str]:
    return [
        outcome.kind,
        outcome.promise,
        _yes(outcome.detected),
        _seconds(outcome.time_to_detect_s),
        _yes(outcome.alerted),
        _seconds(outcome.time_to_alert_s),
        _yes(outcome.resolved),
    ]


HEADER = ["drift", "promise", "detected", "time to detect", "alerted", "time to alert", "resolved"]


def render_drill_table(result: DrillResult) -> str:
    rows = [HEADER, *(_row(o) for o in result.outcomes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [
        f"drill on canary {visible(result.canary)} (mirrors {visible(result.source)})",
        f"baseline: {'passed' if result.baseline else 'NOT passed'} ({visible(result.baseline_detail)})",
        "",
    ]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines += [f"  {o.kind}: {visible(o.detail)}" for o in result.outcomes if o.detail]
    lines += [f"skipped {kind}: {visible(reason)}" for kind, reason in result.skipped]
    lines += _ending(result)
    return "\n".join(lines) + "\n"


def render_drill_markdown(result: DrillResult) -> str:
    """The report's Drills section."""
    lines = [
        "## Drills",
        "",
        f"Canary `{visible(result.canary)}` mirrors `{visible(result.source)}`; baseline "
        f"{'passed' if result.baseline else '**not passed**'}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(_row(o)) + " |" for o in result.outcomes]
    lines += ["", *_ending(result), ""]
    return "\n".join(lines)


def _ending(result: DrillResult) -> list[str]:
    left = "unknown (the sandbox could not be listed)" if result.leftover_objects < 0 else str(result.leftover_objects)
    lines = [f"cleanup: {left} object(s) left in the sandbox"]
    if result.aborted:
        lines.append(f"aborted: {visible(result.aborted)}")
    lines.append("result: every drift detected, alerted and resolved" if result.ok else "result: NOT proven")
    return lines
