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
starts it here, as the test's user, on loopback; the mesh lab's ``auditor.lab.kubelet.LabLauncher``
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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTO_MODE_LABELS = {"eks.amazonaws.com/compute-type": "auto", "karpenter.sh/nodepool": "general-purpose"}
DEFAULT_SELECTOR = "app.kubernetes.io/managed-by=mesh-auditor"
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
    ) -> None:
        self._api = api
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
        if pod["spec"].get("nodeName") != self.node_name:
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
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        self._call("POST", f"{_pod_path(meta)}/binding", body=binding)

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
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, payload, _ = self._api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        response = self._api.call_api(method, url, header_params=headers, body=payload, _request_timeout=(5, 30))
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
