"""The chart's RBAC and admission policy, proven against the real API server as the auditor itself.

The chart is installed with ``helm install`` (helm built from tools/helm) into its own
namespaces, with a ServiceAccount name of its own, so every proof also shows that the
configured namespace and ServiceAccount reach the bindings and the ValidatingAdmissionPolicy.
The auditor authenticates with a real ServiceAccount token (TokenRequest), not impersonation,
so authentication, RBAC and the probe-guard admission policy all run as in a cluster.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.nodepools import read_node_pools
from auditor.adapters.k8s.policyreports import GROUP_PATH
from auditor.adapters.k8s.rbac import reader_cluster_role
from auditor.adapters.k8s.resources import AUTO_MODE_RESOURCES, NODE_CLASS, NODE_POOL, SNAPSHOT_RESOURCES, Resource
from auditor.adapters.k8s.state import ConfigMapStateStore
from testrigs.devtools import charttools, istio
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT
from tests.crd_modules import nodepool_crd, policyreport_crds
from tests.integration.live import AppliedCase, audit, statuses

RULES = str(ROOT / "rules" / "retail-store.yaml")
EXAMPLE = ROOT / "examples" / "retail-store"
# The release under test: names away from the defaults, so nothing passes by matching them.
RELEASE = "chart-auditor"
NAMESPACE = "chart-auditor"
SERVICE_ACCOUNT = "auditor"
PROBES = "chart-probes"
OUTSIDE = "chart-outside"
PROBE_SA = "chart-probe"
READER = f"{RELEASE}-reader"
STATE_ROLE = f"{RELEASE}-state"
POLICY_REPORTS_ROLE = f"{RELEASE}-policyreports"
AUTOMODE_ROLE = f"{RELEASE}-automode"
AUDITOR = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
VALUES = (
    f"fullnameOverride={RELEASE}",
    f"serviceAccount.name={SERVICE_ACCOUNT}",
    f"probes.inMeshNamespace={PROBES}",
    f"probes.outsideNamespace={OUTSIDE}",
    f"probes.serviceAccount={PROBE_SA}",
    "aws.verifyAutoMode=true",  # the Auto Mode read role is granted only with the Auto Mode check
)

CRDS = (
    "policyreports.wgpolicyk8s.io",
    "clusterpolicyreports.wgpolicyk8s.io",
    "nodepools.karpenter.sh",
    "nodeclasses.eks.amazonaws.com",
)

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """What the chart renders with this module's values (the objects helm installs)."""
    helm = charttools.build((charttools.HELM,))["helm"]
    return charttools.documents(charttools.template(helm, set_values=VALUES, release=RELEASE, namespace=NAMESPACE))


