"""The shipped RBAC, proven against the real API server as the auditor's own ServiceAccount.

The auditor authenticates with a real ServiceAccount token (TokenRequest), not impersonation,
so authentication, RBAC and the probe-guard admission policy all run as in a cluster.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.rbac import READER_ROLE, reader_cluster_role
from auditor.adapters.k8s.resources import AUTO_MODE_RESOURCES, SNAPSHOT_RESOURCES, Resource
from auditor.adapters.k8s.state import ConfigMapStateStore
from auditor.devtools.controlplane import KubeAPI
from tests.cases import ROOT
from tests.integration.live import AppliedCase, audit, statuses

DEPLOY = ROOT / "deploy"
RULES = str(ROOT / "rules" / "retail-store.yaml")
EXAMPLE = ROOT / "examples" / "retail-store"
AUDITOR = "system:serviceaccount:mesh-auditor:mesh-auditor"

pytestmark = pytest.mark.kube


def test_shipped_cluster_role_is_rendered_from_the_reader_table() -> None:
    """deploy/rbac.yaml's ClusterRole is exactly one list/watch rule per resource the reader lists;
    nothing reads Secrets or execs, and writes are limited to the daemon's own named objects."""
    shipped = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text(encoding="utf-8")) if d]
    roles = {d["metadata"]["name"]: d for d in shipped if d["kind"] == "ClusterRole"}
    assert set(roles) == {READER_ROLE, "mesh-auditor-policyreports", "mesh-auditor-automode"}
    assert roles[READER_ROLE] == reader_cluster_role()
    assert [r["apiGroups"] for r in roles["mesh-auditor-policyreports"]["rules"]] == [["wgpolicyk8s.io"]] * 2
    assert roles["mesh-auditor-automode"]["rules"] == [
        {"apiGroups": [r.group], "resources": [r.plural], "verbs": ["list"]} for r in AUTO_MODE_RESOURCES
    ]
    for document in shipped:
        for rule in document.get("rules", []):
            assert "secrets" not in rule["resources"]
            assert not {"pods/exec", "*"} & set(rule["resources"])
            assert not {"*", "escalate", "bind", "impersonate", "delete", "deletecollection"} & set(rule["verbs"]) or (
                rule["resources"] == ["pods"]  # probe pods only, and probe-guard limits them to its own
                or rule.get("resourceNames") == ["mesh-auditor"]  # its own PolicyReports only
            )
            assert "deletecollection" not in rule["verbs"]
            if "patch" in rule["verbs"]:
                assert rule["apiGroups"] == ["wgpolicyk8s.io"]
            if "update" in rule["verbs"]:  # only the daemon's own, named ConfigMap and Lease
                assert rule["resourceNames"] in (["mesh-auditor-state"], ["mesh-auditor-leader"])


