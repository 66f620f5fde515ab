"""Every enforcement point (#13): ready endpoints probed by pod IP, the budget's fair rotation,
and which observation at which endpoint produced which finding."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from auditor.adapters.probepods.podspec import PodOptions, probe_pod
from auditor.core.decode import decode_object
from auditor.core.endpoints import FROM_PODS, Endpoint, rotate
from auditor.core.model import Finding, Severity, Status
from auditor.core.probing.probeplan import PlanOptions, RunPlan, plan_probes
from auditor.core.probing.probereport import Observation
from auditor.core.probing.verdict import probe_findings
from auditor.core.snapshot import (
    AuthorizationPolicy,
    AuthzRule,
    AuthzSource,
    Container,
    ContainerPort,
    Gateway,
    Listener,
    ObjectMeta,
    ReadProblem,
    Service,
    ServicePort,
    Snapshot,
    TargetRef,
    Workload,
)
from auditor.daemon.metrics import DaemonMetrics
from probes.wire import Outcome
from tests.unit.probing.builders import ALLOWED, L4, RUN, catalog_rules, compliant, header_values, posture, report

RULES = posture(catalog_rules())
OFFLINE = f" (endpoints from {FROM_PODS})"
CATALOG = Service(ObjectMeta("Service", "catalog", "default"), {"app": "catalog"}, (ServicePort(80, "http"),))


def _pod(name: str, node: str, ip: str, *, ready: bool = True) -> Workload:
    return Workload(
        meta=ObjectMeta("Pod", name, "default"),
        pod_labels={"app": "catalog"},
        pod_annotations={},
        service_account="catalog",
        containers=(Container("app", (ContainerPort(8080, "http"),)),),
        is_pod=True,
        node_name=node,
        ready=ready,
        pod_ip=ip,
    )


PODS = (
    _pod("catalog-a", "node-1", "10.0.1.5"),
    _pod("catalog-b", "node-2", "10.0.2.7"),
    _pod("catalog-c", "node-2", "10.0.2.9", ready=False),
)


def _plan(budget: int = 16, rotation: int = 0, severity: Severity = Severity.LOW) -> RunPlan:
    options = PlanOptions(control_allowed=True, endpoint_budget=budget, rotation=rotation, bypass_severity=severity)
    return plan_probes(RULES, Snapshot(services=(CATALOG,), workloads=PODS), header_values(RULES), RUN, options)


def _findings(plan: RunPlan, changes: Mapping[str, Observation]) -> dict[str, Finding]:
    outcomes = {**compliant(plan), **changes}
    return {f.check.id: f for f in probe_findings(plan, report(plan, outcomes), ())}


def test_ready_endpoints_are_addressed_by_pod_ip_and_target_port() -> None:
    plan = _plan()
    urls = sorted(r.wire.url for b in plan.batches for r in b.requests if "endpoint" in r.variant and not r.wire.after)
    assert urls == [
        "http://10.0.1.5:8080/catalog/tags",  # outside, plaintext
        "http://10.0.1.5:8080/catalog/tags",  # intruder, around the waypoint
        "http://10.0.2.7:8080/catalog/tags",
        "http://10.0.2.7:8080/catalog/tags",
    ]
    assert plan.coverage["default/catalog"].describe() == "2/2 ready endpoints probed by pod IP" + OFFLINE


def test_an_uncaptured_endpoint_fails_strict_mtls_naming_pod_and_node() -> None:
    plan = _plan()
    found = _findings(plan, {"default/catalog:outside:endpoint-plaintext:default/catalog-b": ALLOWED})
    strict = found["strict-mtls.probe"]
    assert strict.status is Status.FAIL
    assert "endpoint 10.0.2.7:8080 (pod default/catalog-b on node node-2)" in strict.message
    assert ("Pod default/catalog-b", "node-2") in {(e.object, e.value) for e in strict.evidence}
    assert strict.details["endpoints"] == "2/2"


def test_every_endpoint_refusing_plaintext_passes_with_the_coverage() -> None:
    found = _findings(_plan(), {})
    assert found["strict-mtls.probe"].status is Status.PASS
    assert (
        "2/2 ready endpoints probed by pod IP" + OFFLINE + ", each refused plaintext"
        in found["strict-mtls.probe"].message
    )
    assert found["waypoint-enrollment.pod-ip-bypass"].status is Status.PASS


def test_an_unobserved_endpoint_is_never_a_pass() -> None:
    plan = _plan()
    outcomes = compliant(plan)
    del outcomes["default/catalog:outside:endpoint-plaintext:default/catalog-a"]
    found = {f.check.id: f for f in probe_findings(plan, report(plan, outcomes), ())}
    assert found["strict-mtls.probe"].status is Status.INCONCLUSIVE
    assert "pod default/catalog-a on node node-1" in found["strict-mtls.probe"].message


def test_intruder_by_pod_ip_around_the_waypoint_is_the_bypass_finding_with_its_severity() -> None:
    plan = _plan(severity=Severity.HIGH)
    found = _findings(plan, {"default/catalog:intruder:endpoint-intruder:default/catalog-a": ALLOWED})
    bypass = found["waypoint-enrollment.pod-ip-bypass"]
    assert bypass.status is Status.FAIL
    assert bypass.check.severity is Severity.HIGH
    assert "around the waypoint" in bypass.message
    assert found["principal-allowlist.probe"].status is Status.PASS  # by Service name, the waypoint refused it


def test_budget_rotates_fairly_over_every_endpoint() -> None:
    endpoints = [Endpoint("ns/s", f"ns/p{i}", "n", f"10.0.0.{i}", 80) for i in range(5)]
    seen: list[str] = []
    for cycle in range(3):  # ceil(5 / 2) cycles cover them all
        seen += [e.pod for e in rotate(endpoints, 2, cycle)]
    assert set(seen) == {e.pod for e in endpoints}
    assert rotate(endpoints, 0, 0) == ()
    plan = _plan(budget=1, rotation=1)
    assert [e.pod for e in plan.endpoints] == ["default/catalog-b"]
    assert plan.coverage["default/catalog"].describe() == "1/2 ready endpoints probed by pod IP" + OFFLINE


def test_no_endpoint_requests_without_a_budget_or_pods() -> None:
    plan = _plan(budget=0)
    assert not plan.endpoints
    assert "waypoint-enrollment.pod-ip-bypass" not in _findings(plan, {})


def test_probe_pods_of_a_run_spread_over_nodes() -> None:
    plan = _plan()
    batch = plan.batches[0]
    manifest = probe_pod(batch, "{}", plan.run_id, PodOptions())
    assert manifest["spec"]["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"mesh-auditor.dev/run-id": RUN}},
        }
    ]


def test_coverage_is_a_metric() -> None:
    metrics = DaemonMetrics()
    plan = _plan(budget=1)
    metrics.record_probe_report(plan, report(plan, compliant(plan)))
    assert metrics.registry.get_sample_value("mesh_auditor_probe_endpoints", {"state": "ready"}) == 2
    assert metrics.registry.get_sample_value("mesh_auditor_probe_endpoints", {"state": "probed"}) == 1


# --- endpoints from EndpointSlices (live clusters) -------------------------------------------------


def _slice(name: str, entries: list[dict[str, Any]], *, service: str = "catalog", port: str = "") -> Snapshot:
    """A live snapshot with CATALOG, PODS and one EndpointSlice decoded from API-shaped JSON."""
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": entries,
        "ports": [{"name": port, "port": 8080, "protocol": "TCP"}],
    }
    return Snapshot(services=(CATALOG,), workloads=PODS, endpoint_slices=tuple(decode_object(body)), live=True)  # type: ignore[arg-type]  # decode_object returns the Decoded union; this body is one EndpointSlice


def _entry(ip: str, pod: str | None, node: str | None, **conditions: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod is not None:
        entry["targetRef"] = {"kind": "Pod", "namespace": "default", "name": pod}
    if node is not None:
        entry["nodeName"] = node
    return entry


def _live_plan(snapshot: Snapshot) -> RunPlan:
    options = PlanOptions(control_allowed=True, endpoint_budget=16)
    return plan_probes(RULES, snapshot, header_values(RULES), RUN, options)


def test_live_endpoints_come_from_the_endpointslices_not_the_pods() -> None:
    """Slice entries decide: not-ready and terminating entries are left out, an absent ready means
    ready (the API's default), the port is the slice port named as the Service port."""
    snapshot = _slice(
        "catalog-abc",
        [
            _entry("10.0.9.1", "catalog-x", "node-9"),  # no conditions: ready
            _entry("10.0.9.2", "catalog-y", "node-9", ready=False),
            _entry("10.0.9.3", "catalog-z", "node-9", ready=True, terminating=True),
            _entry("10.0.9.4", "catalog-w", "node-8", ready=True, serving=True, terminating=False),
        ],
    )
    plan = _live_plan(snapshot)
    assert [(e.pod, e.node, e.url_base) for e in plan.endpoints] == [
        ("default/catalog-w", "node-8", "http://10.0.9.4:8080"),
        ("default/catalog-x", "node-9", "http://10.0.9.1:8080"),
    ]
    assert plan.coverage["default/catalog"].describe() == "2/2 ready endpoints probed by pod IP"


def test_a_selectorless_service_with_a_manual_slice_is_probed_by_its_addresses() -> None:
    manual = Service(ObjectMeta("Service", "catalog", "default"), None, (ServicePort(80, 8080, name="web"),))
    snapshot = dataclasses.replace(
        _slice("catalog-manual", [_entry("192.0.2.10", None, None)], port="web"), services=(manual,)
    )
    plan = _live_plan(snapshot)
    assert [(e.key, e.url_base) for e in plan.endpoints] == [("192.0.2.10:8080", "http://192.0.2.10:8080")]
    found = _findings(plan, {"default/catalog:outside:endpoint-plaintext:192.0.2.10:8080": ALLOWED})
    strict = found["strict-mtls.probe"]
    assert strict.status is Status.FAIL
    assert "endpoint 192.0.2.10:8080 (no pod named by its EndpointSlice on node (unknown))" in strict.message


def test_missing_slices_while_pods_are_ready_is_inconclusive_never_a_pass() -> None:
    snapshot = Snapshot(services=(CATALOG,), workloads=PODS, live=True)
    plan = _live_plan(snapshot)
    assert not plan.endpoints
    strict = _findings(plan, {})["strict-mtls.probe"]
    assert strict.status is Status.INCONCLUSIVE
    assert "no EndpointSlice names Service default/catalog" in strict.message
    assert "2 Ready pod(s)" in strict.message


def test_unreadable_slices_are_inconclusive_naming_the_permission() -> None:
    problem = ReadProblem("EndpointSlice", "discovery.k8s.io/v1 endpointslices", "forbidden", "list endpointslices")
    snapshot = Snapshot(services=(CATALOG,), workloads=PODS, problems=(problem,), live=True)
    strict = _findings(_live_plan(snapshot), {})["strict-mtls.probe"]
    assert strict.status is Status.INCONCLUSIVE
    assert "needs list endpointslices" in strict.message


def test_a_live_service_without_pods_or_slices_has_no_endpoint_gap() -> None:
    snapshot = Snapshot(services=(CATALOG,), live=True)
    plan = _live_plan(snapshot)
    assert plan.coverage == {}
    assert _findings(plan, {})["strict-mtls.probe"].status is Status.PASS


def test_offline_endpoints_from_pods_say_so_in_the_evidence() -> None:
    strict = _findings(_plan(), {})["strict-mtls.probe"]
    assert ("endpoints from", FROM_PODS) in {(e.field, e.value) for e in strict.evidence}


def test_a_node_trigger_probes_that_nodes_endpoints_first_and_names_the_change() -> None:
    """Over budget, the rotation alone would probe catalog-a this cycle; the trigger on node-2 makes
    it catalog-b, and the strict-mtls evidence names the change (node and ztunnel pod)."""
    reason = "ztunnel pod istio-system/ztunnel-x on node node-2 became Ready"
    options = PlanOptions(
        control_allowed=True,
        endpoint_budget=1,
        rotation=0,
        focus_nodes=frozenset({"node-2"}),
        focus_reason=reason,
    )
    plan = plan_probes(RULES, Snapshot(services=(CATALOG,), workloads=PODS), header_values(RULES), RUN, options)
    assert [e.pod for e in plan.endpoints] == ["default/catalog-b"]
    assert [e.pod for e in _plan(budget=1, rotation=0).endpoints] == ["default/catalog-a"]
    strict = _findings(plan, {})["strict-mtls.probe"]
    assert strict.status is Status.PASS
    assert ("Probe cycle", "triggered by", reason, "endpoints on node-2") in {
        (e.object, e.field, e.value, e.note) for e in strict.evidence
    }


# --- a pod's own (workload) waypoint (semantics §4.8) -------------------------------------------


def _own_waypoint_plan(target: TargetRef) -> RunPlan:
    """The catalog pods use the waypoint catalog-waypoint (waypoint-for all) for traffic to their IPs;
    one ALLOW admits only ui, targeting ``target``."""
    labels = {"istio.io/use-waypoint": "catalog-waypoint"}
    pods = tuple(dataclasses.replace(p, pod_labels={**p.pod_labels, **labels}) for p in PODS)
    gateway = Gateway(
        ObjectMeta("Gateway", "catalog-waypoint", "default", labels={"istio.io/waypoint-for": "all"}),
        "istio-waypoint",
        (Listener("mesh", 15008, "HBONE"),),
    )
    allow = AuthorizationPolicy(
        ObjectMeta("AuthorizationPolicy", "allow-ui", "default"),
        "ALLOW",
        None,
        (target,),
        (AuthzRule(sources=(AuthzSource(principals=("cluster.local/ns/default/sa/ui",)),)),),
    )
    snapshot = Snapshot(services=(CATALOG,), workloads=pods, gateways=(gateway,), authorization_policies=(allow,))
    options = PlanOptions(control_allowed=True, endpoint_budget=16)
    return plan_probes(RULES, snapshot, header_values(RULES), RUN, options)


def _intruder_expectations(plan: RunPlan) -> set[Outcome]:
    return {r.expect for b in plan.batches for r in b.requests if r.variant.startswith("endpoint-intruder:")}


def test_a_pods_own_waypoint_refusing_the_intruder_is_no_bypass() -> None:
    """A policy targeting the Gateway applies to traffic addressed to the pod IP through it: an L7 denial."""
    plan = _own_waypoint_plan(TargetRef("Gateway", "catalog-waypoint", "gateway.networking.k8s.io"))
    assert _intruder_expectations(plan) == {Outcome.L7_DENIED}
    assert {e.waypoint for e in plan.endpoints} == {"default/catalog-waypoint"}
    bypass = _findings(plan, {})["waypoint-enrollment.pod-ip-bypass"]
    assert bypass.status is Status.PASS
    assert "the pod's own waypoint (default/catalog-waypoint)" in bypass.message
    # ztunnel's refusal where the waypoint's was expected is not the promised refusal: never a PASS.
    l4 = {r.id: L4 for b in plan.batches for r in b.requests if r.variant.startswith("endpoint-intruder:")}
    assert _findings(plan, l4)["waypoint-enrollment.pod-ip-bypass"].status is Status.INCONCLUSIVE


def test_a_pods_own_waypoint_without_the_services_policy_still_expects_ztunnel() -> None:
    """A policy targeting the Service never sees pod-IP traffic, even through the pod's own waypoint."""
    plan = _own_waypoint_plan(TargetRef("Service", "catalog", ""))
    assert _intruder_expectations(plan) == {Outcome.L4_DENIED}
    found = _findings(plan, {"default/catalog:intruder:endpoint-intruder:default/catalog-a": ALLOWED})
    assert found["waypoint-enrollment.pod-ip-bypass"].status is Status.FAIL
    assert "through its own waypoint default/catalog-waypoint" in found["waypoint-enrollment.pod-ip-bypass"].message
