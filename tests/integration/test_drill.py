"""Chaos drills (#13) against the real API server with the real istiod, as the chart's ServiceAccount.

The chart is ``helm install``ed with ``drill.enabled`` into the control plane that runs istiod (so
the waypoint's status, the Service's ``istio.io/WaypointBound`` and the AuthorizationPolicy's
conditions are istiod's), and every drill runs with a ServiceAccount token, so the drill Role and
the drill-guard admission policy are what confine it. Drill alerts go through slack-sdk to the
local Slack server (tests/slack_server.py).
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from auditor import cli
from auditor.adapters import kubeapi
from auditor.adapters.k8s.drill import KINDS, KubeSandbox, SandboxViolationError
from auditor.adapters.kubeapi import ApiRefused, build_api_client
from auditor.app import run_drill
from auditor.core.drill import DRIFT_KINDS, MANAGED_BY, ObjectRef
from auditor.settings import DrillSettings, Settings, SlackSettings
from testrigs.devtools import charttools
from testrigs.devtools.istio import IstioAPI
from tests.cases import ROOT
from tests.slack_server import slack_server

RULES = str(ROOT / "rules" / "retail-store.yaml")
SUFFIX = uuid.uuid4().hex[:6]  # namespaces never finish deleting here: never reuse a name
RELEASE = f"drill-auditor-{SUFFIX}"
NAMESPACE = f"drill-auditor-{SUFFIX}"
SERVICE_ACCOUNT = "drill-auditor"
SANDBOX = f"drill-sandbox-{SUFFIX}"
VALUES = (
    f"fullnameOverride={RELEASE}",
    f"serviceAccount.name={SERVICE_ACCOUNT}",
    f"probes.inMeshNamespace=drill-probes-{SUFFIX}",
    f"probes.outsideNamespace=drill-outside-{SUFFIX}",
    "policyReports=false",
    "drill.enabled=true",
    f"drill.namespace={SANDBOX}",
)
# Every kind a drill could write, plus pods and namespaces: compared before and after a drill
# (ConfigMaps are left out: istiod's leader election rewrites its own; the drill Role has none).
WATCHED = (
    "/api/v1/namespaces",
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/serviceaccounts",
    "/apis/apps/v1/deployments",
    "/apis/security.istio.io/v1/peerauthentications",
    "/apis/security.istio.io/v1/authorizationpolicies",
    "/apis/gateway.networking.k8s.io/v1/gateways",
)

pytestmark = pytest.mark.kube


@dataclass(frozen=True)
class Release:
    kubeconfig: Path  # authenticates as the chart's ServiceAccount


@pytest.fixture(scope="module")
def release(istio_api: IstioAPI, tmp_path_factory: pytest.TempPathFactory) -> Release:
    helm = charttools.build((charttools.HELM,))["helm"]
    argv = [str(helm), "upgrade", "--install", RELEASE, str(charttools.CHART_DIR), f"--namespace={NAMESPACE}"]
    argv += ["--create-namespace", f"--kubeconfig={istio_api.kubeconfig}", *(f"--set={v}" for v in VALUES)]
    installed = subprocess.run(argv, capture_output=True, text=True, check=False, env=charttools.helm_env())
    assert installed.returncode == 0, installed.stderr
    token = istio_api.kubectl("create", "token", SERVICE_ACCOUNT, f"--namespace={NAMESPACE}", "--duration=2h").strip()
    config = copy.deepcopy(yaml.safe_load(istio_api.kubeconfig.read_text(encoding="utf-8")))
    config["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = SERVICE_ACCOUNT
    path = tmp_path_factory.mktemp("drill-auditor") / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    _wait_for_rbac(path)
    return Release(path)


def _wait_for_rbac(kubeconfig: Path) -> None:
    """New bindings reach the authorizer through an informer: wait until a drill's list is allowed."""
    api = build_api_client(str(kubeconfig), None)
    for _ in range(100):
        try:
            kubeapi.get_json(api, f"/apis/apps/v1/namespaces/{SANDBOX}/deployments")
        except ApiRefused:
            time.sleep(0.1)
        else:
            return
    pytest.fail("the chart's drill Role never allowed listing Deployments in the sandbox")