def test_rendered_cluster_role_is_the_reader_table(rendered: list[dict[str, Any]]) -> None:
    """The chart's reader ClusterRole is exactly one list/watch rule per resource the reader lists;
    nothing reads Secrets or execs, and writes are limited to the daemon's own named objects."""
    roles = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ClusterRole"}
    assert set(roles) == {READER, POLICY_REPORTS_ROLE, AUTOMODE_ROLE}
    assert roles[READER]["rules"] == reader_cluster_role()["rules"]
    assert [r["apiGroups"] for r in roles[POLICY_REPORTS_ROLE]["rules"]] == [["wgpolicyk8s.io"]] * 2
    assert roles[AUTOMODE_ROLE]["rules"] == [
        {"apiGroups": [r.group], "resources": [r.plural], "verbs": ["list"]} for r in AUTO_MODE_RESOURCES
    ]
    for document in rendered:
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
    """``helm install``s the chart and returns a kubeconfig that authenticates as its ServiceAccount.
    The PolicyReport and Auto Mode CRDs are the real ones, so the proofs make real requests."""
    kube_api.apply(*policyreport_crds(), nodepool_crd(), ROOT / "tests" / "fixtures" / "crds" / "eks-nodeclasses.yaml")
    for crd in CRDS:
        kube_api.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    helm = charttools.build((charttools.HELM,))["helm"]
    argv = [str(helm), "upgrade", "--install", RELEASE, str(charttools.CHART_DIR), f"--namespace={NAMESPACE}"]
    argv += ["--create-namespace", f"--kubeconfig={kube_api.kubeconfig}", *(f"--set={v}" for v in VALUES)]
    installed = subprocess.run(argv, capture_output=True, text=True, check=False, env=charttools.helm_env())
    assert installed.returncode == 0, installed.stderr
    token = kube_api.kubectl("create", "token", SERVICE_ACCOUNT, f"--namespace={NAMESPACE}", "--duration=2h").strip()
    admin = yaml.safe_load(kube_api.kubeconfig.read_text(encoding="utf-8"))
    config = copy.deepcopy(admin)
    config["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = SERVICE_ACCOUNT
    path = tmp_path_factory.mktemp("auditor") / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    _wait_until_allowed(kube_api, "create", "pods", namespace=PROBES)
    with AppliedCase(kube_api, _example_file(tmp_path_factory.mktemp("example")), tmp_path_factory.mktemp("applied")):
        yield path


def _wait_until_allowed(kube_api: KubeAPI, verb: str, resource: str, *, namespace: str) -> None:
    """New bindings reach the authorizer through an informer: wait until they have."""
    for _ in range(100):
        if _can_i(kube_api, verb, resource, namespace=namespace):
            return
        time.sleep(0.1)
    pytest.fail(f"the chart's RBAC never allowed {verb} {resource} in {namespace}")


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
    reduced = _reader_role()
    reduced["rules"] = [r for r in reduced["rules"] if r["resources"] != [resource.plural]]
    kube_api.apply_text(yaml.safe_dump(reduced))
    try:
        _wait_for_permission(kube_api, resource, allowed=False)
        code, document = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", RULES)
    finally:
        kube_api.apply_text(yaml.safe_dump(_reader_role()))
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


def _reader_role() -> dict[str, Any]:
    """The reader table as the chart's ClusterRole (this release's name)."""
    role = reader_cluster_role()
    role["metadata"]["name"] = READER
    return role


def _wait_for_permission(kube_api: KubeAPI, resource: Resource, *, allowed: bool) -> None:
    """RBAC changes reach the authorizer through an informer: wait until this one has."""
    for _ in range(100):
        if _can_i(kube_api, "list", resource.plural, group=resource.group) is allowed:
            return
        time.sleep(0.1)
    pytest.fail(f"RBAC change for {resource.qualified} never took effect")


def _can_i(
    kube_api: KubeAPI,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
) -> bool:
    """A SubjectAccessReview for the auditor's ServiceAccount (what the authorizer would answer)."""
    plural, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=AUDITOR,
            groups=["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                resource=plural,
                subresource=subresource or None,
                group=group,
                namespace=namespace,
                name=name,
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
        ("create", "pods/exec", "", PROBES),
        ("get", "pods/exec", "", PROBES),
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
    assert _can_i(kube_api, "create", "pods", namespace=PROBES) is True  # the control


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
            "serviceAccountName": PROBE_SA,
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
        created = core.create_namespaced_pod(PROBES, as_pod(_probe_pod(PROBES)))
        assert created.metadata is not None
        assert created.metadata.name
        core.read_namespaced_pod(created.metadata.name, PROBES)
        core.delete_namespaced_pod(created.metadata.name, PROBES)


def test_auditor_may_create_probe_pods_that_read_header_values_from_a_secret(auditor_kubeconfig: Path) -> None:
    """A MESH_AUDITOR_HEADER_<n> secretKeyRef needs no Secret permission of the auditor (the kubelet reads it)."""
    secret_env = [
        {"name": "MESH_AUDITOR_HEADER_0", "valueFrom": {"secretKeyRef": {"name": "catalog-token", "key": "t"}}}
    ]
    manifest = _probe_pod(PROBES, spec__containers__0__env=secret_env)
    with _as_auditor(auditor_kubeconfig) as api:
        core = client.CoreV1Api(api)
        created = core.create_namespaced_pod(PROBES, as_pod(manifest))
        assert created.metadata is not None
        assert created.metadata.name
        core.delete_namespaced_pod(created.metadata.name, PROBES)


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
        client.CoreV1Api(api).create_namespaced_pod(PROBES, as_pod(_probe_pod(PROBES, **override)))
    assert refused.value.status in {403, 422}
    assert message in str(refused.value.body)


def test_probe_guard_rejects_deleting_a_pod_the_auditor_did_not_create(
    kube_api: KubeAPI, auditor_kubeconfig: Path
) -> None:
    """Even in its own probe namespace, the auditor cannot delete someone else's pod."""
    foreign = _probe_pod(PROBES, metadata__labels={"app": "someone-else"}, metadata__name="foreign")
    del foreign["metadata"]["generateName"]
    kube_api.apply_text(yaml.safe_dump(foreign))
    try:
        with _as_auditor(auditor_kubeconfig) as api, pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(api).delete_namespaced_pod("foreign", PROBES)
        assert refused.value.status in {403, 422}
        assert "only its own probe pods" in str(refused.value.body)
    finally:
        kube_api.kubectl("delete", "pod", "foreign", f"--namespace={PROBES}", "--ignore-not-found", "--wait=false")


def test_reader_role_name_is_what_the_binding_references(rendered: list[dict[str, Any]]) -> None:
    bindings = [d for d in rendered if d["kind"] == "ClusterRoleBinding"]
    assert {b["roleRef"]["name"] for b in bindings} == {READER, POLICY_REPORTS_ROLE, AUTOMODE_ROLE}
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]


def test_auditor_keeps_state_and_elects_a_leader_in_its_own_namespace_only(
    auditor_kubeconfig: Path, kube_api: KubeAPI
) -> None:
    """As the ServiceAccount: its ConfigMap and Lease work; any other ConfigMap is out of reach."""
    with _as_auditor(auditor_kubeconfig) as api:
        store = ConfigMapStateStore(api, NAMESPACE)
        store.load()
        store.save({"drift": {"version": 1, "alerts": []}})
        assert ConfigMapStateStore(api, NAMESPACE).load() == {"drift": {"version": 1, "alerts": []}}
        assert LeaseElector(api, NAMESPACE, "replica-a").try_acquire_or_renew() is True
        aside = store.set_aside("a test of setting the state aside", dt.datetime.now(dt.UTC))
    assert aside.startswith("mesh-auditor-state-corrupt-")
    events = json.loads(kube_api.kubectl("get", "events", f"--namespace={NAMESPACE}", "-o", "json"))["items"]
    assert "StateReset" in {e["reason"] for e in events}
    kube_api.kubectl("delete", "configmap", aside, f"--namespace={NAMESPACE}")
    assert _can_i(kube_api, "update", "configmaps", namespace="kube-system") is False
    assert _can_i(kube_api, "get", "configmaps", namespace="default") is False
    assert _can_i(kube_api, "update", "leases", group="coordination.k8s.io", namespace="kube-system") is False


def test_installed_daemon_deployment_is_hardened(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    """The Deployment helm installed (accepted by the API server) runs non-root, read-only, without
    capabilities, outside the mesh, with a grace period above the probe deadline."""
    deployment = yaml.safe_load(
        kube_api.kubectl("get", "deployment", RELEASE, f"--namespace={NAMESPACE}", "--output=yaml")
    )
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert deployment["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert pod["terminationGracePeriodSeconds"] > 300
    budget = yaml.safe_load(kube_api.kubectl("get", "pdb", RELEASE, f"--namespace={NAMESPACE}", "--output=yaml"))
    assert budget["spec"]["maxUnavailable"] == 1


# --- The rules main's daemon and PolicyReport/Auto Mode work added, each proven twice: the real
# request succeeds as the installed ServiceAccount, and fails (403) once that one rule is removed.

REPORT = "mesh-auditor"  # the one PolicyReport name the auditor writes (auditor.render.policyreport)


def _policy_report(kube_api: KubeAPI, name: str, namespace: str = PROBES) -> None:
    """A PolicyReport written by the admin (so only the auditor's delete is under test)."""
    report = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "mesh-auditor"}},
    }
    kube_api.apply_text(yaml.safe_dump(report))


