"""A stand-in kubelet for tests: runs probe pods' containers as local processes.

Role: the test control plane has no scheduler and no kubelet (``controlplane``), so probe pods
would stay Pending for ever. ``PodExecutor`` watches the real API server for pods matching a
label selector (default: the auditor's probe pods), and does what the scheduler and a kubelet
on one EKS Auto Mode node would, through the same API calls:

- registers a ``Node`` labelled ``eks.amazonaws.com/compute-type: auto`` (configurable);
- schedules a pod whose ``nodeSelector`` the node's labels satisfy (the ``binding``
  subresource); any other pod gets ``PodScheduled=False``, reason ``Unschedulable``, with the
  scheduler's message, and stays Pending;
- an image listed in ``unpullable`` stays Pending with a waiting ``ErrImagePull`` container;
- runs the container's command as a local process: ``python`` is this interpreter, the
  environment is the pod's literal ``env`` values and its ``valueFrom.secretKeyRef`` values, read
  from the Secret in the pod's namespace as the kubelet does (a missing Secret or key leaves the
  pod Pending with a waiting ``CreateContainerConfigError`` container and the kubelet's
  message, e.g. ``secret "catalog-token" not found``), and the container's
  ``terminationMessagePath`` (a kubelet bind mount) is replaced in the arguments by a temp file;
- writes the status through the status subresource: ``Running``, then ``Succeeded`` or
  ``Failed`` with ``containerStatuses[].state.terminated`` (exit code, reason, the termination
  message capped at 4096 bytes as the kubelet does); past ``activeDeadlineSeconds`` it kills the
  process and fails the pod with reason ``DeadlineExceeded``;
- finishes graceful deletion: a deleted pod bound to its node loses its process and is removed
  with grace period 0, as the kubelet confirms a deletion.

Where and as whom the process runs is a pluggable ``Launcher``: ``LocalLauncher`` (the default)
starts it here, as the test's user, on loopback; the mesh lab's ``testrigs.lab.kubelet.LabLauncher``
starts it inside the pod's own lab network namespace, as the pod's ``runAsUser``. A launcher that
raises ``LaunchError`` leaves the pod Pending with a waiting ``CreateContainerError`` container,
as a kubelet does when it cannot create the sandbox or the container.

Not emulated (by ``LocalLauncher``): users and security contexts, networking (probe targets are
on loopback); by any launcher: resource limits, image contents. Developer tooling only: the
auditor never imports it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTO_MODE_LABELS = {"eks.amazonaws.com/compute-type": "auto", "karpenter.sh/nodepool": "general-purpose"}
# Probe pods: the auditor's pods, except a chaos drill's canary and its waypoint (issue #13), which
# carry the same managed-by label but are workloads like any application's (the stand-in's).
DEFAULT_SELECTOR = "app.kubernetes.io/managed-by=mesh-auditor,!mesh-auditor.dev/drill"
TERMINATION_MESSAGE_LIMIT = 4096
_POLL_S = 0.1
_UNSCHEDULABLE = (
    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LaunchError(RuntimeError):
    """The container could not be started (no sandbox yet, no image...); the pod stays Pending."""


class Launcher(Protocol):
    """Starts one pod's container process: where (namespaces) and as whom is the launcher's business.

    ``argv`` is the container's command and args, with the termination message path already
    replaced by ``workdir/termination-log``; ``argv[0]`` may be ``python``. ``env`` is the pod's
    literal ``env`` plus ``PATH``. The process must have piped stdout and stderr.
    """

    def launch(
        self, pod: dict[str, Any], argv: list[str], env: dict[str, str], workdir: Path
    ) -> subprocess.Popen[bytes]: ...


class LocalLauncher:
    """The process runs here, as the caller's user; ``python`` is this interpreter."""

    def launch(
        self, pod: dict[str, Any], argv: list[str], env: dict[str, str], workdir: Path
    ) -> subprocess.Popen[bytes]:
        del pod
        if argv and argv[0] in {"python", "python3"}:
            argv = [sys.executable, *argv[1:]]
        env = {"PYTHONPATH": str(REPO_ROOT), **env}
        return subprocess.Popen(argv, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@dataclass
class ContainerRun:
    """One pod's local process and what it printed (for test diagnostics)."""

    process: subprocess.Popen[bytes]
    stdout: bytes = b""
    stderr: bytes = b""
    killed: threading.Event = field(default_factory=threading.Event)


class PodExecutor:
    """Schedules and runs matching pods until ``stop()``; use it as a context manager."""

    def __init__(
        self,
        api: ApiClient,
        *,
        node_name: str = "auto-node-1",
        node_labels: dict[str, str] | None = None,
        selector: str = DEFAULT_SELECTOR,
        unpullable: frozenset[str] = frozenset(),
        launcher: Launcher | None = None,
        poll_s: float = _POLL_S,
        scheduler: Callable[[dict[str, Any]], str] | None = None,
        other_nodes: Collection[str] = (),
    ) -> None:
        # ``scheduler`` picks the node a pod is bound to (default: ``node_name``); ``other_nodes``
        # are the further nodes it may pick, whose pods this executor runs too (one kubelet
        # standing in for several nodes with the same labels, as the mesh lab's nodes).
        self._api = api
        self._scheduler = scheduler
        self._nodes = {node_name, *other_nodes}
        self._launcher: Launcher = launcher or LocalLauncher()
        self._poll_s = poll_s
        self.node_name = node_name
        self.node_labels = dict(AUTO_MODE_LABELS if node_labels is None else node_labels)
        self._selector = selector
        self._unpullable = unpullable
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-executor", daemon=True)
        self._seen: set[str] = set()
        self._runs: dict[str, ContainerRun] = {}
        self._deleted: set[str] = set()  # uids whose deletion came while their container was starting
        self._lock = threading.Lock()
        self.finished: dict[str, ContainerRun] = {}  # "namespace/name" -> the run, once done
        self.errors: list[str] = []

    def __enter__(self) -> PodExecutor:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._ensure_node()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            _kill(run)

    # --- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                pods = self._call("GET", "/api/v1/pods", query=[("labelSelector", self._selector)])["items"]
                for pod in pods:
                    self._handle(pod)
            except Exception as error:  # noqa: BLE001 - a stand-in kubelet keeps going, like the real one
                self.errors.append(f"{type(error).__name__}: {error}")

    def _handle(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if meta.get("deletionTimestamp"):
            self._finish_deletion(pod)
            return
        uid = meta["uid"]
        if uid in self._seen or spec.get("nodeName") or (pod.get("status") or {}).get("phase") not in (None, "Pending"):
            return
        self._seen.add(uid)
        selector = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            self._patch_status(pod, _unschedulable_status())
            return
        self._bind(pod)
        container = spec["containers"][0]
        if container["image"] in self._unpullable:
            self._patch_status(pod, _image_pull_status(container))
            return
        self._start(pod)

    def _finish_deletion(self, pod: dict[str, Any]) -> None:
        if pod["spec"].get("nodeName") not in self._nodes:
            return  # not ours: an unscheduled pod is deleted by the API server at once
        with self._lock:
            run = self._runs.pop(pod["metadata"]["uid"], None)
            if run is None:
                self._deleted.add(pod["metadata"]["uid"])
        if run is not None:
            _kill(run)
        meta = pod["metadata"]
        with contextlib.suppress(_ApiError):
            self._call("DELETE", _pod_path(meta), body={"gracePeriodSeconds": 0})

    # --- scheduling and running -----------------------------------------------------------------

    def _ensure_node(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": self.node_labels}}
        try:
            self._call("POST", "/api/v1/nodes", body=node)
        except _ApiError as error:
            if error.status != 409:
                raise

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self._node_for(pod)},
        }
        self._call("POST", f"{_pod_path(meta)}/binding", body=binding)

    def _node_for(self, pod: dict[str, Any]) -> str:
        node = self.node_name if self._scheduler is None else self._scheduler(pod)
        if node not in self._nodes:
            raise LaunchError(f"the scheduler chose node {node!r}, not one of {sorted(self._nodes)}")
        return node

    def _start(self, pod: dict[str, Any]) -> None:
        # Launching may wait (the lab creates the pod's network first): never in the poll loop.
        threading.Thread(target=self._launch_and_wait, args=(pod,), daemon=True).start()

    def _launch_and_wait(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        uid = pod["metadata"]["uid"]
        workdir = Path(tempfile.mkdtemp(prefix="pod-"))
        log_path = workdir / "termination-log"
        log_path.touch()
        argv = _argv(container, str(log_path))
        try:
            env = {"PATH": os.environ.get("PATH", ""), **self._environment(pod, container)}
        except _ConfigError as error:
            shutil.rmtree(workdir, ignore_errors=True)
            with contextlib.suppress(_ApiError):
                self._patch_status(pod, _launch_failed_status(container, str(error), "CreateContainerConfigError"))
            return
        try:
            process = self._launcher.launch(pod, argv, env, workdir)
        except Exception as error:  # noqa: BLE001 - any launch failure leaves the pod Pending, as a kubelet does
            shutil.rmtree(workdir, ignore_errors=True)
            self.errors.append(f"launch of {_ref(pod)}: {error}")
            with contextlib.suppress(_ApiError):
                self._patch_status(pod, _launch_failed_status(container, str(error)))
            return
        run = ContainerRun(process)
        with self._lock:
            deleted = uid in self._deleted
            if not deleted:
                self._runs[uid] = run
        if deleted:  # deleted while it started: the kubelet kills it and reports nothing
            _kill(run)
            run.process.communicate()
            shutil.rmtree(workdir, ignore_errors=True)
            return
        started = _now()
        try:
            self._patch_status(pod, _running_status(container, started))
        except _ApiError as error:
            self.errors.append(f"status of {_ref(pod)}: {error}")
        self._wait(pod, run, log_path, started, pod["spec"].get("activeDeadlineSeconds"))

    def _environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """The container's env: literal values, and secretKeyRef values read as the kubelet does."""
        env: dict[str, str] = {}
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            env[entry["name"]] = entry.get("value", "") if ref is None else self._secret_value(pod, ref)
        return env

    def _secret_value(self, pod: dict[str, Any], ref: dict[str, Any]) -> str:
        path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/secrets/{ref['name']}"
        try:
            data = self._call("GET", path).get("data") or {}
        except _ApiError as error:
            if error.status == 404:
                raise _ConfigError(f'secret "{ref["name"]}" not found') from error
            raise
        if ref["key"] not in data:
            raise _ConfigError(f"couldn't find key {ref['key']} in Secret {pod['metadata']['namespace']}/{ref['name']}")
        return base64.b64decode(data[ref["key"]]).decode("utf-8")

    def _wait(self, pod: dict[str, Any], run: ContainerRun, log_path: Path, started: str, deadline: int | None) -> None:
        try:
            run.stdout, run.stderr = run.process.communicate(timeout=deadline)
            overdue = False
        except subprocess.TimeoutExpired:
            _kill(run)
            run.stdout, run.stderr = run.process.communicate()
            overdue = True
        meta = pod["metadata"]
        self.finished[f"{meta['namespace']}/{meta['name']}"] = run
        message = log_path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode("utf-8", "replace")
        shutil.rmtree(log_path.parent, ignore_errors=True)
        with self._lock:
            if self._runs.pop(meta["uid"], None) is None:
                return  # the pod was deleted meanwhile: nothing to report to
        status = _terminated_status(pod["spec"]["containers"][0], started, run.process.returncode, message, overdue)
        try:
            self._patch_status(pod, status)
        except _ApiError as error:
            self.errors.append(f"status of {meta['namespace']}/{meta['name']}: {error}")

    # --- API calls ----------------------------------------------------------------------------

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        patch = {"status": status}
        self._call(
            "PATCH", f"{_pod_path(pod['metadata'])}/status", body=patch, content_type="application/merge-patch+json"
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        return _api_call(self._api, method, path, query=query, body=body, content_type=content_type)


def _api_call(
    api: ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: dict[str, Any] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One API request as raw JSON; raises _ApiError for a status >= 400."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    method, url, headers, payload, _ = api.param_serialize(
        method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
        auth_settings=["BearerToken"],
    )  # fmt: skip
    response = api.call_api(method, url, header_params=headers, body=payload, _request_timeout=(5, 30))
    data: bytes = response.read()  # type: ignore[no-untyped-call]  # the client ships no annotations
    if response.status >= 400:
        raise _ApiError(response.status, data.decode("utf-8", "replace")[:500])
    document: dict[str, Any] = json.loads(data)
    return document


class _ConfigError(Exception):
    """The container's configuration cannot be built (a missing Secret or key)."""


class _ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status


def _pod_path(meta: dict[str, Any]) -> str:
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


def _ref(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def _argv(container: dict[str, Any], termination_log: str) -> list[str]:
    """The container's command and args, the termination message path replaced by a local file."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    path = container.get("terminationMessagePath") or "/dev/termination-log"
    return [arg.replace(path, termination_log) for arg in argv]


def _kill(run: ContainerRun) -> None:
    run.killed.set()
    if run.process.poll() is None:
        run.process.kill()


def _unschedulable_status() -> dict[str, Any]:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": _UNSCHEDULABLE,
        "lastTransitionTime": _now(),
    }
    return {"phase": "Pending", "conditions": [condition]}


def _container_status(container: dict[str, Any], state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }


def _scheduled(now: str) -> dict[str, Any]:
    return {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}


def _image_pull_status(container: dict[str, Any]) -> dict[str, Any]:
    message = f'Failed to pull image "{container["image"]}": not found'
    state = {"waiting": {"reason": "ErrImagePull", "message": message}}
    return {
        "phase": "Pending",
        "conditions": [_scheduled(_now())],
        "containerStatuses": [_container_status(container, state, ready=False)],
    }


def _launch_failed_status(
    container: dict[str, Any], message: str, reason: str = "CreateContainerError"
) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": message[:1000]}}
    return {
        "phase": "Pending",
        "conditions": [_scheduled(_now())],
        "containerStatuses": [_container_status(container, state, ready=False)],
    }


def _running_status(container: dict[str, Any], started: str) -> dict[str, Any]:
    state = {"running": {"startedAt": started}}
    return {
        "phase": "Running",
        "startTime": started,
        "hostIP": "127.0.0.1",
        "conditions": [_scheduled(started)],
        "containerStatuses": [_container_status(container, state, ready=True)],
    }


def _terminated_status(
    container: dict[str, Any], started: str, code: int, message: str, overdue: bool
) -> dict[str, Any]:
    exit_code = 137 if overdue else code
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": started,
        "finishedAt": _now(),
    }
    if message:
        terminated["message"] = message
    status: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [_container_status(container, {"terminated": terminated}, ready=False)],
    }
    if overdue:
        status.update(
            reason="DeadlineExceeded", message="Pod was active on the node longer than the specified deadline"
        )
    return status


# ---------------------------------------------------------------------------------------------
# Workloads that run nothing: Deployments get pods, pods get IPs and Ready, Services EndpointSlices

STAND_IN_LABEL = "mesh-auditor.io/stand-in"
POD_CIDR = "10.244.0.0/16"
ENDPOINTSLICE_MANAGER = "endpointslice-controller.k8s.io"
TEMPLATE_HASH = "mesh-auditor.io/template-hash"
REDIRECTION = "ambient.istio.io/redirection"
GATEWAY_API = "gateway.networking.k8s.io/v1"


class WorkloadStandIn:
    """What the Deployment controller, a kubelet and the EndpointSlice controller would do for
    pods whose containers are never run (waypoints, the retail-store apps), so that istiod sees
    workloads: until ``stop()``, every ``poll_s`` seconds it

    - creates ``spec.replicas`` (default 1) pods ``<deployment>-<i>`` from each Deployment's
      template, owned by it and labelled ``mesh-auditor.io/stand-in: "true"``, and writes the
      Deployment's status (replicas ready and available) through the status subresource; a pod
      the API server refuses (its ServiceAccount does not exist yet) is retried on the next poll;
    - binds every unscheduled pod that is not a probe pod (``exclude``: the ``PodExecutor``'s
      selector) to the node and gives it a pod IP from ``pod_cidr``, phase ``Running`` and the
      ``Ready`` and ``ContainersReady`` conditions, as a kubelet reports a started pod;
    - keeps one EndpointSlice ``<service>-stand-in`` per Service with a selector, listing the
      matching pods that have an IP (ready, serving), with the Service's ports (a named
      ``targetPort`` resolved through the container ports, as the controller does).

    Nothing runs in the pods and nothing is deleted when a Deployment scales down. Errors are
    collected in ``errors`` and the loop keeps going.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        node_name: str = "auto-node-1",
        node_labels: dict[str, str] | None = None,
        pod_cidr: str = POD_CIDR,
        exclude: str = DEFAULT_SELECTOR,
        poll_s: float = 0.5,
        cni_selectors: list[dict[str, Any]] | None = None,
    ) -> None:
        self._api = api
        self._cni_selectors = cni_selectors or []
        self.node_name = node_name
        self.node_labels = dict(AUTO_MODE_LABELS if node_labels is None else node_labels)
        self._network = ipaddress.ip_network(pod_cidr)
        self._exclude = exclude
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="workload-stand-in", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> WorkloadStandIn:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": self.node_labels}}
        try:
            _api_call(self._api, "POST", "/api/v1/nodes", body=node)
        except _ApiError as error:
            if error.status != 409:
                raise
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def reconcile(self) -> None:
        """One pass: garbage, pods for Deployments, pod status, istio-cni's annotation, EndpointSlices."""
        self._collect_garbage()
        self._deployments()
        self._pods(self._call_list("/api/v1/pods"))
        pods = self._call_list("/api/v1/pods")
        if self._cni_selectors:
            self._redirection(pods)
        self._endpoint_slices(pods)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.reconcile()
            except Exception as error:  # noqa: BLE001 - a stand-in controller keeps going, like the real ones
                self._error(f"{type(error).__name__}: {error}")

    def _error(self, message: str) -> None:
        if message not in self.errors[-20:]:
            self.errors.append(message)

    def _call_list(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else None
        items: list[dict[str, Any]] = _api_call(self._api, "GET", path, query=query)["items"]
        return items

    # --- the garbage collector ------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        # What istiod renders for a waypoint (Deployment, Service, ServiceAccount) is owned by the
        # Gateway, an EndpointSlice by its Service: deleting the owner deletes them on a cluster.
        owners = {
            "Gateway": {g["metadata"]["uid"] for g in self._call_list(f"/apis/{GATEWAY_API}/gateways")},
            "Service": {s["metadata"]["uid"] for s in self._call_list("/api/v1/services")},
        }
        dependents = ("/apis/apps/v1/deployments", "/api/v1/services", "/api/v1/serviceaccounts")
        for path in (*dependents, "/apis/discovery.k8s.io/v1/endpointslices"):
            for item in self._call_list(path):
                meta = item["metadata"]
                refs = [r for r in meta.get("ownerReferences") or [] if r.get("kind") in owners]
                if refs and all(r["uid"] not in owners[r["kind"]] for r in refs):
                    with contextlib.suppress(_ApiError):
                        _api_call(self._api, "DELETE", f"{_namespaced(path, meta['namespace'])}/{meta['name']}")

    # --- the Deployment controller --------------------------------------------------------------

    def _deployments(self) -> None:
        deployments = [
            d for d in self._call_list("/apis/apps/v1/deployments") if not d["metadata"].get("deletionTimestamp")
        ]
        hashes = {d["metadata"]["uid"]: _template_hash(d) for d in deployments}
        existing: set[tuple[str, str]] = set()
        for pod in self._call_list("/api/v1/pods", f"{STAND_IN_LABEL}=true"):
            meta = pod["metadata"]
            owners: list[dict[str, Any]] = meta.get("ownerReferences") or [{}]
            owner = owners[0].get("uid")
            # There is no garbage collector: a pod whose Deployment is gone or whose template
            # changed is deleted here (and re-created from the new template next time).
            if hashes.get(owner) != (meta.get("annotations") or {}).get(TEMPLATE_HASH):
                with contextlib.suppress(_ApiError):
                    _api_call(self._api, "DELETE", _pod_path(meta), body={"gracePeriodSeconds": 0})
                continue
            existing.add((meta["namespace"], meta["name"]))
        for deployment in deployments:
            meta = deployment["metadata"]
            replicas = deployment["spec"].get("replicas", 1)
            for index in range(replicas):
                name = f"{meta['name']}-{index}"
                if (meta["namespace"], name) not in existing:
                    self._create_pod(deployment, name, hashes[meta["uid"]])
            self._deployment_status(deployment, replicas)

    def _create_pod(self, deployment: dict[str, Any], name: str, template_hash: str) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        template_meta = template.get("metadata") or {}
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {**(template_meta.get("labels") or {}), STAND_IN_LABEL: "true"},
                "annotations": {**(template_meta.get("annotations") or {}), TEMPLATE_HASH: template_hash},
                "ownerReferences": [owner],
            },
            "spec": template["spec"],
        }
        try:
            _api_call(self._api, "POST", f"/api/v1/namespaces/{meta['namespace']}/pods", body=pod)
        except _ApiError as error:
            if error.status != 409:
                self._error(f"pod {meta['namespace']}/{name}: {error}")

    def _deployment_status(self, deployment: dict[str, Any], replicas: int) -> None:
        meta = deployment["metadata"]
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        current = deployment.get("status") or {}
        if all(current.get(key) == value for key, value in status.items()):
            return
        path = f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}/status"
        _api_call(self._api, "PATCH", path, body={"status": status}, content_type="application/merge-patch+json")

    # --- the scheduler and the kubelet -----------------------------------------------------------

    def _pods(self, pods: list[dict[str, Any]]) -> None:
        excluded = {p["metadata"]["uid"] for p in self._call_list("/api/v1/pods", self._exclude)}
        used = {(p.get("status") or {}).get("podIP") for p in pods}
        candidates = (ip for ip in self._network.hosts() if str(ip) not in used)
        for pod in pods:
            meta = pod["metadata"]
            if meta["uid"] in excluded or meta.get("deletionTimestamp") or (pod.get("status") or {}).get("podIP"):
                continue
            if not pod["spec"].get("nodeName"):
                binding = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": meta["name"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
                }
                _api_call(self._api, "POST", f"{_pod_path(meta)}/binding", body=binding)
            patch = {"status": _ready_status(pod, str(next(candidates)))}
            _api_call(
                self._api, "PATCH", f"{_pod_path(meta)}/status", body=patch,
                content_type="application/merge-patch+json",
            )  # fmt: skip

    # --- istio-cni's node agent ------------------------------------------------------------------

    def _redirection(self, pods: list[dict[str, Any]]) -> None:
        # istio-cni annotates a pod it redirected to ztunnel (cni/pkg/util/podutil.go
        # AnnotateEnrolledPod) and removes the annotation when the pod leaves the mesh; which pods
        # it redirects is CompiledEnablementSelectors.Matches (enablement_selector.go).
        namespaces = {
            n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in self._call_list("/api/v1/namespaces")
        }
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or not (pod.get("status") or {}).get("podIP"):
                continue
            wanted = redirection_enabled(pod, namespaces.get(meta["namespace"], {}), self._cni_selectors)
            current = (meta.get("annotations") or {}).get(REDIRECTION) == "enabled"
            if wanted != current:
                patch = {"metadata": {"annotations": {REDIRECTION: "enabled" if wanted else None}}}
                _api_call(self._api, "PATCH", _pod_path(meta), body=patch, content_type="application/merge-patch+json")

    # --- the EndpointSlice controller ------------------------------------------------------------

    def _endpoint_slices(self, pods: list[dict[str, Any]]) -> None:
        for service in self._call_list("/api/v1/services"):
            selector = service["spec"].get("selector")
            if not selector or service["metadata"].get("deletionTimestamp"):
                continue
            namespace = service["metadata"]["namespace"]
            members = [
                p
                for p in pods
                if p["metadata"]["namespace"] == namespace
                and not p["metadata"].get("deletionTimestamp")
                and (p.get("status") or {}).get("podIP")
                and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            ]
            self._apply_slice(service, members)

    def _apply_slice(self, service: dict[str, Any], members: list[dict[str, Any]]) -> None:
        meta = service["metadata"]
        base = f"/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}/endpointslices"
        wanted = controller_slices(service, members, self.node_name)
        for body in wanted:
            name = body["metadata"]["name"]
            try:
                current = _api_call(self._api, "GET", f"{base}/{name}")
            except _ApiError as error:
                if error.status != 404:
                    raise
                _api_call(self._api, "POST", base, body=body)
                continue
            if current.get("endpoints") == body["endpoints"] and current.get("ports") == body["ports"]:
                continue
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            _api_call(self._api, "PUT", f"{base}/{name}", body=body)
        # A port set no pod has any more: its slice goes, as the controller removes it.
        names = {b["metadata"]["name"] for b in wanted}
        selector = (
            f"kubernetes.io/service-name={meta['name']},endpointslice.kubernetes.io/managed-by={ENDPOINTSLICE_MANAGER}"
        )
        for old in _api_call(self._api, "GET", base, query=[("labelSelector", selector)]).get("items") or []:
            if old["metadata"]["name"] not in names and old["metadata"]["name"].startswith(f"{meta['name']}-stand-in"):
                _api_call(self._api, "DELETE", f"{base}/{old['metadata']['name']}")