def _settings(base_url: str, **drill: Any) -> Settings:
    return Settings(
        slack=SlackSettings(
            mode="bot", bot_token=SecretStr("xoxb-drill-token"), channel="CALERTS", base_url=base_url + "api/"
        ),
        drill=DrillSettings(namespace=SANDBOX, poll_s=0.5, detect_timeout_s=90, **drill),
    )


def _outside(istio_api: IstioAPI) -> dict[tuple[str, str, str], str]:
    """(collection, namespace, name) -> uid, labels, annotations and spec of every watched object
    outside the sandbox (not the status: the workload stand-in keeps writing Deployments' status)."""
    with istio_api.new_client() as api:
        seen = {}
        for path in WATCHED:
            for item in kubeapi.get_json(api, path).get("items") or []:
                meta = item["metadata"]
                if meta.get("namespace") != SANDBOX:
                    kept = (meta["uid"], meta.get("labels"), meta.get("annotations"), item.get("spec"))
                    seen[(path, meta.get("namespace", ""), meta["name"])] = json.dumps(kept, sort_keys=True)
        return seen


def _settled_outside(istio_api: IstioAPI) -> dict[tuple[str, str, str], str]:
    """``_outside`` once it stops changing (the stand-in still starts the chart's daemon pods)."""
    previous = _outside(istio_api)
    for _ in range(30):
        time.sleep(1.0)
        current = _outside(istio_api)
        if current == previous:
            return current
        previous = current
    pytest.fail("the cluster outside the sandbox never settled")


def test_a_drill_detects_alerts_and_resolves_every_drift_kind_and_touches_nothing_else(
    istio_api: IstioAPI, release: Release
) -> None:
    before = _settled_outside(istio_api)
    with slack_server() as (base, slack):
        started = time.monotonic()
        result = run_drill(
            str(release.kubeconfig),
            None,
            [RULES],
            _settings(base, slack_channel="CDRILLS", slack_thread_ts="1700000000.000001"),
        )
        took = time.monotonic() - started
        messages = list(slack.messages)
    after = _outside(istio_api)
    print(f"drill: {took:.1f} s; " + ", ".join(f"{o.kind} {o.time_to_detect_s} s" for o in result.outcomes))
    assert result.baseline, result.baseline_detail
    assert result.aborted is None
    assert [o.kind for o in result.outcomes] == [k.name for k in DRIFT_KINDS]
    for outcome in result.outcomes:
        expected = next(k.promise.value for k in DRIFT_KINDS if k.name == outcome.kind)
        assert (outcome.promise, outcome.detected, outcome.alerted, outcome.resolved) == (expected, True, True, True)
        assert outcome.time_to_detect_s is not None
        assert outcome.time_to_alert_s is not None
        assert 0 <= outcome.time_to_detect_s <= outcome.time_to_alert_s
    assert result.leftover_objects == 0
    assert result.ok
    # Every message is a drill's, in the drill thread; none is an incident (the outbox's event type).
    assert len(messages) == 2 * len(DRIFT_KINDS)
    assert all(m["text"].startswith("[DRILL]") for m in messages)
    assert {m.get("thread_ts") for m in messages} == {"1700000000.000001"}
    assert {m["metadata"]["event_type"] for m in messages} == {"mesh_auditor_drill"}
    changed = {key for key in before.keys() & after.keys() if before[key] != after[key]}
    assert not changed
    assert before.keys() == after.keys()


