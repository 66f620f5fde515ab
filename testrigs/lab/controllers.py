"""What kube-controller-manager, the scheduler and the kubelets would write for the lab's workloads.

Role: the lab's control plane has no controller-manager and no kubelet for application pods
(docs/controlplane.md), so without this module a Deployment would have no Pods in the API server,
Services no EndpointSlices, and the auditor could not see where a pod runs or probe it by pod IP
(issue #13). After each reconcile, ``Lab.reconcile`` calls ``sync`` with the snapshot it applied,
its ``Mesh`` and the pods whose data plane is in place; ``sync`` makes the API server agree:

- a ``Node`` per lab node (``nodes.labels``: Auto Mode labels and ``kubernetes.io/hostname``);
- a ztunnel Pod per node (``istio-system/ztunnel-<node>``, ``app: ztunnel``, Running and Ready;
  its ServiceAccount ``ztunnel`` too): the node's ztunnel, as the DaemonSet would run it;
- a Pod per running Deployment replica, named like the lab pod (``<deployment>-<i>``), from the
  template (labels, annotations, spec) with ``spec.nodeName``, owned by the Deployment, and its
  status as a kubelet writes it (``Running``, ``podIP`` = the lab pod's address, ``Ready``); a
  replica whose Deployment's template changed is deleted and created again (a rollout), one
  whose Deployment is gone or scaled down is deleted;
- the Deployment's status (replicas ready and available, ``observedGeneration``);
- one EndpointSlice ``<service>-lab`` per Service with a selector (the endpointslice
  controller's labels ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by``,
  owned by the Service), listing the running replicas it selects: address, ``nodeName``,
  ``targetRef`` and ready/serving conditions, ports resolved as the controller does (a named
  ``targetPort`` through the container ports).

Everything it creates carries ``nodes.OWNED_BY``, which ``mesh.py`` ignores: the data plane
follows the Deployments, these are their mirrors. ``desired`` is pure; ``sync`` writes only
differences (so a converged lab makes no write and wakes no reconcile) and never raises: a
refused write is reported and retried on the next reconcile.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from testrigs.lab import nodes as lab_nodes
from testrigs.lab import writeback
from testrigs.lab.mesh import Mesh, Obj, Workload, meta, name_of, namespace_of, rendered_for_gateway, spec

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

TEMPLATE_HASH = "mesh-lab.dev/template-hash"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
ENDPOINTSLICE_CONTROLLER = "endpointslice-controller.k8s.io"
REQUEST_TIMEOUT = (5.0, 20.0)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Desired:
    """What the API server should hold for the lab's workloads, by object key ``ns/name``."""

    pods: dict[str, Obj] = field(default_factory=dict)  # replica and ztunnel Pods (spec only)
    pod_ips: dict[str, str] = field(default_factory=dict)  # pod key -> status.podIP ("" for ztunnel)
    slices: dict[str, Obj] = field(default_factory=dict)
    deployments: dict[str, int] = field(default_factory=dict)  # Deployment key -> ready replicas


def template_hash(deployment: Obj) -> str:
    return hashlib.sha256(json.dumps(spec(deployment).get("template") or {}, sort_keys=True).encode()).hexdigest()[:16]


def _replica_pod(deployment: Obj, workload: Workload, captured: bool) -> Obj:
    template = spec(deployment).get("template") or {}
    template_meta = template.get("metadata") or {}
    # istio-cni's annotation from the start (``writeback`` keeps it current afterwards): the
    # API never shows a captured replica as unredirected for a moment.
    redirection = {writeback.REDIRECTION: "enabled"} if captured else {}
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name_of(deployment),
        "uid": meta(deployment).get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": workload.name,
            "namespace": workload.namespace,
            "labels": {**(template_meta.get("labels") or {}), lab_nodes.OWNED_BY: "replica"},
            "annotations": {
                **(template_meta.get("annotations") or {}),
                **redirection,
                TEMPLATE_HASH: template_hash(deployment),
            },
            "ownerReferences": [owner] if owner["uid"] else [],  # no uid: objects not read from the API
        },
        "spec": {**(template.get("spec") or {}), "nodeName": workload.node},
    }