def controller_slices(service: dict[str, Any], members: list[dict[str, Any]], node_name: str) -> list[dict[str, Any]]:
    """The EndpointSlices the EndpointSlice controller would keep for ``service`` (API JSON) and the
    pods its selector matches (``members``, with pod IPs): one slice per distinct set of resolved
    ports (a named ``targetPort`` resolves per pod through its container ports; a pod without that
    port is left out of that port), named ``<service>-stand-in`` then ``-stand-in-1``..., labelled
    ``kubernetes.io/service-name`` and managed by ``endpointslice-controller.k8s.io``. An entry is
    ``ready`` and ``serving`` as the pod's Ready condition, not terminating; ``nodeName`` is the
    pod's (``node_name`` when unscheduled). Tests that write pods by hand apply these too.
    """
    meta = service["metadata"]
    service_ports = service["spec"].get("ports") or []
    groups: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for pod in sorted(members, key=lambda p: str(p["metadata"]["name"])):
        ports = [entry for port in service_ports if (entry := _slice_port(port, [pod], strict=True)) is not None]
        groups.setdefault(json.dumps(ports, sort_keys=True), (ports, []))[1].append(pod)
    if not groups:
        groups[""] = ([_slice_port(port, [], strict=False) or {} for port in service_ports], [])
    bodies = []
    for number, (_, (ports, pods)) in enumerate(sorted(groups.items())):
        endpoints = [_slice_endpoint(pod, node_name) for pod in pods]
        body: dict[str, Any] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{meta['name']}-stand-in" + (f"-{number}" if number else ""),
                "namespace": meta["namespace"],
                "labels": {
                    "kubernetes.io/service-name": meta["name"],
                    "endpointslice.kubernetes.io/managed-by": ENDPOINTSLICE_MANAGER,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }
        bodies.append(body)
    return bodies


