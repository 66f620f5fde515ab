"""The drill engine (core.drill) and its runner (auditor.daemon.drillrun), with an in-memory sandbox
judged by the real static audit: which drift produced which detection, alert and resolution."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from auditor.adapters.rules.loader import load_rules
from auditor.core.audit import run_static_audit
from auditor.core.decode import build_snapshot, decode_object
from auditor.core.drill import (
    DRIFT_KINDS,
    Action,
    Canary,
    CanaryError,
    CanaryOptions,
    ObjectRef,
    applicable,
    build_canary,
    choose_source,
    drift_for,
    drift_kind,
    drill_steps,
    judge,
)
from auditor.core.model import Finding, Property
from auditor.core.posture import MeshSettings
from auditor.core.probing.probeplan import WITH_HEADERS, PlanOptions, Role, RunPlan, plan_probes
from auditor.core.probing.probereport import BatchReport, Observation, RunReport
from auditor.core.probing.verdict import probe_findings
from auditor.daemon.drillrun import DrillRunner, RunOptions
from auditor.daemon.drills import DrillMetrics, DrillSchedule
from probes.wire import Outcome
from tests.cases import ROOT

POSTURE = load_rules([str(ROOT / "rules" / "retail-store.yaml")])
SANDBOX = "mesh-auditor-drill"
NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": SANDBOX, "labels": {"istio.io/dataplane-mode": "ambient"}},
}


def _canary() -> Canary:
    return build_canary(choose_source(POSTURE, None), POSTURE.mesh, CanaryOptions(namespace=SANDBOX))


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _apply(document: dict[str, Any], operations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/remove/replace/test on maps and list indexes: enough for the drifts."""
    result = copy.deepcopy(document)
    for op in operations:
        *parents, last = _pointer(str(op["path"]))
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"test failed at {op['path']}"
        elif op["op"] == "remove":
            del node[key]
        else:
            node[key] = copy.deepcopy(op["value"])
    return result


