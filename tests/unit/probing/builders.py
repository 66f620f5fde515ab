"""Builders for the probe-planning and verdict tests: postures, snapshots, reports, static findings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auditor.core.model import Evidence, Finding, Status
from auditor.core.posture import Posture, PostureDocument, merge
from auditor.core.probing.probeplan import PlanOptions, RunPlan, plan_probes
from auditor.core.probing.probereport import BatchProblem, BatchReport, Observation, RunReport
from auditor.core.snapshot import ObjectMeta, Service, ServicePort, Snapshot
from probes.wire import Outcome

TOKEN = "s3cret-token-value"
RUN = "run-1"
CATALOG = "default/catalog"


def catalog_rules(
    *, control: bool = True, waypoint: bool = True, headers: tuple[str, ...] = ("x-auth-token",), probe: bool = True
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "name": "catalog",
        "namespace": "default",
        "allowedPrincipals": ["cluster.local/ns/default/sa/ui"],
        "control": {"enabled": control, "serviceAccount": "ui"},
    }
    if waypoint:
        service["waypoint"] = {"name": "catalog-waypoint"}
        service["requiredHeaders"] = [{"name": h, "value": {"literal": TOKEN}} for h in headers]
    if probe:
        service["probe"] = {"port": 80, "path": "/catalog/tags"}
    return service


def posture(*services: dict[str, Any]) -> Posture:
    document = PostureDocument.model_validate(
        {
            "apiVersion": "mesh-auditor.dev/v1alpha1",
            "kind": "MeshPosture",
            "metadata": {"name": "test"},
            "spec": {"protectedServices": list(services)},
        }
    )
    return merge([("rules.yaml", document)])


def snapshot(*names: str, port: int = 80) -> Snapshot:
    services = tuple(
        Service(
            meta=ObjectMeta("Service", name.split("/")[1], name.split("/")[0]),
            selector={"app": name.split("/")[1]},
            ports=(ServicePort(port, 8080),),
        )
        for name in names
    )
    return Snapshot(services=services)


def header_values(rules: Posture) -> dict[tuple[str, str], str | None]:
    return {(p.target, h.name): TOKEN for p in rules.protected for h in p.required_headers}


def make_plan(rules: Posture, *, control_allowed: bool = True, marker: str | None = None) -> RunPlan:
    options = PlanOptions(control_allowed=control_allowed, marker_header=marker)
    return plan_probes(rules, snapshot(CATALOG), header_values(rules), RUN, options)


WAYPOINT_HEADERS = {"server": "istio-envoy", "x-envoy-upstream-service-time": "2"}
ALLOWED = Observation(Outcome.ALLOWED, 200, WAYPOINT_HEADERS)
L4 = Observation(Outcome.L4_DENIED, None, error="RemoteProtocolError: Server disconnected")
L7 = Observation(Outcome.L7_DENIED, 403, {"server": "istio-envoy"}, "RBAC: access denied")


def report(plan: RunPlan, outcomes: Mapping[str, Observation], problems: Mapping[str, BatchProblem] = {}) -> RunReport:
    """A report where each batch holds the observations of its requests found in ``outcomes``."""
    batches = []
    for batch in plan.batches:
        problem = problems.get(batch.identity.role.value)
        seen = {} if problem else {r.id: outcomes[r.id] for r in batch.requests if r.id in outcomes}
        batches.append(BatchReport(batch.key, f"Pod {batch.identity.namespace}/probe-x", seen, problem))
    return RunReport(plan.run_id, tuple(batches))


def compliant(plan: RunPlan) -> dict[str, Observation]:
    """What a compliant mesh answers to every planned request."""
    by_expectation = {Outcome.ALLOWED: ALLOWED, Outcome.L4_DENIED: L4, Outcome.L7_DENIED: L7}
    return {r.id: by_expectation[r.expect] for b in plan.batches for r in b.requests}


def static_finding(check: Any, status: Status, target: str = CATALOG) -> Finding:
    evidence = (Evidence(f"config of {check.id}", "spec", status.value, "static evidence"),)
    return Finding(check=check, target=target, status=status, message=f"static {status.value}", evidence=evidence)