def _create_event(kube_api: KubeAPI, api: client.ApiClient) -> None:
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "mesh-auditor-state.", "namespace": NAMESPACE},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "mesh-auditor-state",
            "namespace": NAMESPACE,
        },
        "reason": "StateReset",
        "message": "a test of the events rule",
        "type": "Warning",
        "source": {"component": "mesh-auditor"},
    }
    api_calls.send_json(api, "POST", f"/api/v1/namespaces/{NAMESPACE}/events", event)


def _set_state_aside(kube_api: KubeAPI, api: client.ApiClient) -> None:
    # The copy is deleted at once: a second copy in the same second then meets no 409 (which
    # set_aside accepts, and which would hide a refusal).
    aside = ConfigMapStateStore(api, NAMESPACE).set_aside(
        "a test of the configmaps create rule", dt.datetime.now(dt.UTC)
    )
    kube_api.kubectl("delete", "configmap", aside, f"--namespace={NAMESPACE}")


def _list_own_reports(plural: str) -> Any:
    def operation(kube_api: KubeAPI, api: client.ApiClient) -> None:
        api_calls.get_json(api, f"{GROUP_PATH}/{plural}", query=[("fieldSelector", f"metadata.name={REPORT}")])

    return operation


def _delete_own_report(kube_api: KubeAPI, api: client.ApiClient) -> None:
    _policy_report(kube_api, REPORT)
    try:
        api_calls.request_json(api, "DELETE", f"{GROUP_PATH}/namespaces/{PROBES}/policyreports/{REPORT}")
    finally:
        kube_api.kubectl("delete", "policyreport", REPORT, f"--namespace={PROBES}", "--ignore-not-found")