class FakeSandbox:
    def __init__(self, killed_after: int | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[tuple[str, str]] = []  # (object, first op's kind)
        self.killed_after = killed_after
        self.checks = 0

    def create(self, manifest: Mapping[str, Any]) -> None:
        assert manifest["metadata"]["namespace"] == SANDBOX
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = copy.deepcopy(dict(manifest))

    def patch(self, ref: ObjectRef, operations: Sequence[Mapping[str, Any]]) -> None:
        key = (ref.kind, ref.name)
        self.objects[key] = _apply(self.objects[key], operations)
        self.patches.append((str(ref), str(operations[-1]["op"])))

    def sweep(self) -> int:
        count = len(self.objects)
        self.objects.clear()
        return count

    def leftovers(self) -> int:
        return len(self.objects)

    def killed(self) -> bool:
        self.checks += 1
        return self.killed_after is not None and self.checks > self.killed_after


class FakeAlerter:
    def __init__(self, *, accept: bool = True) -> None:
        self.sent: list[str] = []
        self.accept = accept

    def send(self, text: str) -> bool:
        self.sent.append(text)
        return self.accept


def _audit(sandbox: FakeSandbox, canary: Canary) -> Callable[[], tuple[Finding, ...]]:
    def audit() -> tuple[Finding, ...]:
        documents = [NAMESPACE, *sandbox.objects.values()]
        snapshot = build_snapshot([d for o in documents for d in decode_object(o)])
        return run_static_audit(snapshot, canary.posture, canary.header_values())

    return audit


def _run(sandbox: FakeSandbox, alerter: FakeAlerter, canary: Canary | None = None, **options: Any) -> Any:
    canary = canary or _canary()
    runner = DrillRunner(
        canary, sandbox, _audit(sandbox, canary), alerter, RunOptions(poll_s=0.01, timeout_s=0.2, **options)
    )
    return runner.run(drill_steps(canary, DRIFT_KINDS))


def test_every_drift_kind_is_detected_on_its_promise_alerted_and_resolved() -> None:
    sandbox, alerter = FakeSandbox(), FakeAlerter()
    result = _run(sandbox, alerter)
    assert result.baseline
    assert [(o.kind, o.promise, o.detected, o.alerted, o.resolved) for o in result.outcomes] == [
        ("permissive-peer-authentication", "strict-mtls", True, True, True),
        ("use-waypoint-removed", "waypoint-enrollment", True, True, True),
        ("principals-widened", "principal-allowlist", True, True, True),
        ("header-condition-removed", "required-headers", True, True, True),
        ("pod-opted-out", "strict-mtls", True, True, True),
    ]
    assert result.leftover_objects == 0
    assert result.ok
    assert len(alerter.sent) == 10
    assert all(text.startswith("[DRILL]") for text in alerter.sent)
    # Injected and reverted in turn, one at a time.
    assert [op for _, op in sandbox.patches][:2] == ["replace", "replace"]
    assert len(sandbox.patches) == 2 * len(DRIFT_KINDS)


def test_each_drift_alone_fails_its_promise() -> None:
    canary = _canary()
    for kind in DRIFT_KINDS:
        drift = drift_for(kind, canary)
        objects = [
            _apply(o, drift.inject) if (o["kind"], o["metadata"]["name"]) == (drift.ref.kind, drift.ref.name) else o
            for o in canary.objects
        ]
        snapshot = build_snapshot([d for o in [NAMESPACE, *objects] for d in decode_object(o)])
        judgement = judge(run_static_audit(snapshot, canary.posture, canary.header_values()), canary)
        assert judgement.detects(kind.promise), kind.name
        assert not judgement.passes


def test_an_audit_blind_to_drift_reports_not_detected_and_sends_nothing() -> None:
    """A pipeline that never sees the drift is what a drill exists to catch: detected false."""
    sandbox, alerter = FakeSandbox(), FakeAlerter()
    canary = _canary()
    reference = FakeSandbox()
    for manifest in canary.objects:
        reference.create(manifest)
    blind = _audit(reference, canary)  # always the undrifted canary
    runner = DrillRunner(canary, sandbox, blind, alerter, RunOptions(poll_s=0.01, timeout_s=0.1))
    result = runner.run(drill_steps(canary, [drift_kind("principals-widened")]))
    (outcome,) = result.outcomes
    assert (outcome.detected, outcome.alerted, outcome.time_to_detect_s) == (False, False, None)
    assert "not detected within" in outcome.detail
    assert not alerter.sent
    assert not result.ok
    assert result.leftover_objects == 0


def test_kill_switch_mid_drill_reverts_the_injected_drift_and_sweeps() -> None:
    sandbox, alerter = FakeSandbox(killed_after=4), FakeAlerter()
    reverted: list[str] = []
    original = sandbox.sweep

    def sweep() -> int:
        reverted.extend(op for _, op in sandbox.patches)
        return original()

    sandbox.sweep = sweep  # type: ignore[method-assign]  # records the patches made before each sweep
    result = _run(sandbox, alerter)
    assert result.aborted is not None
    assert "kill switch" in result.aborted
    assert result.leftover_objects == 0
    # The drift injected before the switch was reverted before the final sweep.
    assert reverted.count("replace") % 2 == 0


def test_setting_kill_switch_starts_nothing() -> None:
    sandbox = FakeSandbox()
    result = _run(sandbox, FakeAlerter(), kill_switch=True)
    assert result.aborted == "kill switch on (setting drill.kill_switch)"
    assert result.outcomes == ()
    assert not sandbox.patches


def test_undelivered_alert_is_alerted_false() -> None:
    result = _run(FakeSandbox(), FakeAlerter(accept=False))
    assert all(o.detected and not o.alerted and o.resolved for o in result.outcomes)
    assert not result.ok


def test_a_baseline_that_never_passes_aborts_before_any_drift() -> None:
    sandbox = FakeSandbox()
    canary = _canary()

    def failing() -> tuple[Finding, ...]:
        return _audit(FakeSandbox(), canary)()  # an empty sandbox: the canary is missing

    runner = DrillRunner(canary, sandbox, failing, FakeAlerter(), RunOptions(poll_s=0.01, timeout_s=0.05))
    result = runner.run(drill_steps(canary, DRIFT_KINDS))
    assert not result.baseline
    assert result.aborted is not None
    assert "baseline" in result.aborted
    assert not sandbox.patches
    assert result.leftover_objects == 0


def test_a_stop_request_aborts() -> None:
    stop = threading.Event()
    stop.set()
    canary, sandbox = _canary(), FakeSandbox()
    runner = DrillRunner(canary, sandbox, _audit(sandbox, canary), FakeAlerter(), RunOptions(), stop=stop)
    result = runner.run(drill_steps(canary, DRIFT_KINDS))
    assert result.aborted == "stop requested (the daemon is shutting down)"


def test_canary_mirrors_the_protection_not_the_secrets() -> None:
    canary = _canary()
    assert canary.source == "default/catalog"
    assert canary.protected.allowed_principals == [f"cluster.local/ns/{SANDBOX}/sa/ui"]
    assert [h.name for h in canary.protected.required_headers] == ["x-auth-token"]
    assert "internal-retail-token" not in repr(canary.objects)
    for manifest in canary.objects:
        assert manifest["metadata"]["namespace"] == SANDBOX
        assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mesh-auditor"


def test_the_root_namespace_is_never_a_sandbox() -> None:
    with pytest.raises(CanaryError, match="root namespace"):
        build_canary(choose_source(POSTURE, None), MeshSettings(), CanaryOptions(namespace="istio-system"))


def test_kinds_that_do_not_apply_are_skipped() -> None:
    source = choose_source(POSTURE, None).model_copy(update={"waypoint": None, "required_headers": []})
    canary = build_canary(source, POSTURE.mesh, CanaryOptions(namespace=SANDBOX))
    steps = drill_steps(canary, DRIFT_KINDS)
    drilled = [s.drift.kind.name for s in steps if s.action is Action.INJECT and s.drift]
    assert drilled == ["permissive-peer-authentication", "principals-widened", "pod-opted-out"]
    assert applicable(drift_kind("use-waypoint-removed"), canary) == "default/catalog has no waypoint to mirror"


def test_unknown_service_and_kind_are_named() -> None:
    with pytest.raises(CanaryError, match="default/nope is not a protected Service"):
        choose_source(POSTURE, "default/nope")
    with pytest.raises(ValueError, match="unknown drift kind 'nope'"):
        drift_kind("nope")


def test_a_promise_without_findings_is_never_a_pass() -> None:
    judgement = judge((), _canary())
    assert not judgement.passes
    assert not judgement.detects(Property.STRICT_MTLS)


def test_schedule_drills_on_the_leader_only_and_records_times(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = DrillMetrics(registry)
    result = _run(FakeSandbox(), FakeAlerter())
    ran: list[bool] = []
    leading = [False]
    stop = threading.Event()

    def run(stopping: threading.Event) -> Any:
        assert stopping is stop
        ran.append(True)
        return result

    schedule = DrillSchedule(run, 0.01, lambda: leading[0], metrics, tmp_path, stop)
    schedule.start()
    time.sleep(0.1)
    assert not ran  # a standby never drills
    leading[0] = True
    deadline = time.monotonic() + 5
    while not list((tmp_path / "drills").glob("*.md")) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    schedule.join(5)
    assert ran
    detected = registry.get_sample_value("mesh_auditor_drill_time_to_detect_seconds", {"kind": "pod-opted-out"})
    assert detected is not None
    assert detected >= 0
    assert registry.get_sample_value("mesh_auditor_drill_proven", {"kind": "principals-widened"}) == 1
    assert (registry.get_sample_value("mesh_auditor_drill_runs_total", {"result": "proven"}) or 0) >= 1
    (report,) = sorted((tmp_path / "drills").glob("*.md"))[:1]
    assert report.read_text(encoding="utf-8").startswith("## Drills")


def test_drill_metrics_exist_before_the_first_drill() -> None:
    registry = CollectorRegistry()
    DrillMetrics(registry)
    for kind in DRIFT_KINDS:
        assert registry.get_sample_value("mesh_auditor_drill_time_to_detect_seconds", {"kind": kind.name}) == -1
    assert registry.get_sample_value("mesh_auditor_drill_runs_total", {"result": "aborted"}) == 0


def test_drill_command_input_errors_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Named problems, exit 2, before any cluster is contacted (the kubeconfig does not exist)."""
    from auditor import cli  # noqa: PLC0415 - the command line only for this test

    rules = str(ROOT / "rules" / "retail-store.yaml")
    handlers = logging.getLogger().handlers[:]
    monkeypatch.setattr(logging.getLogger(), "handlers", handlers)  # main() re-points them at this test's stderr
    assert cli.main(["drill", "--rules", rules]) == 2
    assert cli.main(["drill", "--kubeconfig", "/nonexistent", "--rules", rules, "--kind", "nope"]) == 2
    monkeypatch.setenv("AUDITOR_DRILL__NAMESPACE", "istio-system")
    assert cli.main(["drill", "--kubeconfig", "/nonexistent", "--rules", rules]) == 2
    err = capsys.readouterr().err
    assert "a drill needs a cluster" in err
    assert "unknown drift kind(s) nope" in err
    assert "Istio's root namespace" in err


# --- detection by probes (#13: "the probes detect it on the right promise") ------------------------

_PLAIN = Observation(Outcome.ALLOWED, 200, {"server": "canary"})  # an answer that met no waypoint
_VIA_WAYPOINT = Observation(Outcome.ALLOWED, 200, {"server": "istio-envoy", "x-envoy-upstream-service-time": "1"})
_L4 = Observation(Outcome.L4_DENIED, None, error="RemoteProtocolError: Server disconnected")
_L7 = Observation(Outcome.L7_DENIED, 403, {"server": "istio-envoy"}, "RBAC: access denied")


class MeshRunner:
    """A ``ProbeRunner`` that answers each planned request as ambient Istio would for the sandbox's
    current objects (semantics §1-§4): capture by the Deployment's dataplane-mode label, STRICT or
    PERMISSIVE from the PeerAuthentication, the waypoint hop from the Service's use-waypoint label,
    the waypoint's ALLOW rule from the AuthorizationPolicy. ``blind``: answers as if compliant."""

    def __init__(self, sandbox: FakeSandbox, canary: Canary, *, blind: bool = False) -> None:
        self.sandbox, self.canary, self.blind = sandbox, canary, blind
        self.runs = 0

    def run(self, plan: RunPlan) -> RunReport:
        self.runs += 1
        name = self.canary.protected.name
        objects = self.sandbox.objects
        deployment = objects[("Deployment", name)]
        captured = deployment["spec"]["template"]["metadata"]["labels"].get("istio.io/dataplane-mode") != "none"
        strict = objects[("PeerAuthentication", f"{name}-strict")]["spec"]["mtls"]["mode"] == "STRICT"
        via_waypoint = captured and "istio.io/use-waypoint" in objects[("Service", name)]["metadata"]["labels"]
        rule = objects[("AuthorizationPolicy", f"{name}-allow")]["spec"]["rules"][0]
        anyone = "*" in rule["from"][0]["source"]["principals"]
        header_checked = "when" in rule
        answered = _VIA_WAYPOINT if via_waypoint else _PLAIN
        batches = []
        for batch in plan.batches:
            seen: dict[str, Observation] = {}
            for request in batch.requests:
                role, variant = request.role, request.variant
                if self.blind:
                    seen[request.id] = {Outcome.ALLOWED: _VIA_WAYPOINT, Outcome.L4_DENIED: _L4}.get(request.expect, _L7)
                elif role is Role.OUTSIDE:
                    seen[request.id] = _PLAIN if not (captured and strict) else _L4
                elif role is Role.INTRUDER:
                    seen[request.id] = (_VIA_WAYPOINT if anyone else _L7) if via_waypoint else _PLAIN
                elif variant == WITH_HEADERS:
                    seen[request.id] = answered
                else:  # the control without a header, or with a near miss
                    seen[request.id] = _L7 if via_waypoint and header_checked else answered
            batches.append(BatchReport(batch.key, f"Pod {batch.identity.namespace}/probe-x", seen))
        return RunReport(plan.run_id, tuple(batches))


def _active_audit(sandbox: FakeSandbox, canary: Canary, runner: MeshRunner) -> Callable[[], tuple[Finding, ...]]:
    static = _audit(sandbox, canary)

    def audit() -> tuple[Finding, ...]:
        found = static()
        snapshot = build_snapshot([d for o in [NAMESPACE, *sandbox.objects.values()] for d in decode_object(o)])
        plan = plan_probes(canary.posture, snapshot, canary.header_values(), "run", PlanOptions(control_allowed=True))
        return found + probe_findings(plan, runner.run(plan), found)

    return audit


def _run_by_probes(*, blind: bool = False) -> tuple[Any, MeshRunner]:
    canary, sandbox = _canary(), FakeSandbox()
    runner = MeshRunner(sandbox, canary, blind=blind)
    options = RunOptions(poll_s=0.01, timeout_s=0.2, by_probes=True)
    drill = DrillRunner(canary, sandbox, _active_audit(sandbox, canary, runner), FakeAlerter(), options)
    return drill.run(drill_steps(canary, DRIFT_KINDS)), runner


def test_with_probes_each_drift_is_detected_by_the_probe_verdict_of_its_promise() -> None:
    result, runner = _run_by_probes()
    assert result.baseline, result.baseline_detail
    assert "by probes" in result.baseline_detail
    assert {o.kind: (o.promise, o.detected, o.detected_by) for o in result.outcomes} == {
        "permissive-peer-authentication": ("strict-mtls", True, ("static", "probe")),
        "use-waypoint-removed": ("waypoint-enrollment", True, ("static", "probe")),
        "principals-widened": ("principal-allowlist", True, ("static", "probe")),
        "header-condition-removed": ("required-headers", True, ("static", "probe")),
        "pod-opted-out": ("strict-mtls", True, ("static", "probe")),
    }
    assert all(o.alerted and o.resolved for o in result.outcomes)
    assert result.ok
    assert runner.runs > 0
    entry = result.as_dict()["drills"][0]
    assert entry["detected_by"] == ["static", "probe"]


def test_with_probes_a_drift_only_the_static_audit_sees_is_not_detected() -> None:
    """Probes that keep answering as if compliant: the static audit still fails each promise, but
    with probes on, detection is the probe verdict's: not detected, and the detail says so."""
    result, _ = _run_by_probes(blind=True)
    assert result.baseline
    for outcome in result.outcomes:
        assert not outcome.detected
        assert outcome.detected_by == ("static",)
        assert "the static audit detected it" in outcome.detail
    assert not result.ok


def test_without_probes_detection_is_static_only() -> None:
    result = _run(FakeSandbox(), FakeAlerter())
    assert {o.detected_by for o in result.outcomes} == {("static",)}