def desired(objects: list[Obj], mesh: Mesh, running: Mapping[str, str]) -> Desired:
    """The Pods, EndpointSlices and Deployment statuses for ``objects`` (pure).

    ``running`` maps a lab pod's key to its address, for pods whose data plane is in place: only
    those become Ready Pods and endpoints, as a kubelet reports a started container.
    """
    found = Desired()
    waypoint_pods: dict[str, Workload] = {}
    for node in mesh.nodes:
        pod = lab_nodes.ztunnel_pod(node)
        found.pods[f"{lab_nodes.ZTUNNEL_NAMESPACE}/{name_of(pod)}"] = pod
        found.pod_ips[f"{lab_nodes.ZTUNNEL_NAMESPACE}/{name_of(pod)}"] = ""
    deployments = {f"{namespace_of(o)}/{name_of(o)}": o for o in objects if o.get("kind") == "Deployment"}
    for workload in mesh.workloads:
        deployment = deployments.get(workload.replica_of)
        if deployment is None or workload.key not in running:
            continue
        found.pods[workload.key] = _replica_pod(deployment, workload, mesh.captured(workload))
        found.pod_ips[workload.key] = running[workload.key]
        found.deployments[workload.replica_of] = found.deployments.get(workload.replica_of, 0) + 1
    rendered = {
        f"{namespace_of(o)}/{rendered_for_gateway(o)}": o for o in deployments.values() if rendered_for_gateway(o)
    }
    for workload in mesh.waypoint_workloads():
        deployment = rendered.get(workload.key)
        if deployment is None or workload.key not in running:
            continue
        # istiod rendered this waypoint's Deployment: its one replica is the lab's waypoint pod
        # (the lab's Envoy), named like the lab pod, on the first lab node.
        placed = dataclasses.replace(workload, node=mesh.nodes[0] if mesh.nodes else "")
        found.pods[workload.key] = _replica_pod(deployment, placed, captured=False)
        found.pod_ips[workload.key] = running[workload.key]
        deployment_key = f"{namespace_of(deployment)}/{name_of(deployment)}"
        found.deployments[deployment_key] = found.deployments.get(deployment_key, 0) + 1
        waypoint_pods[workload.key] = placed
    for key in deployments:
        found.deployments.setdefault(key, 0)
    for obj in objects:
        if obj.get("kind") == "Service" and spec(obj).get("selector"):
            key = f"{namespace_of(obj)}/{name_of(obj)}-lab"
            if rendered_for_gateway(obj) is not None:
                found.slices[key] = _waypoint_slice(obj, waypoint_pods, found)
            else:
                found.slices[key] = _slice(obj, mesh, found)
    return found


def _waypoint_slice(service_obj: Obj, waypoint_pods: Mapping[str, Workload], found: Desired) -> Obj:
    """The EndpointSlice of the Service istiod rendered for a waypoint: the waypoint's pod, on
    every port of the Service (the template's ports have no targetPort: the port itself)."""
    selector = spec(service_obj).get("selector") or {}
    members = {
        key: workload
        for key, workload in waypoint_pods.items()
        if workload.namespace == namespace_of(service_obj)
        and all((meta(found.pods[key]).get("labels") or {}).get(str(k)) == str(v) for k, v in selector.items())
    }
    ports = []
    for port in spec(service_obj).get("ports") or []:
        entry: dict[str, Any] = {"port": int(port.get("targetPort") or port["port"]), "protocol": "TCP"}
        if port.get("name"):
            entry["name"] = port["name"]
        if port.get("appProtocol"):
            entry["appProtocol"] = port["appProtocol"]
        ports.append(entry)
    return _slice_object(service_obj, members, found, ports)


def _slice(service_obj: Obj, mesh: Mesh, found: Desired) -> Obj:
    service = mesh.service(f"{namespace_of(service_obj)}/{name_of(service_obj)}")
    members: dict[str, Workload] = {}
    ports = []
    resolved = [(port, mesh.endpoints(service, port)) for port in service.ports] if service is not None else []
    for port, all_endpoints in resolved:
        endpoints = [(w, target) for w, target in all_endpoints if w.key in found.pods]
        members.update((w.key, w) for w, _ in endpoints)
        # One port list per slice: the first endpoint's resolution of a named targetPort.
        entry: dict[str, Any] = {"port": endpoints[0][1] if endpoints else port.port, "protocol": "TCP"}
        name = next((p.get("name") for p in spec(service_obj).get("ports") or [] if p.get("port") == port.port), None)
        if name:
            entry["name"] = name
        ports.append(entry)
    return _slice_object(service_obj, members, found, ports)


