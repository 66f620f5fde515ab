"""The lab's kubelet: probe pods created in the lab's API server run inside their own lab pods.

Role: ``lab up`` starts this daemon (``python -m testrigs.lab _kubelet``). It is the test pod
executor (``testrigs.devtools.podexecutor.PodExecutor``: an EKS Auto Mode ``Node``, binding,
status and termination message written back, deadlines, graceful deletion) with a
``LabLauncher`` as its "where to run" hook:

1. the translator's reconcile (``Lab.reconcile``, called here too so the pod never waits for the
   next poll) turns the bound Pod into a lab pod: its own network namespace and address,
   captured or not by the rules of semantics §2 (pod label, namespace label), and, when
   captured, its own ztunnel Envoy holding the certificate of the pod's ServiceAccount
   (``spiffe://cluster.local/ns/<ns>/sa/<sa>``), nat rules and DNS files;
2. the launcher waits until that pod's nat rules and DNS files are in place, then starts the
   container's command with ``ip netns exec <pod namespace>`` (which bind-mounts the pod's
   ``hosts``/``resolv.conf``: Service names resolve as the lab's DNS says) and ``setpriv`` to
   the pod's ``runAsUser``/``runAsGroup`` (default 65532) with no new privileges and an empty
   capability bounding set. Its traffic is then captured like any pod's: only uid 1337 (the
   proxy) is exempt. ``python`` is the lab's probe image (``image.py``).

It schedules as the scheduler would over the lab's nodes (``nodes.schedule``: topology spread on
``kubernetes.io/hostname``, so one run's probe pods land on different nodes) and runs the pods of
every lab node. Only pods matching the executor's selector (``app.kubernetes.io/managed-by=mesh-auditor``) are
run; the lab's own workloads are never scheduled. Because the launcher reconciles from the API
server before starting a process, a probe pod always meets a data plane at least as new as the
API state when it was created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from testrigs.devtools.podexecutor import LaunchError, PodExecutor
from testrigs.lab import image as probe_image
from testrigs.lab import nodes as lab_nodes
from testrigs.lab.lab import Lab, LabError
from testrigs.lab.procs import IP
from testrigs.lab.proxy import SETPRIV

NODE_NAME = lab_nodes.names(1)[0]  # the first lab node; a pod without a spread constraint goes there
NODE_LABELS = lab_nodes.labels(NODE_NAME)
DEFAULT_UID = 65532
POD_READY_TIMEOUT_S = 30.0
POLL_S = 0.2


def _security(pod: dict[str, Any]) -> tuple[int, int]:
    """runAsUser/runAsGroup: the container's, else the pod's, else 65532 (the image's user)."""
    pod_context = pod["spec"].get("securityContext") or {}
    container_context = pod["spec"]["containers"][0].get("securityContext") or {}
    uid = container_context.get("runAsUser", pod_context.get("runAsUser", DEFAULT_UID))
    gid = container_context.get("runAsGroup", pod_context.get("runAsGroup", uid))
    if int(uid) == 0 and (container_context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
        raise LaunchError("container has runAsNonRoot and would run as root (uid 0)")
    return int(uid), int(gid)


class LabLauncher:
    """Starts a pod's container inside its lab pod (see the module docstring)."""

    def __init__(self, lab: Lab, image: probe_image.Image, timeout_s: float = POD_READY_TIMEOUT_S) -> None:
        self._lab = lab
        self._image = image
        self._timeout_s = timeout_s

    def pod_netns(self, key: str) -> str:
        """The pod's lab network namespace, once its nat rules and DNS files are in place."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                self._lab.reconcile()
            except Exception as error:  # noqa: BLE001 - the next attempt may succeed; the deadline decides
                print(f"kubelet: reconcile for {key} failed: {error}", file=sys.stderr, flush=True)
            record = self._lab.load()
            if record is None:
                raise LaunchError("the lab is gone")
            if key in record.pods and key in record.applied:
                return record.pods[key].netns
            if time.monotonic() > deadline:
                raise LaunchError(f"the lab did not create pod {key} within {self._timeout_s:.0f} s")
            time.sleep(POLL_S)

    def launch(
        self, pod: dict[str, Any], argv: list[str], env: dict[str, str], workdir: Path
    ) -> subprocess.Popen[bytes]:
        meta = pod["metadata"]
        netns = self.pod_netns(f"{meta['namespace']}/{meta['name']}")
        return start_in_pod(self._image, pod, netns, argv, env, workdir=workdir)


def start_in_pod(
    image: probe_image.Image, pod: dict[str, Any], netns: str, argv: list[str], env: dict[str, str], *, workdir: Path
) -> subprocess.Popen[bytes]:
    """Start a pod's container command in the pod's network namespace ``netns``, as its user.

    ``argv``/``env``/``workdir`` as the pod executor's ``Launcher.launch`` gets them; ``python`` is
    the probe image's interpreter. ``ip netns exec`` bind-mounts the pod's ``hosts`` and
    ``resolv.conf``; ``setpriv`` drops to the pod's ``runAsUser``/``runAsGroup`` (default 65532)
    with no new privileges and no capabilities (unless the image must run as root). Shared by the
    emulated lab's kubelet and the real node's (``realkubelet``). Raises LaunchError for a
    runAsNonRoot container that would run as root.
    """
    if argv and argv[0] in {"python", "python3"}:
        argv = [image.python, *argv[1:]]
    env = {**env, "PYTHONPATH": image.pythonpath, "PYTHONNOUSERSITE": "1", "HOME": str(workdir)}
    prefix = [IP, "netns", "exec", netns]
    if not image.as_root:
        uid, gid = _security(pod)
        for path in (workdir, *workdir.iterdir()):  # the termination log belongs to the pod's user
            os.chown(path, uid, gid)
        prefix += [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        prefix += ["--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
    return subprocess.Popen([*prefix, *argv], env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(lab: Lab) -> int:
    """The daemon: run probe pods until SIGTERM or until the lab is torn down."""
    from testrigs.lab import translator  # noqa: PLC0415 - the kubernetes client is slow to import

    record = lab.load()
    if record is None:
        return 1
    image_file = lab.state_dir / "image" / "image.json"
    if not image_file.exists():
        raise LabError(f"{image_file} is missing: the lab's up did not build the probe image")
    image = probe_image.Image.load(image_file)
    if image.as_root:
        print("kubelet: no system python matches this one: probe pods run as root", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with translator.new_client(Path(record.kubeconfig)) as api:

        def schedule(pod: dict[str, Any]) -> str:
            # The scheduler's PodTopologySpread over the lab's nodes, counting the pods bound so far.
            namespace = pod["metadata"]["namespace"]
            placed = translator.get_json(api, f"/api/v1/namespaces/{namespace}/pods").get("items") or []
            return lab_nodes.schedule(pod, record.nodes, placed)

        executor = PodExecutor(
            api,
            node_name=record.nodes[0],
            node_labels=lab_nodes.labels(record.nodes[0]),
            launcher=LabLauncher(lab, image),
            poll_s=POLL_S,
            scheduler=schedule,
            other_nodes=record.nodes[1:],
        )
        run_until_removed(executor, lab.record_path, stop)
    return 0


def run_until_removed(executor: PodExecutor, record_path: Path, stop: threading.Event) -> None:
    """Run ``executor`` until ``stop`` is set or the lab's record (``record_path``) is gone, printing
    each new executor error on stderr once; both lab kubelets (emulated and real node) use it."""
    executor.start()
    try:
        reported = 0
        while not stop.wait(1.0) and record_path.exists():
            for error in executor.errors[reported:]:
                print(f"kubelet: {error}", file=sys.stderr, flush=True)
            reported = len(executor.errors)
    finally:
        executor.stop()