def _list(resource: Resource) -> Any:
    def operation(kube_api: KubeAPI, api: client.ApiClient) -> None:
        api_calls.get_json(api, resource.list_path)

    return operation


def _watch_nodes(kube_api: KubeAPI, api: client.ApiClient) -> None:
    """The node trigger's request (auditor/adapters/k8s/nodes.py): a watch of Nodes, ended by the server."""
    query = [("watch", "1"), ("timeoutSeconds", "1")]
    for _ in api_calls.stream_lines(api, "/api/v1/nodes", query, read_timeout=10):
        pass


# (role kind, role name, which rule goes, the SubjectAccessReview that says it went, the request)
RULE_PROOFS = {
    "nodes-watch": (
        "ClusterRole",
        READER,
        lambda rule: rule["resources"] == ["nodes"],
        ("watch", "nodes", "", None, None),
        _watch_nodes,
    ),
    "events-create": (
        "Role",
        STATE_ROLE,
        lambda rule: rule["resources"] == ["events"],
        ("create", "events", "", NAMESPACE, None),
        _create_event,
    ),
    "configmaps-create-corrupt-copy": (
        "Role",
        STATE_ROLE,
        lambda rule: rule["resources"] == ["configmaps"] and "resourceNames" not in rule,
        ("create", "configmaps", "", NAMESPACE, None),
        _set_state_aside,
    ),
    "policyreports-list-own": (
        "ClusterRole",
        POLICY_REPORTS_ROLE,
        lambda rule: rule.get("resourceNames") == [REPORT],
        ("list", "policyreports", "wgpolicyk8s.io", None, REPORT),
        _list_own_reports("policyreports"),
    ),
    "clusterpolicyreports-list-own": (
        "ClusterRole",
        POLICY_REPORTS_ROLE,
        lambda rule: rule.get("resourceNames") == [REPORT],
        ("list", "clusterpolicyreports", "wgpolicyk8s.io", None, REPORT),
        _list_own_reports("clusterpolicyreports"),
    ),
    "policyreports-delete-own": (
        "ClusterRole",
        POLICY_REPORTS_ROLE,
        lambda rule: rule.get("resourceNames") == [REPORT],
        ("delete", "policyreports", "wgpolicyk8s.io", PROBES, REPORT),
        _delete_own_report,
    ),
    "automode-nodepools": (
        "ClusterRole",
        AUTOMODE_ROLE,
        lambda rule: rule["resources"] == [NODE_POOL.plural],
        ("list", NODE_POOL.plural, NODE_POOL.group, None, None),
        _list(NODE_POOL),
    ),
    "automode-nodeclasses": (
        "ClusterRole",
        AUTOMODE_ROLE,
        lambda rule: rule["resources"] == [NODE_CLASS.plural],
        ("list", NODE_CLASS.plural, NODE_CLASS.group, None, None),
        _list(NODE_CLASS),
    ),
}