def test_drill_command_prints_the_json_contract(
    istio_api: IstioAPI, release: Release, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``auditor drill --output json`` with Slack off: detected and resolved, never alerted (exit 1)."""
    monkeypatch.setenv("AUDITOR_DRILL__NAMESPACE", SANDBOX)
    monkeypatch.setenv("AUDITOR_DRILL__POLL_S", "0.5")
    argv = ["drill", "--kubeconfig", str(release.kubeconfig), "--rules", RULES, "--kind", "principals-widened"]
    handlers = logging.getLogger().handlers[:]
    try:
        code = cli.main([*argv, "--output", "json"])
    finally:
        # main() points the root logger at this test's captured stderr, which closes after it.
        logging.getLogger().handlers[:] = handlers
    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document["drills"] == [
        {
            "kind": "principals-widened",
            "promise": "principal-allowlist",
            "detected": True,
            "time_to_detect_s": document["drills"][0]["time_to_detect_s"],
            "alerted": False,
            "time_to_alert_s": None,
            "resolved": True,
            "detected_by": ["static"],  # no --active: the static audit alone
            "detail": "the drill alert was not delivered (Slack off or refused)",
        }
    ]
    assert isinstance(document["drills"][0]["time_to_detect_s"], float)
    assert document["cleanup"] == {"leftover_objects": 0}


def test_kill_switch_stops_a_drill_before_it_writes(istio_api: IstioAPI, release: Release) -> None:
    istio_api.kubectl("label", "namespace", SANDBOX, "mesh-auditor.dev/drills=off", "--overwrite")
    try:
        with slack_server() as (base, slack):
            result = run_drill(str(release.kubeconfig), None, [RULES], _settings(base))
            assert not slack.messages
    finally:
        istio_api.kubectl("label", "namespace", SANDBOX, "mesh-auditor.dev/drills-")
    assert result.aborted is not None
    assert "kill switch" in result.aborted
    assert result.outcomes == ()
    assert result.leftover_objects == 0
    with slack_server() as (base, _):
        setting = run_drill(str(release.kubeconfig), None, [RULES], _settings(base, kill_switch=True))
    assert setting.aborted is not None
    assert "drill.kill_switch" in setting.aborted


def test_sweep_removes_what_a_crashed_drill_left(istio_api: IstioAPI, release: Release) -> None:
    labels = {MANAGED_BY[0]: MANAGED_BY[1], "mesh-auditor.dev/drill": "canary"}
    leftover = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "crashed", "labels": labels}}
    istio_api.apply_text(yaml.safe_dump(leftover), namespace=SANDBOX)
    with build_api_client(str(release.kubeconfig), None) as api:
        sandbox = KubeSandbox(api, SANDBOX)
        assert sandbox.leftovers() >= 1
        assert sandbox.sweep() >= 1
        assert sandbox.leftovers() == 0


def test_the_adapter_refuses_to_write_outside_the_sandbox(release: Release) -> None:
    with build_api_client(str(release.kubeconfig), None) as api:
        sandbox = KubeSandbox(api, SANDBOX)
        outside = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "default"}}
        with pytest.raises(SandboxViolationError):
            sandbox.create(outside)
        with pytest.raises(SandboxViolationError):
            sandbox.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": SANDBOX}})


def _labelled(kind: str, api_version: str, name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    labels = {MANAGED_BY[0]: MANAGED_BY[1], "mesh-auditor.dev/drill": "canary"}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        **extra,
    }


SERVICE_SPEC = {"spec": {"ports": [{"port": 80}]}}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # RBAC: nothing outside the sandbox is writable, whatever it carries.
        ("POST", "/api/v1/namespaces/default/services", _labelled("Service", "v1", "d", "default", **SERVICE_SPEC)),
        ("POST", "/apis/apps/v1/namespaces/default/deployments", _labelled("Deployment", "apps/v1", "d", "default")),
        ("DELETE", "/api/v1/namespaces/default/services/kubernetes", None),
        (
            "POST",
            "/apis/security.istio.io/v1/namespaces/istio-system/peerauthentications",
            _labelled("PeerAuthentication", "security.istio.io/v1", "d", "istio-system", spec={"mtls": {"mode": "PERMISSIVE"}}),
        ),
        ("POST", f"/api/v1/namespaces/{SANDBOX}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
        ("POST", f"/api/v1/namespaces/{SANDBOX}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        ("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"x-{SUFFIX}"}}),
    ],
    ids=["service-in-default", "deployment-in-default", "delete-kubernetes-service", "mesh-wide-peerauthentication",
         "secret-in-sandbox", "configmap-in-sandbox", "namespace"],
)  # fmt: skip
def test_the_drill_identity_is_refused_outside_its_sandbox(
    release: Release, method: str, path: str, body: dict[str, Any] | None
) -> None:
    with build_api_client(str(release.kubeconfig), None) as api, pytest.raises(ApiRefused) as refused:
        kubeapi.request_json(api, method, path, body=body)
    assert refused.value.status == 403


def test_drill_guard_refuses_unlabelled_objects_in_the_sandbox(istio_api: IstioAPI, release: Release) -> None:
    """Inside the sandbox the Role allows the write; the admission policy refuses any object not
    labelled as a drill's (creating one, or patching or deleting one someone else made)."""
    name = f"foreign-{uuid.uuid4().hex[:6]}"
    istio_api.kubectl("create", "serviceaccount", name, f"--namespace={SANDBOX}")
    with build_api_client(str(release.kubeconfig), None) as api:
        plain = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"{name}-new"}}
        with pytest.raises(ApiRefused) as created:
            kubeapi.request_json(api, "POST", f"/api/v1/namespaces/{SANDBOX}/serviceaccounts", body=plain)
        foreign = f"/api/v1/namespaces/{SANDBOX}/serviceaccounts/{name}"
        with pytest.raises(ApiRefused) as patched:
            kubeapi.json_patch(api, foreign, [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}])
        with pytest.raises(ApiRefused) as deleted:
            kubeapi.request_json(api, "DELETE", foreign)
        own = _labelled("ServiceAccount", "v1", f"{name}-own", SANDBOX)
        kubeapi.request_json(api, "POST", f"/api/v1/namespaces/{SANDBOX}/serviceaccounts", body=own)  # the control
        path = f"/api/v1/namespaces/{SANDBOX}/serviceaccounts/{name}-own"
        with pytest.raises(ApiRefused) as relabelled:  # a drill object may not shed its label either
            kubeapi.json_patch(api, path, [{"op": "remove", "path": "/metadata/labels/mesh-auditor.dev~1drill"}])
        KubeSandbox(api, SANDBOX).sweep()
    for refused in (created, patched, deleted, relabelled):
        assert refused.value.status in {403, 422}, refused.value
        assert "drill" in refused.value.message


