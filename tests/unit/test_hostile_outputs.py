"""Hostile names and values cannot forge, erase or break any human output (issue #10, item 5).

The manifest below puts ESC sequences, carriage returns, newlines and a bidi override into an
AuthorizationPolicy principal and a PeerAuthentication name, trying to erase the FAIL line and
print a fake "exit 0: every finding passes.". Stored runs put markup into every field.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import structlog

from auditor.app import visible_log_strings
from auditor.cli import main
from auditor.core.checks.catalog import CAPTURED, INTRUDERS_REFUSED
from auditor.core.model import Evidence, Finding, Fix, Method, Status
from auditor.errors import InputError
from auditor.render.escape import visible, xml_text
from auditor.render.junit import render_junit
from auditor.render.policyreport import policy_reports
from auditor.render.text import render_markdown, render_table
from auditor.report import AuditReport
from tests.cases import run_report

ROOT = Path(__file__).resolve().parents[2]
RULES = str(ROOT / "rules" / "retail-store.yaml")
FAKE = "exit 0: every finding passes."
# What a terminal or editor acts on: C0 but newline, DEL, C1, bidi controls, invisible separators.
_ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")


@pytest.fixture(scope="module")
def hostile_manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The drifted example, with terminal escapes in a principal and a PeerAuthentication name."""
    directory = tmp_path_factory.mktemp("hostile") / "manifests"
    shutil.copytree(ROOT / "examples" / "retail-store-drifted", directory)
    policy = directory / "20-mesh-policy.yaml"
    text = policy.read_text()
    text = text.replace(
        "- cluster.local/ns/default/sa/orders  # DRIFT 4: widens the allow-list",
        f'- "cluster.local/ns/default/sa/orders\\e[2K\\r\\e[1A\\e[2K{FAKE}\\n"',
    )
    text = text.replace("name: orders-debug", f'name: "orders-debug\\e[2K\\r{FAKE}\\u202e\\x9b2K"')
    assert "\\e[2K" in text
    policy.write_text(text)
    return directory


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdin=io.StringIO(""), stdout=out)
    return code, out.getvalue()


@pytest.mark.parametrize("output", ["table", "markdown", "junit"])
def test_a_manifest_cannot_erase_the_fail_line_or_forge_the_legend(hostile_manifests: Path, output: str) -> None:
    """ESC, CR, LF, C1 and bidi in names reach every output as visible escapes; the verdict stays exit 1."""
    argv = ["check", "--manifests", str(hostile_manifests), "--rules", RULES, "--output", output]
    code, text = _run(*argv, *(["-v"] if output == "table" else []))
    assert code == 1
    assert not _ACTIVE.search(text), repr(_ACTIVE.search(text))
    shown = "\\\\x1b\\[2K" if output == "markdown" else "\\x1b[2K"  # Markdown escapes `\` and `[` too
    assert shown in text  # the ESC is shown, where a reader can see it
    assert not any(line.lstrip("#* ").startswith(FAKE[:6]) for line in text.splitlines())
    if output == "table":
        assert text.rstrip().splitlines()[-2] == "exit 1: drift found."
        assert "FAIL  principal-allowlist" in text
        assert "\\u202e" in text
    if output == "junit":
        root = ET.fromstring(text)  # noqa: S314 - parsing our own output, the point of the test
        assert root.get("failures") == "5"