def _slice_endpoint(pod: dict[str, Any], node_name: str) -> dict[str, Any]:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return {
        "addresses": [pod["status"]["podIP"]],
        "conditions": {"ready": ready, "serving": ready, "terminating": False},
        "nodeName": pod["spec"].get("nodeName") or node_name,
        "targetRef": {
            "kind": "Pod",
            "namespace": pod["metadata"]["namespace"],
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        },
    }


def redirection_enabled(pod: dict[str, Any], namespace_labels: dict[str, str], selectors: list[dict[str, Any]]) -> bool:
    """istio-cni's CompiledEnablementSelectors.Matches: would it redirect this pod to ztunnel?

    ``selectors`` is the istio-cni chart's ``ambient.enablementSelectors``: a list of
    ``{podSelector, namespaceSelector}`` label selectors (an absent one matches everything). A
    host-network pod or one with a sidecar (``sidecar.istio.io/status``) never is.
    """
    if pod["spec"].get("hostNetwork") or "sidecar.istio.io/status" in (pod["metadata"].get("annotations") or {}):
        return False
    labels = pod["metadata"].get("labels") or {}
    return any(
        _selects(entry.get("podSelector") or {}, labels)
        and _selects(entry.get("namespaceSelector") or {}, namespace_labels)
        for entry in selectors
    )


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _namespaced(list_path: str, namespace: str) -> str:
    """``/apis/apps/v1/deployments`` -> ``/apis/apps/v1/namespaces/<namespace>/deployments``."""
    head, _, resource = list_path.rpartition("/")
    return f"{head}/namespaces/{namespace}/{resource}"


