"""The HTML report: self-contained, escaped, every property per target, history strips."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from auditor.cli import main
from auditor.render.document import report_from_document
from auditor.render.html import HistoryPoint, render_html

ROOT = Path(__file__).resolve().parents[2]


def _document(example: str) -> dict[str, Any]:
    out = io.StringIO()
    main(
        [
            "check",
            "--manifests",
            str(ROOT / "examples" / example),
            "--rules",
            str(ROOT / "rules" / "retail-store.yaml"),
            "--output",
            "json",
        ],
        stdout=out,
    )
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def test_report_has_summary_matrix_and_findings_without_scripts() -> None:
    html = render_html(report_from_document(_document("retail-store-drifted")))
    assert "<script" not in html
    assert "id='summary'" in html
    assert "id='properties'" in html
    assert "id='findings'" in html
    assert html.count("<tr><th>default/") == 5
    assert "kind: PeerAuthentication" in html  # remediation YAML of a failure


def test_history_strip_has_one_square_per_run() -> None:
    document = _document("retail-store")
    history = [
        HistoryPoint(f"2026-11-2{day}T00:00:00Z", {"default/catalog": {"strict-mtls": status}})
        for day, status in enumerate(["pass", "fail", "pass"])
    ]
    html = render_html(report_from_document(document), history)
    strip = html.split("aria-label='history of default/catalog strict-mtls'")[1].split("</svg>")[0]
    assert strip.count("<rect") == 3
    assert "#c62828" in strip  # the failing day


def test_texts_are_escaped() -> None:
    document = _document("retail-store")
    document["findings"][0]["message"] = "<img src=x onerror=alert(1)>"
    assert "<img src=x" not in render_html(report_from_document(document))