def test_patch_of_an_object_in_the_drill_kinds_only(release: Release) -> None:
    """The drill's JSON Patch path is confined too: an ObjectRef is always in the sandbox."""
    with build_api_client(str(release.kubeconfig), None) as api, pytest.raises(SandboxViolationError):
        KubeSandbox(api, SANDBOX).patch(ObjectRef("v1", "Secret", "x"), [])


@pytest.fixture(autouse=True)
def _no_leftovers(istio_api: IstioAPI) -> Iterator[None]:
    yield
    # Whatever a failed test left, the next one starts from an empty sandbox.
    with istio_api.new_client() as api:
        KubeSandbox(api, SANDBOX).sweep()


def test_rendered_drill_role_is_exactly_the_adapters_calls() -> None:
    """One rule per API group, the canary's kinds only (``KINDS``), and only the verbs the adapter
    uses: nothing to read Secrets, no pods, no get/update/watch, no deletecollection."""
    helm = charttools.build((charttools.HELM,))["helm"]
    rendered = charttools.documents(charttools.template(helm, set_values=VALUES, release=RELEASE, namespace=NAMESPACE))
    (role,) = [d for d in rendered if d["kind"] == "Role" and d["metadata"]["name"] == f"{RELEASE}-drill"]
    assert role["metadata"]["namespace"] == SANDBOX
    granted = {
        (g, r): tuple(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    wanted = {
        ("" if prefix == "/api/v1" else prefix.split("/")[2], plural): ("create", "list", "patch", "delete")
        for prefix, plural in KINDS.values()
    }
    assert granted == wanted
    guard = [d for d in rendered if d["kind"] == "ValidatingAdmissionPolicy" and "drill-guard" in d["metadata"]["name"]]
    assert len(guard) == 1
    assert set(guard[0]["spec"]["matchConstraints"]["resourceRules"][0]["resources"]) == {p for _, p in KINDS.values()}


def test_chart_refuses_the_root_namespace_as_sandbox() -> None:
    helm = charttools.build((charttools.HELM,))["helm"]
    with pytest.raises(charttools.ChartToolError, match="root namespace"):
        charttools.template(
            helm, set_values=("drill.enabled=true", "drill.namespace=istio-system"), release="r", namespace="n"
        )