def _template_hash(deployment: dict[str, Any]) -> str:
    template = json.dumps(deployment["spec"]["template"], sort_keys=True)
    return hashlib.sha256(template.encode()).hexdigest()[:16]


def _ready_status(pod: dict[str, Any], ip: str) -> dict[str, Any]:
    now = _now()
    containers = [
        _container_status(c, {"running": {"startedAt": now}}, ready=True) for c in pod["spec"].get("containers") or []
    ]
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    return {
        "phase": "Running",
        "startTime": now,
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": conditions,
        "containerStatuses": containers,
    }


def _slice_port(port: dict[str, Any], members: list[dict[str, Any]], *, strict: bool) -> dict[str, Any] | None:
    """The slice port of a Service port for ``members``: a named targetPort resolves through the first
    member's container ports, as the controller does per pod; unresolved, the port is left out
    (``strict``) or stays the Service port (no member to resolve it with)."""
    target = port.get("targetPort", port["port"])
    if isinstance(target, str):
        named = [
            p["containerPort"]
            for pod in members[:1]
            for c in pod["spec"].get("containers") or []
            for p in c.get("ports") or []
            if p.get("name") == target
        ]
        if not named and strict:
            return None
        target = named[0] if named else port["port"]
    entry: dict[str, Any] = {"port": int(target), "protocol": port.get("protocol", "TCP")}
    if port.get("name"):
        entry["name"] = port["name"]
    if port.get("appProtocol"):
        entry["appProtocol"] = port["appProtocol"]
    return entry