def test_markdown_table_rows_keep_their_cells_and_code_spans_hold() -> None:
    """A `|`, a backtick run, markup and a newline in a name cannot add a cell, close a span or inject HTML."""
    target = "default/a|b``c`\n<img src=x onerror=alert(1)>"
    findings = (
        Finding(
            INTRUDERS_REFUSED,
            target,
            Status.FAIL,
            "admits [x](javascript:alert(1)) ![t](http://evil/) <script>x</script> | more",
            (Evidence("Policy `a`", "spec|x", "```\n# heading", "<b>note</b>"),),
            Method.STATIC,
        ),
    )
    text = render_markdown(AuditReport(findings))
    row = next(line for line in text.splitlines() if line.startswith("| ```"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 6  # five cells, however many pipes the input had
    assert row.startswith("| ```default/a\\|b``c`\\n<img src=x onerror=alert(1)>``` |")
    assert "\\<script\\>" in text
    assert "<script>" not in text
    assert "\\[x\\](javascript:alert(1))" in text
    assert "\\!\\[t\\]" in text
    assert "- evidence: Policy \\`a\\`: `spec|x` = ```` ```\\n# heading ```` — \\<b\\>note\\</b\\>" in text
    assert "\n# heading" not in text


def test_remediation_yaml_from_a_stored_run_cannot_close_its_fence() -> None:
    stored = Fix(yaml="a: 1\n```\n# Forged heading\n")
    text = render_markdown(AuditReport((Finding(CAPTURED, "default/x", Status.FAIL, "m", fix=stored),)))
    assert "````yaml\na: 1\n```\n# Forged heading\n````" in text


def test_table_wraps_but_never_passes_a_control_character() -> None:
    finding = Finding(
        CAPTURED, "ns/\x1b]0;title\x07svc", Status.FAIL, "a\rb\x00c\u2028d", (Evidence("o\x1b", "f", "v\x85w"),)
    )
    text = render_table(AuditReport((finding,)), verbose=True)
    assert "ns/\\x1b]0;title\\x07svc" in text
    assert "a\\rb\\x00c\\u2028d" in text
    assert "o\\x1b: f=v\\x85w" in text


def test_junit_parses_with_characters_xml_forbids() -> None:
    """ElementTree writes ESC and lone surrogates raw (ill-formed XML); the renderer shows them instead."""
    finding = Finding(
        CAPTURED, "ns/\x1b[31mred\ud800", Status.ERROR, "bad\x00\x0b\ufffe]]>&<", (Evidence("o", "f", "\x1b"),)
    )
    text = render_junit(AuditReport((finding,)))
    root = ET.fromstring(text.encode("utf-8"))  # noqa: S314 - parsing our own output
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("name") == "ns/\\x1b[31mred\\ud800"
    error = root.find("testsuite/testcase/error")
    assert error is not None
    assert error.get("message") == "bad\\x00\\x0b\\ufffe]]>&<"
    assert xml_text("tab\there") == "tab\\there"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}


def _hostile_run() -> dict[str, Any]:
    markup = "<script>alert(1)</script><img src=x onerror=alert(2)>'\"\x1b[2K"
    finding = {
        "check": markup,
        "property": "strict-mtls",
        "status": "fail",
        "target": markup,
        "method": "static",
        "title": markup,
        "severity": "high",
        "message": markup,
        "remediation": markup,
        "remediation_yaml": markup + "\n</pre><script>x</script>",
        "references": [markup],
        "evidence": [{"object": markup, "field": markup, "value": 7, "note": markup}],
    }
    return {
        "schema_version": 1,
        "summary": {
            "exit_code": markup,
            "targets": markup,
            "findings": markup,
            "counts": {markup: markup, "fail": 1},
            "by_target": {markup: {"strict-mtls": markup}},
            "inputs": {markup: markup},
        },
        "run": {"id": markup, "kind": markup, "at": "2026-11-27T06:00:00+00:00", "replica": markup},
        "findings": [finding],
    }


def test_html_from_a_hostile_stored_run_has_no_injected_element(tmp_path: Path) -> None:
    """`auditor report` on a run whose summary, run and finding fields hold markup: all shown as text."""
    stored = tmp_path / "run.json"
    stored.write_text(json.dumps(_hostile_run()))
    history = tmp_path / "history"
    history.mkdir()
    (history / "a.json").write_text(json.dumps(_hostile_run()))
    code, page = _run("report", str(stored), "--history", str(history))
    assert code == 0
    parser = _Tags()
    parser.feed(page)
    assert parser.tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "section", "table", "tr"} | {
        "th", "td", "span", "br", "svg", "rect", "details", "summary", "strong", "code", "p", "pre", "ul", "li"
    }  # fmt: skip
    assert not parser.attributes & {"onerror", "src"}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page
    assert "\\x1b[2K" in page


@pytest.mark.parametrize(
    "summary",
    [{"by_target": []}, {"counts": None}, "not a mapping"],
    ids=["by_target-list", "counts-null", "summary-string"],
)
def test_a_stored_run_of_the_wrong_shape_is_exit_2_naming_the_file(
    tmp_path: Path, summary: dict[str, Any] | str, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _hostile_run()
    document["summary"] = summary if isinstance(summary, str) else {**document["summary"], **summary}
    stored = tmp_path / "run.json"
    stored.write_text(json.dumps(document))
    assert _run("report", str(stored)) == (2, "")
    assert capsys.readouterr().err.startswith(f"auditor: error: {stored}: ")


def test_a_stored_run_record_of_the_wrong_shape_is_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _hostile_run()
    document["run"] = {"id": "r1", "kind": "static", "at": "<script>", "replica": "a"}
    stored = tmp_path / "run.json"
    stored.write_text(json.dumps(document))
    assert _run("report", str(stored)) == (2, "")
    assert capsys.readouterr().err.startswith(f"auditor: error: {stored}: run is malformed")


def test_error_messages_show_control_characters() -> None:
    error = InputError("rules/\x1b[2K.yaml", "bad\r\x1b[1Aok", field="spec.\u202ex", fix="edit\nit")
    assert error.render() == "rules/\\x1b[2K.yaml: spec.\\u202ex: bad\\r\\x1b[1Aok\n  fix: edit\nit"


def test_console_log_lines_show_control_characters() -> None:
    event: structlog.types.EventDict = {"event": "drift\x1b[2K", "target": "a\rb", "count": 3}
    assert visible_log_strings(None, "info", event) == {"event": "drift\\x1b[2K", "target": "a\\rb", "count": 3}


def test_visible_leaves_printable_text_alone() -> None:
    text = "cluster.local/ns/défault/sa/ü — 100% <ok> & \\x1b"
    assert visible(text) == text
    assert visible("a\nb\tc", multiline=True) == "a\nb\tc"
    assert visible("a\nb\tc") == "a\\nb\\tc"


def test_policy_report_messages_show_control_characters() -> None:
    """`kubectl describe policyreport` prints messages raw: the renderer has made them visible."""
    finding = Finding(CAPTURED, "default/x", Status.FAIL, "m\x1b[2K\r" + "y" * 600)
    message = policy_reports(run_report([finding], run_id="r", at=0))[0]["results"][0]["message"]
    assert message.startswith("m\\x1b[2K\\ryyy")
    assert len(message) == 512
