"""The test control plane behaves as a real cluster's API server for what the auditor relies on.

Checks the pinned release, the Istio and Gateway API CRDs (installed, Established, validating),
RBAC, ValidatingAdmissionPolicy, the ServiceAccount admission plugin, and the launcher's
up/status/env/down cycle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

from testrigs.devtools import controlplane
from testrigs.devtools.controlplane import KubeAPI

SCRIPT = controlplane.REPO_ROOT / "scripts" / "controlplane"
ISTIO_CRDS = 15  # istio.io/istio release-1.31: manifests/charts/base/files/crd-all.gen.yaml
GATEWAY_API_CRDS = 10  # sigs.k8s.io/gateway-api v1.6.0: config/crd/standard


def _crd_names() -> set[str]:
    names = set()
    for path in controlplane.crd_manifests():
        with path.open() as handle:
            documents = [doc for doc in yaml.safe_load_all(handle) if doc]
        names |= {doc["metadata"]["name"] for doc in documents if doc["kind"] == "CustomResourceDefinition"}
    return names


def _error_body(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body or "{}")
    return body


def _as_dict(custom_object: object) -> dict[str, Any]:
    # CustomObjectsApi is typed as returning object; custom resources come back as JSON dicts.
    assert isinstance(custom_object, dict)
    return custom_object


def _eventually(attempt: Callable[[], bool], timeout: float = 15.0) -> bool:
    # RBAC and admission policies take effect through informers, a moment after they are stored.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if attempt():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.kube
def test_version_reports_the_pinned_release(kube_api: KubeAPI) -> None:
    pinned = controlplane.read_pins().kubernetes
    with kube_api.new_client() as api:
        version = client.VersionApi(api).get_code()
    assert version.git_version == pinned
    assert (version.major, version.minor) == tuple(pinned.removeprefix("v").split(".")[:2])


@pytest.mark.kube
def test_every_istio_and_gateway_api_crd_is_established(kube_api: KubeAPI) -> None:
    expected = _crd_names()
    istio = {name for name in expected if name.endswith(".istio.io")}
    gateway = {name for name in expected if name.endswith(".gateway.networking.k8s.io")}
    assert (len(istio), len(gateway)) == (ISTIO_CRDS, GATEWAY_API_CRDS)
    with kube_api.new_client() as api:
        crds = client.ApiextensionsV1Api(api).list_custom_resource_definition().items
    conditions = {
        crd.metadata.name: {c.type: c.status for c in crd.status.conditions or []}
        for crd in crds
        if crd.metadata and crd.status
    }
    assert expected <= conditions.keys()
    not_established = {n for n in expected if conditions[n].get("Established") != "True"}
    assert not not_established, f"CRDs not Established: {sorted(not_established)}"


@pytest.mark.kube
def test_authorization_policy_is_accepted(kube_api: KubeAPI, kube_namespace: str) -> None:
    manifest = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-frontend
  namespace: {kube_namespace}
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: backend
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/{kube_namespace}/sa/frontend"]
    to:
    - operation:
        methods: ["GET"]
        ports: ["8080"]
"""
    output = kube_api.apply_text(manifest)
    assert "authorizationpolicy.security.istio.io/allow-frontend created" in output
    with kube_api.new_client() as api:
        stored = _as_dict(
            client.CustomObjectsApi(api).get_namespaced_custom_object(
                "security.istio.io", "v1", kube_namespace, "authorizationpolicies", "allow-frontend"
            )
        )
    assert stored["spec"]["action"] == "ALLOW"
    assert stored["spec"]["rules"][0]["to"][0]["operation"]["ports"] == ["8080"]


@pytest.mark.kube
def test_waypoint_gateway_is_accepted_and_defaulted(kube_api: KubeAPI, kube_namespace: str) -> None:
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "labels": {"istio.io/waypoint-for": "service"}},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }
    with kube_api.new_client() as api:
        created = _as_dict(
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", kube_namespace, "gateways", gateway
            )
        )
    listener = created["spec"]["listeners"][0]
    assert (listener["port"], listener["protocol"]) == (15008, "HBONE")
    # The CRD's schema defaults are applied by the API server, as on a cluster.
    assert listener["allowedRoutes"] == {"namespaces": {"from": "Same"}}