def main(argv: list[str] | None = None) -> int:
    """``python -m testrigs.devtools.podexecutor --kubeconfig PATH``: run the WorkloadStandIn until SIGTERM."""
    import argparse  # noqa: PLC0415 - only the command line needs it
    import signal  # noqa: PLC0415 - only the command line needs it

    from kubernetes import config  # noqa: PLC0415 - the client library is slow to import

    parser = argparse.ArgumentParser(prog="podexecutor", description="Workload stand-in for a kubelet-less cluster.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument(
        "--cni-selectors", help="istio-cni's ambient.enablementSelectors as JSON: also stand in for istio-cni"
    )
    parser.add_argument("--node-name", default="auto-node-1", help="the node every pod is bound to")
    parser.add_argument("--pod-cidr", default=POD_CIDR, help="where pod IPs come from")
    args = parser.parse_args(argv)
    api: ApiClient = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    selectors = json.loads(args.cni_selectors) if args.cni_selectors else None
    stand_in_options = {"cni_selectors": selectors, "node_name": args.node_name, "pod_cidr": args.pod_cidr}
    with WorkloadStandIn(api, **stand_in_options) as stand_in:
        reported = 0
        while not stopped.wait(1.0):
            for message in stand_in.errors[reported:]:
                print(f"workload-stand-in: {message}", file=sys.stderr, flush=True)
            reported = len(stand_in.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