def _installed_role(kube_api: KubeAPI, kind: str, name: str) -> dict[str, Any]:
    """The role as helm installed it, without server-set fields (so it can be applied back)."""
    namespace = [f"--namespace={NAMESPACE}"] if kind == "Role" else []
    role = json.loads(kube_api.kubectl("get", kind.lower(), name, *namespace, "--output=json"))
    metadata = {k: role["metadata"][k] for k in ("name", "namespace", "labels", "annotations") if k in role["metadata"]}
    return {"apiVersion": role["apiVersion"], "kind": kind, "metadata": metadata, "rules": role["rules"]}


def _wait_for(kube_api: KubeAPI, review: tuple[str, str, str, str | None, str | None], *, allowed: bool) -> None:
    verb, resource, group, namespace, name = review
    for _ in range(100):
        if _can_i(kube_api, verb, resource, group=group, namespace=namespace, name=name) is allowed:
            return
        time.sleep(0.1)
    pytest.fail(f"RBAC change for {verb} {resource} never took effect (allowed={allowed})")


@contextlib.contextmanager
def _without_rule(kube_api: KubeAPI, kind: str, name: str, goes: Any, review: Any) -> Iterator[None]:
    installed = _installed_role(kube_api, kind, name)
    reduced = copy.deepcopy(installed)
    reduced["rules"] = [r for r in installed["rules"] if not goes(r)]
    assert len(reduced["rules"]) == len(installed["rules"]) - 1, "exactly one rule goes"
    kube_api.apply_text(yaml.safe_dump(reduced))
    try:
        _wait_for(kube_api, review, allowed=False)
        yield
    finally:
        kube_api.apply_text(yaml.safe_dump(installed))
        _wait_for(kube_api, review, allowed=True)


@pytest.mark.parametrize("proof", sorted(RULE_PROOFS))
def test_each_new_rule_is_needed_remove_it_and_the_request_fails(
    kube_api: KubeAPI, auditor_kubeconfig: Path, proof: str
) -> None:
    """With the chart's rules the auditor's real request succeeds; without that one rule it is 403."""
    kind, name, goes, review, operation = RULE_PROOFS[proof]
    with _as_auditor(auditor_kubeconfig) as api:
        operation(kube_api, api)  # the control: the installed rules allow it
        with _without_rule(kube_api, kind, name, goes, review), pytest.raises(api_calls.ApiRefused) as refused:
            operation(kube_api, api)
    assert refused.value.status == 403


