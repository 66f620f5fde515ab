"""The real node's kubelet: the auditor's probe pods run in their own pod namespaces on the real data plane.

Role: ``RealNode.start_kubelet`` starts this daemon (``python -m testrigs.lab.realkubelet
--state-dir DIR``). It is the test pod executor (``testrigs.devtools.podexecutor.PodExecutor``:
binding to the node ``malab-node-1``, status and termination message written back, deadlines,
graceful deletion) with ``RealLauncher`` as its "where to run" hook, the real node's counterpart of
the emulated lab's ``kubelet.LabLauncher``. For each probe pod it does what a kubelet and
istio-cni do before a container starts:

1. gives the pod an address (``RealNode.assign_address``, written to its status: the workload
   stand-in leaves probe pods to the executor), so istiod sees the workload and, when istio-cni
   would redirect it, the stand-in writes ``ambient.istio.io/redirection: enabled``;
2. decides as istio-cni does (``podexecutor.redirection_enabled`` over the chart's enablement
   selectors and the namespace's labels) whether the pod is captured; a captured pod waits for
   the annotation, and its container starts only once ztunnel acked the pod over ZDS
   (``RealNode.wait_handed``), as istio-cni's CNI plugin holds the sandbox until then;
3. ``RealNode.sync_pods`` gives it its namespace, address and DNS files, and the container
   command starts there as the pod's user (``kubelet.start_in_pod``, shared with the emulated lab).

The auditor sees only API objects: a bound pod, Running, then Succeeded or Failed with its
termination message, exactly as on a cluster. A pod deleted through the API loses its process
(executor) and its namespace (the next ``sync_pods``).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testrigs.devtools import istio
from testrigs.devtools.podexecutor import AUTO_MODE_LABELS, LaunchError, PodExecutor, redirection_enabled
from testrigs.lab import image as probe_image
from testrigs.lab.kubelet import run_until_removed, start_in_pod
from testrigs.lab.realnode import NODE_NAME, REDIRECTION, RealNode, RealNodeError

POD_READY_TIMEOUT_S = 60.0
POLL_S = 0.2


class RealLauncher:
    """Starts a probe pod's container in its pod namespace on the real node (see the module docstring)."""

    def __init__(self, node: RealNode, image: probe_image.Image, timeout_s: float = POD_READY_TIMEOUT_S) -> None:
        self._node = node
        self._image = image
        self._timeout_s = timeout_s
        self._selectors = istio.cni_enablement_selectors()

    def captured(self, pod: dict[str, Any]) -> bool:
        """Would istio-cni redirect the pod (its labels, its namespace's labels)?"""
        namespace = json.loads(self._node.kubectl("get", "namespace", pod["metadata"]["namespace"], "--output=json"))
        return redirection_enabled(pod, namespace["metadata"].get("labels") or {}, self._selectors)

    def pod_netns(self, pod: dict[str, Any]) -> str:
        """Address the pod, wait for istio-cni's annotation and ztunnel's ack when captured; its namespace."""
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        try:
            self._node.assign_address(pod)
            captured = self.captured(pod)
            deadline = time.monotonic() + self._timeout_s
            while True:
                stored = json.loads(
                    self._node.kubectl("get", "pod", meta["name"], f"--namespace={meta['namespace']}", "--output=json")
                )
                annotated = (stored["metadata"].get("annotations") or {}).get(REDIRECTION) == "enabled"
                if annotated or not captured:
                    pods = self._node.sync_pods()
                    if key in pods:
                        break
                if time.monotonic() > deadline:
                    raise LaunchError(f"pod {key} got no namespace within {self._timeout_s:.0f} s")
                time.sleep(POLL_S)
            if captured:
                self._node.wait_handed({key}, timeout=max(1.0, deadline - time.monotonic()))
            return pods[key]["netns"]
        except RealNodeError as error:
            raise LaunchError(str(error)) from error

    def launch(
        self, pod: dict[str, Any], argv: list[str], env: dict[str, str], workdir: Path
    ) -> subprocess.Popen[bytes]:
        return start_in_pod(self._image, pod, self.pod_netns(pod), argv, env, workdir=workdir)


def run(node: RealNode) -> int:
    """The daemon: run probe pods until SIGTERM or until the node is torn down."""
    from testrigs.lab import translator  # noqa: PLC0415 - the kubernetes client is slow to import

    image = probe_image.Image.load(node.state_dir / "image" / "image.json")
    if image.as_root:
        print("kubelet: no system python matches this one: probe pods run as root", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with translator.new_client(node.kubeconfig) as api:
        executor = PodExecutor(
            api, node_name=NODE_NAME, node_labels=AUTO_MODE_LABELS, launcher=RealLauncher(node, image), poll_s=POLL_S
        )
        run_until_removed(executor, node.record_path, stop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="realkubelet", description="Run probe pods on the real-ztunnel lab node.")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    return run(RealNode(args.state_dir))


if __name__ == "__main__":
    sys.exit(main())
