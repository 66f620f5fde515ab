"""The probe-pod runner against the real API server, the stand-in kubelet and real Envoys.

Which cluster behaviour gives which batch report: results collected, a foreign run id rejected,
Pending past the deadline inconclusive with its reason, a refused create inconclusive, every pod
deleted even when the run fails midway, orphans swept by label.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.adapters.probepods.kube import PodApi
from auditor.adapters.probepods.podspec import PLAN_ENV, PodOptions, probe_pod
from auditor.adapters.probepods.runner import PodProbeRunner, RunnerOptions
from auditor.core.model import Status
from auditor.core.probing.probeplan import PlanOptions, RunPlan, plan_probes
from auditor.core.probing.probereport import BatchReport, RunReport
from probes.wire import Outcome
from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.podexecutor import PodExecutor
from tests.integration.probepods.conftest import UNPULLABLE, Mesh
from tests.unit.probing.builders import catalog_rules, header_values, posture, snapshot

pytestmark = [pytest.mark.kube, pytest.mark.envoy]

OUTSIDE = "default/catalog:outside:plaintext"
INTRUDER = "default/catalog:intruder:with-headers"
DEADLINE_S = 30.0


def _plan(mesh: Mesh, *, namespace: str = "default", control: bool = False) -> RunPlan:
    """Catalog behind a waypoint: the outsider meets ztunnel's L4 refusal, the intruder the waypoint's 403."""
    rules = posture({**catalog_rules(control=control), "namespace": namespace})
    target = f"{namespace}/catalog"
    overrides = {
        f"outside:{target}": mesh.base(mesh.l4_deny),
        f"intruder:{target}": mesh.base(mesh.l7_deny_all),
        f"control:{target}": mesh.base(mesh.waypoint),
    }
    options = PlanOptions(control_allowed=control, url_overrides=overrides, timeout_s=2.0)
    return plan_probes(rules, snapshot(target), header_values(rules), f"t{uuid.uuid4().hex[:10]}", options)


MakeRunner = Callable[..., tuple[PodProbeRunner, PodApi]]


@pytest.fixture
def make_runner() -> Iterator[MakeRunner]:
    """Runners over their own API clients (``api_factory`` wraps the calls), closed after the test."""
    with ExitStack() as clients:

        def make(kube: KubeAPI, api_factory: type[PodApi] = PodApi, **options: Any) -> tuple[PodProbeRunner, PodApi]:
            pods = api_factory(clients.enter_context(kube.new_client()))
            settings = {"deadline_s": DEADLINE_S, **options}
            return PodProbeRunner(pods, RunnerOptions(**settings)), pods

        yield make


def _by_role(report: RunReport) -> dict[str, BatchReport]:
    return {b.batch.split(":")[0]: b for b in report.batches}


def _pods_of_run(kube: KubeAPI, run_id: str) -> list[str]:
    listing = json.loads(
        kube.kubectl("get", "pods", "--all-namespaces", f"--selector=mesh-auditor.dev/run-id={run_id}", "--output=json")
    )
    return [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in listing["items"]]


def _eventually_no_pods(kube: KubeAPI, run_id: str) -> None:
    for _ in range(100):
        if not _pods_of_run(kube, run_id):
            return
        time.sleep(0.1)
    pytest.fail(f"pods of run {run_id} were left behind: {_pods_of_run(kube, run_id)}")


class RecordingPodApi(PodApi):
    """Keeps the API server's answer to each create: the pod as stored, after admission."""

    stored: list[dict[str, Any]]

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        created = super().create(namespace, manifest)
        self.stored = [*getattr(self, "stored", []), created]
        return created