def _slice_object(service_obj: Obj, members: Mapping[str, Workload], found: Desired, ports: list[Any]) -> Obj:
    endpoints_list = [
        {
            "addresses": [found.pod_ips[key]],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": workload.node,
            "targetRef": {"kind": "Pod", "namespace": workload.namespace, "name": workload.name},
        }
        for key, workload in sorted(members.items())
    ]
    owner = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": name_of(service_obj),
        "uid": meta(service_obj).get("uid", ""),
    }
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name_of(service_obj)}-lab",
            "namespace": namespace_of(service_obj),
            "labels": {
                SERVICE_NAME: name_of(service_obj),
                MANAGED_BY: ENDPOINTSLICE_CONTROLLER,
                lab_nodes.OWNED_BY: "slice",
            },
            "ownerReferences": [{**owner, "controller": True}] if owner["uid"] else [],
        },
        "addressType": "IPv4",
        "endpoints": endpoints_list,
        "ports": ports,
    }


def _ready_status(ip: str) -> dict[str, Any]:
    now = _now()
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    status: dict[str, Any] = {"phase": "Running", "startTime": now, "conditions": conditions}
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return status


def _is_ready(pod: Obj, ip: str) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and status.get("phase") == "Running" and str(status.get("podIP") or "") == ip


class _Api:
    """Raw JSON calls; every failure becomes a message in ``problems``."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api
        self.problems: list[str] = []

    def call(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        merge: bool = False,
        query: list[tuple[str, str]] | None = None,
    ) -> Obj | None:
        content = "application/merge-patch+json" if merge else "application/json"
        headers = {"Accept": "application/json", "Content-Type": content}
        method, url, headers, payload, _ = self._api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        try:
            response = self._api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=REQUEST_TIMEOUT
            )
            data = response.read()  # type: ignore[no-untyped-call]  # the client ships no annotations
        except Exception as error:  # noqa: BLE001 - reported; the next reconcile retries
            self.problems.append(f"{method} {path}: {error}")
            return None
        if response.status == 409 and method == "POST":
            return None  # created meanwhile (a concurrent reconciler): fine
        if response.status >= 400 and not (response.status == 404 and method == "DELETE"):
            self.problems.append(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
            return None
        document: Obj = json.loads(data) if data else {}
        return document

    def items(self, path: str, selector: str | None = None) -> list[Obj]:
        document = self.call("GET", path, query=[("labelSelector", selector)] if selector else None)
        return list((document or {}).get("items") or [])


def _pod_path(key: str) -> str:
    namespace, _, name = key.partition("/")
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def sync(api: ApiClient, objects: list[Obj], mesh: Mesh, running: Mapping[str, str]) -> list[str]:
    """Write what ``desired`` says and the API server lacks; returns the problems (never raises)."""
    calls = _Api(api)
    want = desired(objects, mesh, running)
    existing_nodes = {name_of(n) for n in calls.items("/api/v1/nodes")}
    for node in mesh.nodes:
        if node not in existing_nodes:
            calls.call("POST", "/api/v1/nodes", lab_nodes.node_object(node))
    _ztunnel_prerequisites(calls, objects)
    pods = {f"{namespace_of(p)}/{name_of(p)}": p for p in calls.items("/api/v1/pods", lab_nodes.OWNED_BY)}
    for key, pod in list(pods.items()):  # deleted ones are popped on the way
        wanted = want.pods.get(key)
        stale = wanted is not None and (meta(pod).get("annotations") or {}).get(TEMPLATE_HASH) != (
            meta(wanted).get("annotations") or {}
        ).get(TEMPLATE_HASH)
        moved = wanted is not None and spec(pod).get("nodeName") != spec(wanted).get("nodeName")
        if wanted is None or stale or moved:
            calls.call("DELETE", _pod_path(key), {"gracePeriodSeconds": 0})
            pods.pop(key)
    for key, pod in want.pods.items():
        current = pods.get(key) or calls.call("POST", f"/api/v1/namespaces/{namespace_of(pod)}/pods", pod)
        if current is None:
            continue
        if not _is_ready(current, want.pod_ips[key]):
            body = {"status": _ready_status(want.pod_ips[key])}
            calls.call("PATCH", f"{_pod_path(key)}/status", body, merge=True)
    _deployment_statuses(calls, objects, want)
    _slices(calls, want)
    _collect_garbage(calls, objects)
    return calls.problems


RENDERED_KINDS = (
    ("Deployment", "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
    ("Service", "/api/v1/namespaces/{namespace}/services/{name}"),
    ("ServiceAccount", "/api/v1/namespaces/{namespace}/serviceaccounts/{name}"),
)


def _collect_garbage(calls: _Api, objects: list[Obj]) -> None:
    """The garbage collector's part for istiod's waypoint objects: a ServiceAccount, Deployment or
    Service owned by a Gateway that no longer exists (by uid) is deleted, as kube-controller-manager's
    garbage collector deletes dependents whose owner is gone (the test control plane has none)."""
    candidates = [o for o in objects if o.get("kind") in ("Deployment", "Service") and rendered_for_gateway(o)]
    candidates += [
        {**account, "kind": "ServiceAccount"}
        for account in calls.items("/api/v1/serviceaccounts", "gateway.networking.k8s.io/gateway-name")
    ]
    if not candidates:
        return
    # Listed after every candidate: a Gateway created since the snapshot is seen, never collected.
    listing = calls.call("GET", "/apis/gateway.networking.k8s.io/v1/gateways")
    if listing is None:
        return  # the list failed (reported): never collect on a partial view
    gateways = {str(meta(o).get("uid")) for o in listing.get("items") or []}
    paths = dict(RENDERED_KINDS)
    for obj in candidates:
        owners = [o for o in meta(obj).get("ownerReferences") or [] if o.get("kind") == "Gateway"]
        if rendered_for_gateway(obj) is None or any(str(o.get("uid")) in gateways for o in owners):
            continue
        if meta(obj).get("deletionTimestamp"):
            continue
        path = paths[str(obj.get("kind"))].format(namespace=namespace_of(obj), name=name_of(obj))
        calls.call("DELETE", path, {"propagationPolicy": "Background"})


def _ztunnel_prerequisites(calls: _Api, objects: list[Obj]) -> None:
    namespace = lab_nodes.ZTUNNEL_NAMESPACE
    if not any(o.get("kind") == "Namespace" and name_of(o) == namespace for o in objects):
        calls.call(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": lab_nodes.ZTUNNEL_SERVICE_ACCOUNT, "namespace": namespace},
    }
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    if not any(name_of(a) == lab_nodes.ZTUNNEL_SERVICE_ACCOUNT for a in calls.items(path)):
        calls.call("POST", path, account)


def _deployment_statuses(calls: _Api, objects: list[Obj], want: Desired) -> None:
    for obj in objects:
        key = f"{namespace_of(obj)}/{name_of(obj)}"
        if obj.get("kind") != "Deployment" or key not in want.deployments or meta(obj).get("deletionTimestamp"):
            continue
        ready = want.deployments[key]
        status = {
            "observedGeneration": meta(obj).get("generation", 1),
            "replicas": ready,
            "updatedReplicas": ready,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        current = obj.get("status") or {}
        if all(current.get(k, 0) == v for k, v in status.items()):
            continue
        path = f"/apis/apps/v1/namespaces/{namespace_of(obj)}/deployments/{name_of(obj)}/status"
        calls.call("PATCH", path, {"status": status}, merge=True)


def _slices(calls: _Api, want: Desired) -> None:
    existing = {
        f"{namespace_of(s)}/{name_of(s)}": s
        for s in calls.items("/apis/discovery.k8s.io/v1/endpointslices", lab_nodes.OWNED_BY)
    }
    for key in set(existing) - set(want.slices):
        namespace, _, name = key.partition("/")
        calls.call("DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}")
    for key, body in want.slices.items():
        namespace, _, name = key.partition("/")
        base = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        found = existing.get(key)
        if found is None:
            calls.call("POST", base, body)
            continue
        same = (
            (found.get("endpoints") or []) == body["endpoints"]
            and found.get("ports") == body["ports"]
            and meta(found).get("ownerReferences") == body["metadata"]["ownerReferences"]
        )
        if not same:
            version = meta(found).get("resourceVersion")
            calls.call("PUT", f"{base}/{name}", {**body, "metadata": {**body["metadata"], "resourceVersion": version}})
