"""The stand-in kubelet: which pod spec leads to which status written back to the real API server."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.podexecutor import LaunchError, PodExecutor

pytestmark = pytest.mark.kube

LABEL = "mesh-auditor.dev/executor-test"
# Writes $MESSAGE to the termination log, then exits with $CODE (or sleeps for ever if $SLEEP).
SCRIPT = (
    "import os, sys, time\n"
    "open('/dev/termination-log', 'w').write(os.environ['MESSAGE'])\n"
    "time.sleep(3600) if os.environ.get('SLEEP') else sys.exit(int(os.environ['CODE']))\n"
)


@pytest.fixture
def local(kube_api: KubeAPI, kube_namespace: str) -> Iterator[PodExecutor]:
    """An executor for this test's pods only, and the ServiceAccount they run as."""
    kube_api.kubectl("create", "serviceaccount", "runner", f"--namespace={kube_namespace}")
    with kube_api.new_client() as api, PodExecutor(api, selector=f"{LABEL}={kube_namespace}") as running:
        yield running


def _pod(namespace: str, *, env: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}", "namespace": namespace, "labels": {LABEL: namespace}},
        "spec": {
            "serviceAccountName": "runner",
            "restartPolicy": "Never",
            "nodeSelector": {"eks.amazonaws.com/compute-type": "auto"},
            "containers": [
                {
                    "name": "main",
                    "image": "local:test",
                    "command": ["python", "-c", SCRIPT],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ],
            **spec,
        },
    }


def _create(kube: KubeAPI, pod: dict[str, Any]) -> str:
    kube.kubectl("create", "--filename=-", stdin=json.dumps(pod))
    return str(pod["metadata"]["name"])


def _read(kube: KubeAPI, namespace: str, name: str) -> dict[str, Any] | None:
    found = kube.kubectl(
        "get", "pods", f"--namespace={namespace}", f"--field-selector=metadata.name={name}", "--output=json"
    )
    items: list[dict[str, Any]] = json.loads(found)["items"]
    return items[0] if items else None


def _until(
    kube: KubeAPI, namespace: str, name: str, done: Callable[[dict[str, Any] | None], bool]
) -> dict[str, Any] | None:
    for _ in range(200):
        pod = _read(kube, namespace, name)
        if done(pod):
            return pod
        time.sleep(0.1)
    pytest.fail(f"pod {namespace}/{name} never reached the expected state: {_read(kube, namespace, name)}")


def _phase(pod: dict[str, Any] | None) -> str:
    return "" if pod is None else str(pod.get("status", {}).get("phase", ""))


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]
    return dict(state["terminated"])


def test_pod_runs_as_a_local_process_and_reports_its_termination_message(
    kube_api: KubeAPI, kube_namespace: str, local: PodExecutor
) -> None:
    """Exit 0: bound to the Auto Mode node, Succeeded, the message from the termination log."""
    name = _create(kube_api, _pod(kube_namespace, env={"MESSAGE": "hello from the pod", "CODE": "0"}))
    pod = _until(kube_api, kube_namespace, name, lambda p: _phase(p) == "Succeeded")
    assert pod is not None
    assert pod["spec"]["nodeName"] == local.node_name
    assert _terminated(pod)["exitCode"] == 0
    assert _terminated(pod)["reason"] == "Completed"
    assert _terminated(pod)["message"] == "hello from the pod"


def test_nonzero_exit_fails_the_pod(kube_api: KubeAPI, kube_namespace: str, local: PodExecutor) -> None:
    """Exit 2: Failed, exit code and reason Error, the message still kept."""
    name = _create(kube_api, _pod(kube_namespace, env={"MESSAGE": "bad plan", "CODE": "2"}))
    pod = _until(kube_api, kube_namespace, name, lambda p: _phase(p) == "Failed")
    assert pod is not None
    assert (_terminated(pod)["exitCode"], _terminated(pod)["reason"]) == (2, "Error")


def test_unmatched_node_selector_stays_pending_unschedulable(
    kube_api: KubeAPI, kube_namespace: str, local: PodExecutor
) -> None:
    """A nodeSelector the fake node does not satisfy: PodScheduled False, Unschedulable, never bound."""
    pod = _pod(
        kube_namespace, env={"MESSAGE": "", "CODE": "0"}, nodeSelector={"eks.amazonaws.com/compute-type": "hybrid"}
    )
    name = _create(kube_api, pod)
    stored = _until(kube_api, kube_namespace, name, lambda p: bool(p and p.get("status", {}).get("conditions")))
    assert stored is not None
    condition = stored["status"]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert "nodeName" not in stored["spec"]
    assert _phase(stored) == "Pending"


def test_active_deadline_kills_the_process_and_fails_the_pod(
    kube_api: KubeAPI, kube_namespace: str, local: PodExecutor
) -> None:
    """A process running past activeDeadlineSeconds: killed, Failed with reason DeadlineExceeded."""
    pod = _pod(kube_namespace, env={"MESSAGE": "", "SLEEP": "1"}, activeDeadlineSeconds=1)
    name = _create(kube_api, pod)
    stored = _until(kube_api, kube_namespace, name, lambda p: _phase(p) == "Failed")
    assert stored is not None
    assert stored["status"]["reason"] == "DeadlineExceeded"
    assert _terminated(stored)["exitCode"] == 137


def test_deleting_a_running_pod_kills_its_process_and_completes_the_deletion(
    kube_api: KubeAPI, kube_namespace: str, local: PodExecutor
) -> None:
    """Graceful deletion of a bound pod: the executor kills the process and removes the pod, like a kubelet."""
    name = _create(kube_api, _pod(kube_namespace, env={"MESSAGE": "", "SLEEP": "1"}))
    _until(kube_api, kube_namespace, name, lambda p: _phase(p) == "Running")
    kube_api.kubectl("delete", "pod", name, f"--namespace={kube_namespace}", "--wait=false")
    _until(kube_api, kube_namespace, name, lambda p: p is None)
    run = local.finished.get(f"{kube_namespace}/{name}")
    for _ in range(50):
        run = local.finished.get(f"{kube_namespace}/{name}")
        if run is not None:
            break
        time.sleep(0.1)
    assert run is not None
    assert run.process.returncode == -9


class _RefusingLauncher:
    """A "where to run" hook that cannot start anything (say, the pod's network is not there)."""

    def launch(
        self, pod: dict[str, Any], argv: list[str], env: dict[str, str], workdir: Path
    ) -> subprocess.Popen[bytes]:
        raise LaunchError("no sandbox for this pod")


def test_a_launcher_that_cannot_start_the_container_leaves_the_pod_pending(
    kube_api: KubeAPI, kube_namespace: str
) -> None:
    """The launch hook's failure: bound, Pending, container waiting with CreateContainerError and the reason."""
    kube_api.kubectl("create", "serviceaccount", "runner", f"--namespace={kube_namespace}")
    selector = f"{LABEL}={kube_namespace}"
    with kube_api.new_client() as api, PodExecutor(api, selector=selector, launcher=_RefusingLauncher()) as executor:
        name = _create(kube_api, _pod(kube_namespace, env={"MESSAGE": "", "CODE": "0"}))
        stored = _until(
            kube_api, kube_namespace, name, lambda p: bool(p and p.get("status", {}).get("containerStatuses"))
        )
        assert stored is not None
        assert stored["spec"]["nodeName"] == executor.node_name
        assert _phase(stored) == "Pending"
        waiting = stored["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting == {"reason": "CreateContainerError", "message": "no sandbox for this pod"}
        assert any("no sandbox for this pod" in error for error in executor.errors)