@pytest.mark.kube
def test_invalid_peer_authentication_is_rejected_with_422(kube_api: KubeAPI, kube_namespace: str) -> None:
    invalid = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict"},
        "spec": {"mtls": {"mode": "STRICTLY"}},
    }
    with kube_api.new_client() as api, pytest.raises(ApiException) as rejected:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "security.istio.io", "v1", kube_namespace, "peerauthentications", invalid
        )
    body = _error_body(rejected.value)
    assert rejected.value.status == 422, "the CRD schema must reject mtls.mode STRICTLY"
    assert body["reason"] == "Invalid"
    # The schema's enum rejects the value; the server adds that CEL rules were then skipped.
    causes = {cause["field"]: cause["reason"] for cause in body["details"]["causes"]}
    assert causes["spec.mtls.mode"] == "FieldValueNotSupported"
    assert 'spec.mtls.mode: Unsupported value: "STRICTLY"' in body["message"]


@pytest.mark.kube
def test_rbac_forbids_a_service_account_without_bindings(kube_api: KubeAPI, kube_namespace: str) -> None:
    user = f"system:serviceaccount:{kube_namespace}:auditor"
    with kube_api.new_client() as admin:
        core = client.CoreV1Api(admin)
        core.create_namespaced_service_account(
            kube_namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="auditor"))
        )
        core.list_namespaced_pod(kube_namespace)  # the admin may
    with kube_api.new_client() as impersonated:
        impersonated.set_default_header("Impersonate-User", user)
        with pytest.raises(ApiException) as forbidden:
            client.CoreV1Api(impersonated).list_namespaced_pod(kube_namespace)
    assert forbidden.value.status == 403
    assert f'User "{user}" cannot list resource "pods"' in _error_body(forbidden.value)["message"]


@pytest.mark.kube
def test_rbac_grants_what_a_role_binding_allows(kube_api: KubeAPI, kube_namespace: str) -> None:
    kube_api.apply_text(
        f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [list]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: auditor-reads-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects:
- {{kind: ServiceAccount, name: auditor, namespace: {kube_namespace}}}
""",
        namespace=kube_namespace,
    )

    refusals: list[int] = []

    def can_list() -> bool:
        try:
            client.CoreV1Api(impersonated).list_namespaced_pod(kube_namespace)
        except ApiException as error:
            refusals.append(error.status)
            return False
        return True

    with kube_api.new_client() as impersonated:
        impersonated.set_default_header("Impersonate-User", f"system:serviceaccount:{kube_namespace}:auditor")
        assert _eventually(can_list), f"the RoleBinding never took effect: {refusals}"
    assert set(refusals) <= {403}


@pytest.mark.kube
def test_validating_admission_policy_is_enforced(kube_api: KubeAPI, kube_namespace: str) -> None:
    name = f"deny-forbidden-key-{uuid.uuid4().hex[:8]}"
    policy = f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}}
  validations:
  - expression: "!has(object.data) || !('forbidden' in object.data)"
    message: no forbidden key
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {kube_namespace}}}
"""
    kube_api.apply_text(policy)
    denials: list[ApiException] = []
    try:
        with kube_api.new_client() as api:
            assert _eventually(lambda: _configmap_denied(api, kube_namespace, denials))
    finally:
        kube_api.kubectl(
            "delete",
            f"validatingadmissionpolicybinding/{name}",
            f"validatingadmissionpolicy/{name}",
            "--ignore-not-found",
        )
    assert denials[-1].status == 422
    assert f"ValidatingAdmissionPolicy '{name}'" in _error_body(denials[-1])["message"]


def _configmap_denied(api: ApiClient, namespace: str, denials: list[ApiException]) -> bool:
    config_map = client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="probe-"), data={"forbidden": "x"})
    try:
        client.CoreV1Api(api).create_namespaced_config_map(namespace, config_map)
    except ApiException as error:
        denials.append(error)
        return True
    return False  # created before the policy was active; the namespace teardown deletes it