@pytest.fixture(scope="module")
def auditor_kubeconfig(kube_api: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Installs deploy/ and returns a kubeconfig that authenticates as the auditor's ServiceAccount."""
    for name in ("namespaces.yaml", "serviceaccounts.yaml", "rbac.yaml", "probe-guard.yaml"):
        kube_api.apply(DEPLOY / name)
    token = kube_api.kubectl("create", "token", "mesh-auditor", "--namespace=mesh-auditor", "--duration=2h").strip()
    admin = yaml.safe_load(kube_api.kubeconfig.read_text(encoding="utf-8"))
    config = copy.deepcopy(admin)
    config["users"] = [{"name": "mesh-auditor", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "mesh-auditor"
    path = tmp_path_factory.mktemp("auditor") / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with AppliedCase(kube_api, _example_file(tmp_path_factory.mktemp("example")), tmp_path_factory.mktemp("applied")):
        yield path


def _example_file(directory: Path) -> Path:
    documents = [
        d for p in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d
    ]
    target = directory / "retail-store.yaml"
    target.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return target


def test_audit_succeeds_with_exactly_the_shipped_permissions(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    """As the ServiceAccount, the live audit reads everything and matches the admin's audit."""
    code, as_auditor = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", RULES)
    _, as_admin = audit("--kubeconfig", str(kube_api.kubeconfig), "--rules", RULES)
    assert code == 0
    assert statuses(as_auditor) == statuses(as_admin)
    assert not [f for f in as_auditor["findings"] if f["check"] == "audit.snapshot-read"]


@pytest.mark.parametrize("resource", SNAPSHOT_RESOURCES, ids=[r.qualified for r in SNAPSHOT_RESOURCES])
def test_removing_one_rule_reports_an_error_naming_that_permission(
    kube_api: KubeAPI, auditor_kubeconfig: Path, resource: Resource
) -> None:
    """Without one list permission the audit exits 3 with an ERROR that names it, never a pass."""
    reduced = reader_cluster_role()
    reduced["rules"] = [r for r in reduced["rules"] if r["resources"] != [resource.plural]]
    kube_api.apply_text(yaml.safe_dump(reduced))
    try:
        _wait_for_permission(kube_api, resource, allowed=False)
        code, document = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", RULES)
    finally:
        kube_api.apply_text(yaml.safe_dump(reader_cluster_role()))
        _wait_for_permission(kube_api, resource, allowed=True)
    errors = [f for f in document["findings"] if f["check"] == "audit.snapshot-read"]
    assert code == 3
    assert [(f["target"], f["status"]) for f in errors] == [(f"cluster/{resource.kind}", "error")]
    assert f"list {resource.qualified}" in errors[0]["message"]
    assert "forbidden" in errors[0]["message"]
    assert not [f for f in document["findings"] if f["status"] == "fail"]
    dependent = [f for f in document["findings"] if f["status"] == "error" and f["check"] != "audit.snapshot-read"]
    for finding in dependent:
        assert f"list {resource.qualified}" in finding["message"]


def _wait_for_permission(kube_api: KubeAPI, resource: Resource, *, allowed: bool) -> None:
    """RBAC changes reach the authorizer through an informer: wait until this one has."""
    for _ in range(100):
        if _can_i(kube_api, "list", resource.plural, group=resource.group) is allowed:
            return
        time.sleep(0.1)
    pytest.fail(f"RBAC change for {resource.qualified} never took effect")


def _can_i(kube_api: KubeAPI, verb: str, resource: str, *, group: str = "", namespace: str | None = None) -> bool:
    """A SubjectAccessReview for the auditor's ServiceAccount (what the authorizer would answer)."""
    plural, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=AUDITOR,
            groups=["system:serviceaccounts", "system:serviceaccounts:mesh-auditor", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=plural, subresource=subresource or None, group=group, namespace=namespace
            ),
        )
    )
    with kube_api.new_client() as api:
        answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    assert answer.status is not None
    return bool(answer.status.allowed)


@pytest.mark.parametrize(
    ("verb", "resource", "group", "namespace"),
    [
        ("get", "secrets", "", None),
        ("list", "secrets", "", None),
        ("get", "secrets", "", "default"),
        ("create", "pods/exec", "", "mesh-auditor-probes"),
        ("get", "pods/exec", "", "mesh-auditor-probes"),
        ("create", "pods", "", "default"),
        ("create", "pods", "", "kube-system"),
        ("delete", "pods", "", "default"),
        ("update", "authorizationpolicies", "security.istio.io", "default"),
        ("create", "serviceaccounts/token", "", "default"),
    ],
)
def test_auditor_is_refused_what_it_must_not_do(
    kube_api: KubeAPI, auditor_kubeconfig: Path, verb: str, resource: str, group: str, namespace: str | None
) -> None:
    """Secrets, exec, pods outside the probe namespaces and writes to policy are all denied."""
    assert _can_i(kube_api, verb, resource, group=group, namespace=namespace) is False
    assert _can_i(kube_api, "create", "pods", namespace="mesh-auditor-probes") is True  # the control


def _probe_pod(namespace: str, **overrides: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "probe-",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "mesh-auditor"},
        },
        "spec": {
            "serviceAccountName": "mesh-auditor-probe",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "probe",
                    "image": "mesh-auditor:dev",
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    for path, value in overrides.items():
        node = pod
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = value
    return pod


def as_pod(manifest: dict[str, Any]) -> client.V1Pod:
    """The client sends a plain dict as-is; the cast only tells mypy so (no model round trip)."""
    return cast("client.V1Pod", manifest)


def _as_auditor(auditor_kubeconfig: Path) -> client.ApiClient:
    return KubeAPI(auditor_kubeconfig, Path("kubectl")).new_client()


def test_auditor_creates_and_deletes_hardened_probe_pods_in_probe_namespaces(auditor_kubeconfig: Path) -> None:
    """The happy path the probe runner needs: create, read, delete its own pod (201, 200, 200)."""
    with _as_auditor(auditor_kubeconfig) as api:
        core = client.CoreV1Api(api)
        created = core.create_namespaced_pod("mesh-auditor-probes", as_pod(_probe_pod("mesh-auditor-probes")))
        assert created.metadata is not None
        assert created.metadata.name
        core.read_namespaced_pod(created.metadata.name, "mesh-auditor-probes")
        core.delete_namespaced_pod(created.metadata.name, "mesh-auditor-probes")


def test_auditor_may_create_probe_pods_that_read_header_values_from_a_secret(auditor_kubeconfig: Path) -> None:
    """A MESH_AUDITOR_HEADER_<n> secretKeyRef needs no Secret permission of the auditor (the kubelet reads it)."""
    secret_env = [
        {"name": "MESH_AUDITOR_HEADER_0", "valueFrom": {"secretKeyRef": {"name": "catalog-token", "key": "t"}}}
    ]
    manifest = _probe_pod("mesh-auditor-probes", spec__containers__0__env=secret_env)
    with _as_auditor(auditor_kubeconfig) as api:
        core = client.CoreV1Api(api)
        created = core.create_namespaced_pod("mesh-auditor-probes", as_pod(manifest))
        assert created.metadata is not None
        assert created.metadata.name
        core.delete_namespaced_pod(created.metadata.name, "mesh-auditor-probes")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"metadata__labels": {}}, "only its own probe pods"),
        ({"spec__automountServiceAccountToken": True}, "must not mount a ServiceAccount token"),
        ({"spec__securityContext": {}}, "must run as non-root"),
        ({"spec__hostNetwork": True}, "must not use host namespaces"),
        (
            {"spec__volumes": [{"name": "s", "secret": {"secretName": "any"}}]},
            "must have no volumes and no init containers",
        ),
        ({"spec__containers__0__envFrom": [{"secretRef": {"name": "any"}}]}, "refer to Secrets only as"),
        (
            {"spec__containers__0__env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "any", "key": "k"}}}]},
            "refer to Secrets only as",
        ),
        (
            {"spec__containers__0__env": [{"name": "MESH_AUDITOR_HEADER_0", "value": "in plain sight"}]},
            "refer to Secrets only as",
        ),
    ],
)
def test_probe_guard_rejects_pods_that_are_not_hardened(
    auditor_kubeconfig: Path, override: dict[str, Any], message: str
) -> None:
    """The admission policy refuses the auditor any pod it did not label and harden."""
    with _as_auditor(auditor_kubeconfig) as api, pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(api).create_namespaced_pod(
            "mesh-auditor-probes", as_pod(_probe_pod("mesh-auditor-probes", **override))
        )
    assert refused.value.status in {403, 422}
    assert message in str(refused.value.body)