def test_policy_reports_are_listed_and_deleted_by_their_own_name_only(
    kube_api: KubeAPI, auditor_kubeconfig: Path
) -> None:
    """list without the metadata.name selector, and delete of another report, are refused (403),
    while the auditor's own name works (the control)."""
    _policy_report(kube_api, "someone-else")
    try:
        with _as_auditor(auditor_kubeconfig) as api:
            _list_own_reports("policyreports")(kube_api, api)
            for plural in ("policyreports", "clusterpolicyreports"):
                with pytest.raises(api_calls.ApiRefused) as unselected:
                    api_calls.get_json(api, f"{GROUP_PATH}/{plural}")
                assert unselected.value.status == 403
            with pytest.raises(api_calls.ApiRefused) as foreign:
                api_calls.request_json(api, "DELETE", f"{GROUP_PATH}/namespaces/{PROBES}/policyreports/someone-else")
            assert foreign.value.status == 403
        assert _can_i(kube_api, "deletecollection", "policyreports", group="wgpolicyk8s.io", namespace=PROBES) is False
        assert _can_i(kube_api, "patch", "policyreports", group="wgpolicyk8s.io", namespace=PROBES, name="x") is False
    finally:
        kube_api.kubectl("delete", "policyreport", "someone-else", f"--namespace={PROBES}", "--ignore-not-found")


def test_events_and_corrupt_copies_only_in_the_auditors_namespace(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    assert _can_i(kube_api, "create", "events", namespace=NAMESPACE) is True  # the control
    assert _can_i(kube_api, "create", "events", namespace="default") is False
    assert _can_i(kube_api, "create", "configmaps", namespace="default") is False
    assert _can_i(kube_api, "get", "configmaps", namespace=NAMESPACE, name="mesh-auditor-state-corrupt-1") is False


def test_auto_mode_check_reads_node_pools_as_the_auditor(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    """The Auto Mode adapter, as the installed ServiceAccount, reads both kinds without a problem."""
    with _as_auditor(auditor_kubeconfig) as api:
        assert read_node_pools(api).problem is None
    assert _can_i(kube_api, "get", NODE_POOL.plural, group=NODE_POOL.group, name="default") is False
    assert _can_i(kube_api, "watch", NODE_CLASS.plural, group=NODE_CLASS.group) is False


def test_auto_mode_role_only_with_the_auto_mode_check() -> None:
    """Without aws.verifyAutoMode the chart grants no NodePool or NodeClass access at all."""
    helm = charttools.build((charttools.HELM,))["helm"]
    without = [v for v in VALUES if not v.startswith("aws.verifyAutoMode")]
    rendered = charttools.documents(charttools.template(helm, set_values=without, release=RELEASE, namespace=NAMESPACE))
    names = {d["metadata"]["name"] for d in rendered if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}}
    assert AUTOMODE_ROLE not in names
    assert {READER, POLICY_REPORTS_ROLE} <= names


def test_istiod_version_is_read_with_the_shipped_permissions(kube_api: KubeAPI, auditor_kubeconfig: Path) -> None:
    """The cluster's Istio version comes from the istiod Deployment the workload rules already list
    (no rule of its own): as the ServiceAccount, an istiod 1.28.0 is read and reported."""
    deployment = istio.istiod_deployment("1.28.0", hub="docker.io/istio")
    deployment["metadata"]["namespace"] = NAMESPACE  # not istio-system: other tests share this server
    kube_api.apply_text(yaml.safe_dump(deployment))
    try:
        _, document = audit("--kubeconfig", str(auditor_kubeconfig), "--rules", RULES)
    finally:
        kube_api.kubectl("delete", "deployment", "istiod", f"--namespace={NAMESPACE}", "--wait=false")
    assert document["summary"]["inputs"]["istio_semantics"]["cluster"] == "1.28.0"
    (version,) = [f for f in document["findings"] if f["check"] == "audit.istio-semantics"]
    assert (version["target"], version["status"]) == ("cluster/istiod-default", "inconclusive")
