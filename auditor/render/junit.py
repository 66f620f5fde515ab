"""JUnit XML for CI systems: one test suite per target, one test case per check.

FAIL is a ``<failure>``, ERROR and INCONCLUSIVE are ``<error>`` (could not prove: CI should stop
as it does for exit code 3), SKIPPED is ``<skipped>``. Built with ElementTree, so ``& < > "`` are
escaped; ElementTree does not refuse characters XML 1.0 forbids (ESC, other C0 controls, lone
surrogates), so every string passes ``escape.xml_text`` first: the document stays well-formed and
a reader sees ``\\x1b`` where a manifest put an ESC.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import groupby

from auditor.core.model import Evidence, Finding, Status
from auditor.render.escape import xml_text
from auditor.render.fixes import fix_yaml
from auditor.report import AuditReport


def render_junit(report: AuditReport) -> str:
    findings = report.findings
    root = ET.Element("testsuites", name="mesh-auditor", tests=str(len(findings)))
    for target, group in groupby(sorted(findings, key=Finding.sort_key), key=lambda f: f.target):
        cases = list(group)
        suite = ET.SubElement(root, "testsuite", name=xml_text(target), tests=str(len(cases)))
        suite.set("failures", str(sum(f.status is Status.FAIL for f in cases)))
        suite.set("errors", str(sum(f.status in {Status.ERROR, Status.INCONCLUSIVE} for f in cases)))
        suite.set("skipped", str(sum(f.status is Status.SKIPPED for f in cases)))
        for finding in cases:
            _case(suite, finding)
    for name in ("failures", "errors", "skipped"):
        root.set(name, str(sum(int(s.get(name, "0")) for s in root)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _case(suite: ET.Element, finding: Finding) -> None:
    check, message = xml_text(finding.check.id), xml_text(finding.message)
    case = ET.SubElement(suite, "testcase", classname=finding.property.value, name=f"{check} [{finding.method.value}]")
    detail = message + "\n\nFix: " + xml_text(finding.check.remediation)
    if finding.fix.note:
        detail += "\nThis finding: " + xml_text(finding.fix.note)
    if fix_yaml(finding.fix):
        detail += "\n\n" + xml_text(fix_yaml(finding.fix), multiline=True)
    # As the table's -v: object, field=value and note never run together.
    evidence = "\n".join(xml_text(_evidence(e)) for e in finding.evidence)
    if finding.status is Status.FAIL:
        ET.SubElement(case, "failure", message=message, type=check).text = detail
    elif finding.status in {Status.ERROR, Status.INCONCLUSIVE}:
        ET.SubElement(case, "error", message=message, type=finding.status.value).text = detail
    elif finding.status is Status.SKIPPED:
        ET.SubElement(case, "skipped", message=message)
    if evidence:
        ET.SubElement(case, "system-out").text = evidence


def _evidence(evidence: Evidence) -> str:
    fact = f"{evidence.field}={evidence.value}" if evidence.field else evidence.value
    line = f"- {evidence.object}: {fact}" if fact else f"- {evidence.object}"
    return line + (f"\n  {evidence.note}" if evidence.note else "")