@pytest.mark.kube
def test_pod_needs_its_service_account_to_exist(kube_api: KubeAPI, kube_namespace: str) -> None:
    # No controller-manager: nothing creates the "default" ServiceAccount, and the
    # ServiceAccount admission plugin, enabled as on real clusters, refuses the pod.
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="app"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="app:1")]),
    )
    with kube_api.new_client() as api:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(kube_namespace, pod)
        assert refused.value.status == 403
        assert 'serviceaccount "default" not found' in _error_body(refused.value)["message"]
        core.create_namespaced_service_account(
            kube_namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
        created = core.create_namespaced_pod(kube_namespace, pod)
    assert created.spec is not None
    assert created.spec.service_account_name == "default"
    assert created.spec.node_name is None  # no scheduler either


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=300)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.kube
@pytest.mark.usefixtures("kube_api")  # builds the binaries, or fails the test saying why
def test_cli_up_status_env_and_down_twice(tmp_path: Path) -> None:
    state_dir = tmp_path / "cp"
    started = time.monotonic()
    up = _cli("up", f"--state-dir={state_dir}")
    warm_start = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines()[-1] == str(state_dir / "kubeconfig")
    assert warm_start < 30, f"warm start took {warm_start:.1f} s"
    assert _cli("up", f"--state-dir={state_dir}").stdout.splitlines()[-1] == up.stdout.strip()
    assert _cli("status", f"--state-dir={state_dir}").returncode == 0
    env = _cli("env", f"--state-dir={state_dir}").stdout.strip()
    assert env.splitlines()[0] == f"export KUBECONFIG={state_dir / 'kubeconfig'}"
    on_path = subprocess.run(
        ["bash", "-c", f"{env}\ncommand -v kubectl >&2\nkubectl version -o json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert on_path.returncode == 0, on_path.stderr  # the built kubectl, on PATH, reaches this server
    assert json.loads(on_path.stdout)["serverVersion"]["gitVersion"].startswith("v1.")
    assert Path(on_path.stderr.strip()).parent.parent.parent.name == "controlplane"  # the cache's kubectl
    pids = [p["pid"] for p in json.loads((state_dir / "state.json").read_text())["processes"]]
    assert len(pids) == 2
    assert all(_alive(pid) for pid in pids)

    first, second = (
        _cli("down", f"--state-dir={state_dir}"),
        _cli("down", f"--state-dir={state_dir}"),
    )

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert not state_dir.exists()
    assert not any(_alive(pid) for pid in pids)
    assert _cli("status", f"--state-dir={state_dir}").returncode == 1
    print(f"warm start via scripts/controlplane up: {warm_start:.1f} s", file=sys.stderr)


def test_down_refuses_to_delete_a_directory_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = _cli("down", f"--state-dir={tmp_path}")
    assert result.returncode == 1
    assert "refusing to delete" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_recorded_pid_taken_by_another_process_counts_as_gone() -> None:
    own = controlplane.Process("pytest", os.getpid(), start_ticks=0)
    assert not own.running()  # so down would never signal this unrelated process


def test_staging_modules_must_match_the_kubernetes_release(tmp_path: Path) -> None:
    go_mod = controlplane.GO_MODULE_DIR / "go.mod"
    pins = controlplane.read_pins(go_mod)
    assert pins.kubernetes.startswith("v1.34.")
    assert pins.etcd.startswith("v3.6.")
    skewed = tmp_path / "go.mod"
    staging = "v0." + pins.kubernetes.removeprefix("v1.")
    replace_line = f"k8s.io/api => k8s.io/api {staging}"
    assert replace_line in go_mod.read_text()
    skewed.write_text(go_mod.read_text().replace(replace_line, "k8s.io/api => k8s.io/api v0.34.0"))
    with pytest.raises(controlplane.ControlPlaneError, match=r"k8s\.io/api v0\.34\.0"):
        controlplane.read_pins(skewed)