def test_auditor_runs_hardened_pods_and_collects_their_results(
    deployed: KubeAPI, auditor_kubeconfig: Path, executor: PodExecutor, mesh: Mesh, make_runner: MakeRunner
) -> None:
    """As the auditor's ServiceAccount (RBAC + probe-guard): results per request, then no pod left."""
    plan = _plan(mesh)
    runner, pods = make_runner(KubeAPI(auditor_kubeconfig, deployed.kubectl_path), RecordingPodApi)
    report = runner.run(plan)
    batches = _by_role(report)
    assert batches["outside"].problem is None, batches["outside"].problem
    assert batches["outside"].observations[OUTSIDE].outcome is Outcome.L4_DENIED
    assert batches["intruder"].observations[INTRUDER].outcome is Outcome.L7_DENIED
    assert batches["intruder"].observations[INTRUDER].status == 403
    assert report.run_id == plan.run_id
    _eventually_no_pods(deployed, plan.run_id)
    assert isinstance(pods, RecordingPodApi)
    _assert_hardened(pods.stored, plan.run_id)


def _assert_hardened(stored: list[dict[str, Any]], run_id: str) -> None:
    """Field by field, the pods as the API server stored them."""
    assert sorted(p["metadata"]["namespace"] for p in stored) == ["mesh-auditor-outside", "mesh-auditor-probes"]
    for pod in stored:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "mesh-auditor"
        assert meta["labels"]["mesh-auditor.dev/run-id"] == run_id
        assert meta["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
        assert spec["serviceAccountName"] == "mesh-auditor-probe"
        assert spec["automountServiceAccountToken"] is False
        assert spec["restartPolicy"] == "Never"
        assert spec["activeDeadlineSeconds"] == 120
        assert spec["nodeSelector"] == {"eks.amazonaws.com/compute-type": "auto"}
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert container["securityContext"] == {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["terminationMessagePolicy"] == "File"
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys()
        assert not [v for v in spec.get("volumes", []) if "projected" in v]  # no token volume was injected
    outside = next(p for p in stored if p["metadata"]["namespace"] == "mesh-auditor-outside")
    assert outside["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"


class ForeignRunPodApi(PodApi):
    """Creates pods whose plan carries another run's id: their reports must be rejected."""

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        env = manifest["spec"]["containers"][0]["env"]
        for variable in env:
            if variable["name"] == PLAN_ENV:
                plan = json.loads(variable["value"])
                variable["value"] = json.dumps({**plan, "run_id": "someone-elses-run"})
        return super().create(namespace, manifest)


def test_report_of_another_run_is_rejected(
    deployed: KubeAPI, executor: PodExecutor, mesh: Mesh, make_runner: MakeRunner
) -> None:
    """The pods ran and reported, but for run someone-elses-run: ERROR, no observation kept."""
    plan = _plan(mesh)
    runner, _ = make_runner(deployed, ForeignRunPodApi)
    for batch in runner.run(plan).batches:
        assert batch.problem is not None
        assert batch.problem.status is Status.ERROR
        assert "belongs to run 'someone-elses-run'" in batch.problem.reason
        assert batch.observations == {}
    _eventually_no_pods(deployed, plan.run_id)


@pytest.mark.parametrize(
    ("pod_options", "reason"),
    [
        (PodOptions(node_selector={"eks.amazonaws.com/compute-type": "hybrid"}), "Unschedulable"),
        (PodOptions(image=UNPULLABLE), "ErrImagePull"),
    ],
    ids=["no-matching-node", "image-pull"],
)
def test_pod_pending_past_the_deadline_is_inconclusive_with_the_reason(
    deployed: KubeAPI,
    executor: PodExecutor,
    mesh: Mesh,
    make_runner: MakeRunner,
    pod_options: PodOptions,
    reason: str,
) -> None:
    """No Auto Mode node matches, or the image cannot be pulled: INCONCLUSIVE naming why, pods deleted."""
    plan = _plan(mesh)
    runner, _ = make_runner(deployed, pod=pod_options, deadline_s=3.0)
    for batch in runner.run(plan).batches:
        assert batch.problem is not None
        assert batch.problem.status is Status.INCONCLUSIVE
        assert "still Pending at the 3 s deadline" in batch.problem.reason
        assert reason in batch.problem.reason
    _eventually_no_pods(deployed, plan.run_id)


def test_refused_create_is_inconclusive_and_names_the_missing_role(
    deployed: KubeAPI,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    mesh: Mesh,
    kube_namespace: str,
    make_runner: MakeRunner,
) -> None:
    """A control pod in a namespace without the opt-in Role: 403, INCONCLUSIVE; the other pods still run."""
    plan = _plan(mesh, namespace=kube_namespace, control=True)
    runner, _ = make_runner(KubeAPI(auditor_kubeconfig, deployed.kubectl_path))
    batches = _by_role(runner.run(plan))
    control = batches["control"].problem
    assert control is not None
    assert control.status is Status.INCONCLUSIVE
    assert "403" in control.reason
    assert "deploy/control-probes-default.yaml" in control.reason
    assert batches["outside"].problem is None
    assert batches["outside"].observations[f"{kube_namespace}/catalog:outside:plaintext"].outcome is Outcome.L4_DENIED


class FailingPodApi(PodApi):
    """Raises an unexpected error at the ``fail_at`` call: the second create, or the first watch."""

    fail_at = "create"
    creates = 0

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        if self.fail_at == "create" and self.creates == 2:
            raise RuntimeError("injected failure during create")
        return super().create(namespace, manifest)

    def watch(self, namespace: str, selector: str, resource_version: str, timeout_s: int) -> Any:
        if self.fail_at == "watch":
            raise RuntimeError("injected failure during watch")
        return super().watch(namespace, selector, resource_version, timeout_s)


@pytest.mark.parametrize("fail_at", ["create", "watch"])
def test_every_pod_is_deleted_when_the_run_fails_midway(
    deployed: KubeAPI, executor: PodExecutor, mesh: Mesh, make_runner: MakeRunner, fail_at: str
) -> None:
    """An exception after the first pod exists still deletes every pod the run created."""
    plan = _plan(mesh)
    runner, pods = make_runner(deployed, FailingPodApi)
    assert isinstance(pods, FailingPodApi)
    pods.fail_at = fail_at
    with pytest.raises(RuntimeError, match="injected failure"):
        runner.run(plan)
    _eventually_no_pods(deployed, plan.run_id)


def test_sweep_deletes_finished_and_old_auditor_pods_only(
    deployed: KubeAPI, mesh: Mesh, make_runner: MakeRunner
) -> None:
    """Finished orphans go at once, running ones only past orphan_age_s; other pods are never touched."""
    namespace = "mesh-auditor-probes"
    batch = _plan(mesh).batches[1]
    young = _create(deployed, probe_pod(batch, "{}", "old-run", PodOptions()))
    finished = _create(deployed, probe_pod(batch, "{}", "old-run", PodOptions()))
    deployed.kubectl(
        "patch", "pod", finished, f"--namespace={namespace}", "--subresource=status", "--type=merge",
        '--patch={"status": {"phase": "Succeeded"}}',
    )  # fmt: skip
    foreign_manifest = probe_pod(batch, "{}", "old-run", PodOptions())
    foreign_manifest["metadata"]["labels"] = {"app": "someone-else"}
    foreign = _create(deployed, foreign_manifest)
    try:
        patient, _ = make_runner(deployed, orphan_age_s=900.0)
        assert patient.sweep([namespace]) == [f"Pod {namespace}/{finished}"]
        eager, _ = make_runner(deployed, orphan_age_s=0.0)
        assert eager.sweep([namespace], keep_run="current") == [f"Pod {namespace}/{young}"]
        assert _pods_of_run(deployed, "old-run") == []
        assert foreign in deployed.kubectl("get", "pods", f"--namespace={namespace}", "--output=name")
    finally:
        deployed.kubectl("delete", "pod", foreign, f"--namespace={namespace}", "--ignore-not-found", "--wait=false")


def _create(kube: KubeAPI, manifest: dict[str, Any]) -> str:
    manifest["metadata"]["name"] = f"orphan-{uuid.uuid4().hex[:8]}"
    del manifest["metadata"]["generateName"]
    kube.apply_text(yaml.safe_dump(manifest))
    return str(manifest["metadata"]["name"])


# --- header values from Secrets (issue #10, item 7) ------------------------------------------------

SECRET_TOKEN = "internal-retail-token"  # what the waypoint stand-in admits (tests/integration/probes)


def _secret_plan(mesh: Mesh) -> RunPlan:
    """The intruder meets the token-checking waypoint: it is admitted only if the Secret's value arrived."""
    service = catalog_rules(control=False)
    service["probe"] = {"port": 80, "path": "/ok"}  # the app behind the stand-in answers 200 there
    service["requiredHeaders"] = [
        {"name": "x-auth-token", "value": {"secretRef": {"name": "catalog-token", "key": "token"}}}
    ]
    rules = posture(service)
    overrides = {
        "outside:default/catalog": mesh.base(mesh.l4_deny),
        "intruder:default/catalog": mesh.base(mesh.waypoint),
    }
    options = PlanOptions(url_overrides=overrides, timeout_s=2.0)
    values = {("default/catalog", "x-auth-token"): SECRET_TOKEN}
    return plan_probes(rules, snapshot("default/catalog"), values, f"t{uuid.uuid4().hex[:10]}", options)


@pytest.fixture
def probe_secret(deployed: KubeAPI) -> Iterator[None]:
    """The Secret the platform team provides in the probe namespace (the auditor never reads it)."""
    deployed.kubectl(
        "create", "secret", "generic", "catalog-token", f"--from-literal=token={SECRET_TOKEN}",
        "--namespace=mesh-auditor-probes",
    )  # fmt: skip
    try:
        yield
    finally:
        deployed.kubectl("delete", "secret", "catalog-token", "--namespace=mesh-auditor-probes", "--ignore-not-found")


def test_header_values_reach_probe_pods_from_a_secret_and_no_pod_spec_holds_them(
    deployed: KubeAPI,
    auditor_kubeconfig: Path,
    executor: PodExecutor,
    mesh: Mesh,
    make_runner: MakeRunner,
    probe_secret: None,
) -> None:
    """As the auditor's ServiceAccount (which may not read Secrets): the header arrives, the specs hold no value."""
    plan = _secret_plan(mesh)
    runner, pods = make_runner(KubeAPI(auditor_kubeconfig, deployed.kubectl_path), RecordingPodApi)
    report = runner.run(plan)
    batches = _by_role(report)
    assert batches["intruder"].problem is None, batches["intruder"].problem
    # The waypoint admits exactly the Secret's value: ALLOWED proves the kubelet's value was sent.
    assert batches["intruder"].observations[INTRUDER].outcome is Outcome.ALLOWED
    assert isinstance(pods, RecordingPodApi)
    assert len(pods.stored) == 2
    for pod in pods.stored:  # as the API server stored them, every field
        assert SECRET_TOKEN not in json.dumps(pod)
    intruder_env = next(p for p in pods.stored if "intruder" in p["metadata"]["generateName"])["spec"]["containers"][0][
        "env"
    ]
    assert intruder_env[-1]["valueFrom"]["secretKeyRef"] == {"name": "catalog-token", "key": "token", "optional": False}
    assert not executor.errors


def test_a_missing_probe_secret_is_inconclusive_with_the_kubelets_reason(
    deployed: KubeAPI, auditor_kubeconfig: Path, executor: PodExecutor, mesh: Mesh, make_runner: MakeRunner
) -> None:
    """No Secret in the probe namespace: the pod never starts, the batch is INCONCLUSIVE naming the Secret."""
    plan = _secret_plan(mesh)
    runner, _ = make_runner(KubeAPI(auditor_kubeconfig, deployed.kubectl_path), deadline_s=4.0)
    problem = _by_role(runner.run(plan))["intruder"].problem
    assert problem is not None
    assert problem.status is Status.INCONCLUSIVE
    assert 'CreateContainerConfigError: secret "catalog-token" not found' in problem.reason
    _eventually_no_pods(deployed, plan.run_id)
