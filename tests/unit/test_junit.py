"""JUnit XML maps statuses to failure/error/skipped per target, and parses back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from auditor.core.checks.catalog import CAPTURED, PEER_AUTHENTICATION, WAYPOINT_BOUND
from auditor.core.model import Evidence, Finding, Status
from auditor.render.junit import render_junit
from auditor.report import AuditReport


def test_statuses_become_junit_elements() -> None:
    findings = (
        Finding(
            CAPTURED,
            "default/checkout",
            Status.FAIL,
            "opts out <of> the mesh & more",
            (Evidence("Deployment default/checkout", "labels", "none"),),
        ),
        Finding(PEER_AUTHENTICATION, "default/checkout", Status.PASS, "STRICT"),
        Finding(WAYPOINT_BOUND, "default/catalog", Status.INCONCLUSIVE, "cannot tell"),
    )
    root = ET.fromstring(render_junit(AuditReport(findings)))  # noqa: S314 - parsing our own output
    assert root.get("tests") == "3"
    assert (root.get("failures"), root.get("errors")) == ("1", "1")
    suites = {s.get("name"): s for s in root}
    checkout = suites["default/checkout"]
    failure = checkout.find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "opts out <of> the mesh & more"
    assert failure.get("type") == "strict-mtls.captured"
    assert suites["default/catalog"].find("testcase/error") is not None
