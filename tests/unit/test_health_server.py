"""/metrics, /healthz and /readyz over real HTTP on loopback."""

from __future__ import annotations

import httpx

from auditor.core.checks.catalog import CAPTURED
from auditor.core.model import Finding, Status
from auditor.daemon.health import HealthServer
from auditor.daemon.metrics import DaemonMetrics


def test_endpoints_answer_and_readiness_explains_itself() -> None:
    metrics = DaemonMetrics()
    metrics.record_findings([Finding(CAPTURED, "default/checkout", Status.FAIL, "opts out")])
    metrics.alerts_open.set(1)
    ready = {"value": (False, "snapshot not in sync: v1 pods: not listed yet")}
    server = HealthServer("127.0.0.1", 0, metrics.exposition, lambda: ready["value"])
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as http:
            assert http.get("/healthz").status_code == 200
            not_ready = http.get("/readyz")
            assert (not_ready.status_code, not_ready.text) == (503, "snapshot not in sync: v1 pods: not listed yet\n")
            ready["value"] = (True, "leader")
            assert http.get("/readyz").status_code == 200
            exposition = http.get("/metrics").text
    finally:
        server.stop()
    assert 'mesh_auditor_findings{method="static",property="strict-mtls",status="fail"} 1.0' in exposition
    assert "mesh_auditor_alerts_open 1.0" in exposition