def test_probe_guard_rejects_deleting_a_pod_the_auditor_did_not_create(
    kube_api: KubeAPI, auditor_kubeconfig: Path
) -> None:
    """Even in its own probe namespace, the auditor cannot delete someone else's pod."""
    foreign = _probe_pod("mesh-auditor-probes", metadata__labels={"app": "someone-else"}, metadata__name="foreign")
    del foreign["metadata"]["generateName"]
    kube_api.apply_text(yaml.safe_dump(foreign))
    try:
        with _as_auditor(auditor_kubeconfig) as api, pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(api).delete_namespaced_pod("foreign", "mesh-auditor-probes")
        assert refused.value.status in {403, 422}
        assert "only its own probe pods" in str(refused.value.body)
    finally:
        kube_api.kubectl(
            "delete", "pod", "foreign", "--namespace=mesh-auditor-probes", "--ignore-not-found", "--wait=false"
        )


def test_reader_role_name_is_what_the_binding_references() -> None:
    binding = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text(encoding="utf-8"))
        if d and d["kind"] == "ClusterRoleBinding"
    )
    assert binding["roleRef"]["name"] == READER_ROLE


def test_auditor_keeps_state_and_elects_a_leader_in_its_own_namespace_only(
    auditor_kubeconfig: Path, kube_api: KubeAPI
) -> None:
    """As the ServiceAccount: its ConfigMap and Lease work; any other ConfigMap is out of reach."""
    with _as_auditor(auditor_kubeconfig) as api:
        store = ConfigMapStateStore(api, "mesh-auditor")
        store.load()
        store.save({"drift": {"version": 1, "alerts": []}})
        assert ConfigMapStateStore(api, "mesh-auditor").load() == {"drift": {"version": 1, "alerts": []}}
        assert LeaseElector(api, "mesh-auditor", "replica-a").try_acquire_or_renew() is True
        aside = store.set_aside("a test of setting the state aside", dt.datetime.now(dt.UTC))
    assert aside.startswith("mesh-auditor-state-corrupt-")
    events = json.loads(kube_api.kubectl("get", "events", "--namespace=mesh-auditor", "-o", "json"))["items"]
    assert "StateReset" in {e["reason"] for e in events}
    kube_api.kubectl("delete", "configmap", aside, "--namespace=mesh-auditor")
    assert _can_i(kube_api, "update", "configmaps", namespace="kube-system") is False
    assert _can_i(kube_api, "get", "configmaps", namespace="default") is False
    assert _can_i(kube_api, "update", "leases", group="coordination.k8s.io", namespace="kube-system") is False


def test_daemon_deployment_is_hardened_and_accepted_by_the_api_server(kube_api: KubeAPI) -> None:
    """deploy/daemon.yaml validates server-side and runs non-root, read-only, without capabilities."""
    kube_api.apply(DEPLOY / "namespaces.yaml")
    report = kube_api.kubectl("apply", "--dry-run=server", f"--filename={DEPLOY / 'daemon.yaml'}")
    assert "deployment.apps/mesh-auditor created (server dry run)" in report
    deployment = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "daemon.yaml").read_text(encoding="utf-8"))
        if d and d["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert deployment["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
