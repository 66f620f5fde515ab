"""One lab node on the real data plane: the real ztunnel (shared, in-pod mode), fed by the real istiod.

Role: the lab's Envoy-as-ztunnel (``proxy``, ``envoyconf``) is rendered by the project's own
translator, so it agrees with the static model by construction. This node is the independent
witness (issue #12): nothing of the project's ambient model is involved between the API server and
the traffic.

* **Control plane.** ``controlplane.up(istio=True)``: etcd, kube-apiserver, istiod
  (``testrigs.devtools.istio``) and the workload stand-in, which gives pods of Deployments an
  address from ``POD_CIDR`` (inside the lab's 198.18.0.0/15) on this node, and istio-cni's
  redirection annotation.
* **Node.** The lab's bridge namespace ``malab-<id>-br`` is the node's network. Every API pod
  with an address gets a lab pod namespace with that address, the lab app on its container ports,
  and a route to the Service range (no default route). A pod ztunnel does not hold also gets
  kube-proxy's DNAT of the Service VIPs in its own nat table (``_service_backends``).
* **CNI agent.** ``zds`` (a daemon) hands each pod that istio-cni would redirect (the stand-in's
  ``ambient.istio.io/redirection: enabled``) to ztunnel with its netns fd, after installing the
  in-pod rules (``inpod``).
* **ztunnel.** ``testrigs.devtools.ztunnel`` builds it; it runs in the node namespace with
  ``PROXY_MODE=shared`` and reaches istiod's XDS and CA port through ``relay``.
* **Certificates: istiod's issuance, the lab CA plugged in.** ztunnel authenticates with a token
  of the ServiceAccount ``istio-system/ztunnel`` (audience ``istio-ca``) bound to a Pod
  ``istio-system/ztunnel-<node>`` on this node, which the API server mints (TokenRequest) and
  istiod checks by TokenReview; istiod signs a pod's certificate only when a pod with that
  ServiceAccount runs on ztunnel's node (``CA_TRUSTED_NODE_ACCOUNTS``, node_auth.go). istiod signs
  with the lab's CA, plugged in as ``cacerts`` (``LabCA``), so the lab can give its Envoy
  waypoints certificates ztunnel trusts (upstream Envoy has no client for istiod's CSR API).
* **Waypoints.** A waypoint pod istiod rendered gets a namespace and the lab's Envoy
  (``realwaypoint``), reconfigured on every ``sync_pods``.
* **Probe pods.** ``start_kubelet`` starts ``realkubelet``: the pod executor runs the auditor's
  probe pods in their own pod namespaces (captured ones handed to ztunnel first), as the pod's
  user; ``sync_pods`` removes the namespace of a pod the API server no longer has.

The record is changed by several processes (the tests' ``sync_pods``, the kubelet daemon): every
change holds ``<state>/node.lock`` (``_locked``).

Every process is recorded (``Proc``) in ``<state>/realnode.json`` before ``up`` goes on, so
``down`` (also after a crash) stops them by pid, deletes the namespaces and the state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testrigs.devtools import controlplane, istio, processes, ztunnel
from testrigs.lab import image as probe_image
from testrigs.lab import mesh, netns, procs, proxy, realwaypoint
from testrigs.lab.envoyconf import Certs
from testrigs.lab.pki import LabCA
from testrigs.lab.procs import Proc

NODE_NAME = "malab-node-1"
DEFAULT_STATE_DIR = Path("/tmp/malab-real")  # noqa: S108 - like the lab's: traversable by every uid
POD_CIDR = "198.18.128.0/17"
SERVICE_CIDR = controlplane.SERVICE_CLUSTER_IP_RANGE
ISTIOD_PORT_IN_NODE = 15012
ZTUNNEL_SA = "ztunnel"
READY_TIMEOUT_S = 60.0
REDIRECTION = "ambient.istio.io/redirection"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
REPO_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_RESTART_PERIOD_S = 10.0
FAULTS = {
    "ztunnel-down": "ztunnel is stopped on the node once it is up (ztunnel-down=NODE names it)",
    "uncaptured-pod": "uncaptured-pod=NS/NAME: labelled ambient, never handed to ztunnel (started before the "
    "node's CNI agent was ready); repeatable",
    "ztunnel-restart": "ztunnel is restarted every 10 s while the node runs (ztunnel-restart=SECONDS)",
    "istiod-stale": "istiod is frozen (SIGSTOP) once pods settled: ztunnel keeps the last configuration it got, "
    "whatever the API server says afterwards",
}


_THREAD_LOCK = threading.RLock()  # the threads of one process; node.lock serializes the processes
_HELD: dict[Path, int] = {}


class RealNodeError(RuntimeError):
    """The node cannot start or act; the message names the step."""


class FaultError(ValueError):
    """A ``--fault`` the real node does not know or whose target is malformed; the message says which."""


def parse_faults(names: Sequence[str]) -> list[str]:
    """Check ``NAME[=TARGET]`` fault specs against ``FAULTS``; returns them. Raises FaultError."""
    for spec in names:
        name, _, target = spec.partition("=")
        if name not in FAULTS:
            raise FaultError(f"unknown fault {name!r} for the real node; known: {', '.join(sorted(FAULTS))}")
        if name == "uncaptured-pod" and (target.count("/") != 1 or "" in target.split("/")):
            raise FaultError(f"fault {spec!r}: uncaptured-pod needs a pod, as uncaptured-pod=NAMESPACE/NAME")
        if name == "istiod-stale" and target:
            raise FaultError(f"fault {spec!r}: istiod-stale takes no target")
        if name == "ztunnel-down" and target not in ("", NODE_NAME):
            raise FaultError(f"fault {spec!r}: the real node is {NODE_NAME}, there is no node {target!r}")
        if name == "ztunnel-restart" and target:
            try:
                period = float(target)
            except ValueError:
                period = 0.0
            if not 1.0 <= period <= 3600.0:
                raise FaultError(f"fault {spec!r}: the restart period is seconds between 1 and 3600")
    return list(names)


def restart_period(faults: Sequence[str]) -> float | None:
    """Seconds between ztunnel restarts under ``ztunnel-restart``, or None without the fault."""
    for spec in faults:
        name, _, target = spec.partition("=")
        if name == "ztunnel-restart":
            return float(target) if target else DEFAULT_RESTART_PERIOD_S
    return None


def withheld_pods(faults: Sequence[str]) -> frozenset[str]:
    """``namespace/name`` of the pods ``uncaptured-pod`` keeps from ztunnel."""
    return frozenset(spec.partition("=")[2] for spec in faults if spec.partition("=")[0] == "uncaptured-pod")


@dataclass
class NodeRecord:
    """What ``down`` needs: the lab id, processes, and the pod namespaces."""

    lab_id: str
    procs: dict[str, Proc] = field(default_factory=dict)
    pods: dict[str, dict[str, str]] = field(default_factory=dict)  # "ns/name" -> netns, ip, veth, uid
    faults: list[str] = field(default_factory=list)
    next_index: int = 1  # the next pod namespace's index (removed pods' indices are not reused)

    def to_json(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "procs": {k: v.to_json() for k, v in self.procs.items()},
            "pods": self.pods,
            "faults": self.faults,
            "next_index": self.next_index,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeRecord:
        return cls(
            str(data["lab_id"]),
            {k: Proc.from_json(v) for k, v in (data.get("procs") or {}).items()},
            dict(data.get("pods") or {}),
            [str(f) for f in data.get("faults") or []],
            int(data.get("next_index") or len(data.get("pods") or {}) + 1),
        )


def ztunnel_env(directory: Path, node: str) -> dict[str, str]:
    """ztunnel's environment on a lab node (what the ztunnel chart's DaemonSet sets, adapted)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RUST_LOG": "info",
        "PROXY_MODE": "shared",
        "INPOD_UDS": str(directory / "ztunnel.sock"),
        "CLUSTER_ID": "Kubernetes",
        "NODE_NAME": node,
        "POD_NAME": f"ztunnel-{node}",
        "POD_NAMESPACE": istio.ISTIO_NAMESPACE,
        "SERVICE_ACCOUNT": ZTUNNEL_SA,
        "TRUST_DOMAIN": istio.TRUST_DOMAIN,
        "XDS_ADDRESS": f"https://127.0.0.1:{ISTIOD_PORT_IN_NODE}",
        "CA_ADDRESS": f"https://127.0.0.1:{ISTIOD_PORT_IN_NODE}",
        # istiod's serving certificate names its Service, not the relay's loopback address.
        "ALT_XDS_HOSTNAME": f"istiod.{istio.ISTIO_NAMESPACE}.svc",
        "ALT_CA_HOSTNAME": f"istiod.{istio.ISTIO_NAMESPACE}.svc",
        "XDS_ROOT_CA": str(directory / "root-cert.pem"),
        "CA_ROOT_CA": str(directory / "root-cert.pem"),
        "AUTH_TOKEN": str(directory / "istio-token"),
        # Lab pods resolve names from hosts files; ztunnel's DNS proxy is not used.
        "ISTIO_META_DNS_CAPTURE": "false",
        "ISTIO_META_ENABLE_HBONE": "true",
    }


class RealNode:
    """A real-ztunnel lab node in ``state_dir`` (default ``/tmp/malab-real``)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.absolute()
        self.record_path = self.state_dir / "realnode.json"
        self.node_dir = self.state_dir / "node"

    @property
    def controlplane_dir(self) -> Path:
        return self.state_dir / "controlplane"

    @property
    def kubeconfig(self) -> Path:
        return self.controlplane_dir / "kubeconfig"

    def load(self) -> NodeRecord | None:
        try:
            return NodeRecord.from_json(json.loads(self.record_path.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    def _save(self, record: NodeRecord) -> None:
        temporary = self.record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record.to_json(), indent=1))
        temporary.replace(self.record_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the node's lock (``<state>/node.lock``, flock) across a load-change-save of the record.

        Re-entrant within a process (the kubelet daemon's launch threads share one holder).
        """
        with _THREAD_LOCK:
            if _HELD.get(self.state_dir, 0):
                _HELD[self.state_dir] += 1
                try:
                    yield
                finally:
                    _HELD[self.state_dir] -= 1
                return
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with (self.state_dir / "node.lock").open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                _HELD[self.state_dir] = 1
                try:
                    yield
                finally:
                    _HELD[self.state_dir] = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def bridge(self, record: NodeRecord) -> str:
        return f"{netns.PREFIX}{record.lab_id}-br"

    # --- up ----------------------------------------------------------------------------------

    def up(self, faults: Sequence[str] = ()) -> NodeRecord:
        """Control plane with istiod, the node namespace, relay, CNI agent and ztunnel; waits until ready.

        ``faults``: ``FAULTS`` specs (checked first, FaultError); ``uncaptured-pod`` and
        ``ztunnel-restart`` act from the start, ``ztunnel-down`` in ``apply_faults`` once pods settled.
        """
        faults = parse_faults(faults)
        self.down()
        binaries = ztunnel.binaries()
        if not ztunnel.is_built():
            raise RealNodeError(
                f"ztunnel is not built in {binaries.directory}: run 'scripts/controlplane build --ztunnel'"
            )
        self.node_dir.mkdir(parents=True, mode=0o755)
        record = NodeRecord(lab_id=secrets.token_hex(3), faults=list(faults))
        self._save(record)
        stand_in = [f"--node-name={NODE_NAME}", f"--pod-cidr={POD_CIDR}"]
        controlplane.up(self.controlplane_dir, istio=True, stand_in_args=stand_in, cacerts=self._plug_ca())
        netns.create_bridge_namespace(self.bridge(record))
        self._ztunnel_identity()
        ports = controlplane.istiod_ports(self.controlplane_dir)
        python = [sys.executable, "-m"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        logs = self.node_dir
        relay_argv = [
            *python,
            "testrigs.lab.relay",
            f"--netns={self.bridge(record)}",
            f"--listen={ISTIOD_PORT_IN_NODE}",
            f"--target={ports['secure_grpc']}",
        ]
        self._spawn(record, "relay", relay_argv, logs / "relay.log", env)
        agent_argv = [
            *python,
            "testrigs.lab.zds",
            f"--socket={self.node_dir / 'ztunnel.sock'}",
            f"--pods={self.node_dir / 'pods.json'}",
            f"--status={self.node_dir / 'agent.json'}",
        ]
        self._spawn(record, "cni-agent", agent_argv, logs / "cni-agent.log", env)
        self.start_ztunnel(record)
        return record

    def start_ztunnel(self, record: NodeRecord | None = None) -> Proc:
        """(Re)start ztunnel in the node namespace and wait for its readiness endpoint."""
        with self._locked():
            record, proc = self._start_ztunnel(record)
        self._wait_ready(record, proc)
        return proc

    def _start_ztunnel(self, record: NodeRecord | None) -> tuple[NodeRecord, Proc]:
        record = record or self._require()
        old = record.procs.get("ztunnel")
        if old is not None:
            procs.stop(old)
        argv = [str(ztunnel.binaries().ztunnel), "proxy", "ztunnel"]
        env = ztunnel_env(self.node_dir, NODE_NAME)
        period = restart_period(record.faults)
        if period is not None:
            # The fault's supervisor is the recorded process; ztunnel is its child (ztrestart).
            status = self.node_dir / "ztrestart.json"
            argv = [
                sys.executable,
                "-m",
                "testrigs.lab.ztrestart",
                f"--period={period}",
                f"--status={status}",
                "--",
                *argv,
            ]
            env["PYTHONPATH"] = str(REPO_ROOT)
        proc = procs.spawn_in_netns("ztunnel", self.bridge(record), argv, self.node_dir / "ztunnel.log", env)
        record.procs["ztunnel"] = proc
        self._save(record)
        return record, proc

    def stop_ztunnel(self) -> None:
        """Stop ztunnel (the node's data plane goes down; captured pods lose their listeners)."""
        with self._locked():
            record = self._require()
            proc = record.procs.pop("ztunnel", None)
            if proc is not None:
                procs.stop(proc)
            self._save(record)

    def apply_faults(self) -> None:
        """The faults that act once the node is up and its pods settled: ``ztunnel-down``."""
        record = self._require()
        missing = sorted(withheld_pods(record.faults) - set(record.pods))
        if missing:
            raise RealNodeError(f"fault uncaptured-pod: no pod {', '.join(missing)} on the node (check the manifests)")
        if any(spec.partition("=")[0] == "ztunnel-down" for spec in record.faults):
            self.stop_ztunnel()
        self._freeze_istiod("istiod-stale" in record.faults)

    def set_faults(self, faults: Sequence[str]) -> None:
        """Switch the node's faults while it runs (``FAULTS`` specs, checked first: FaultError).

        ``uncaptured-pod`` takes effect at the next ``sync_pods`` (the agent removes the pod's
        redirection and sends ztunnel its ``del``); ``ztunnel-down`` stops ztunnel now, and
        leaving it restarts ztunnel. ``ztunnel-restart`` acts only from ``up``.
        """
        faults = parse_faults(faults)
        down = any(spec.partition("=")[0] == "ztunnel-down" for spec in faults)
        with self._locked():
            record = self._require()
            record.faults = list(faults)
            self._save(record)
        if down:
            self.stop_ztunnel()
        elif "ztunnel" not in record.procs:
            self.start_ztunnel()
        self._freeze_istiod("istiod-stale" in faults)
        self.sync_pods()
        # Until the agent took every withheld pod back from ztunnel (its in-pod rules removed), then
        # once more, so that kube-proxy's rules follow the agent's emptied nat table.
        withheld = {record.pods[key]["uid"] for key in withheld_pods(faults) if key in record.pods}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while withheld & set(self.agent_status().get("acked") or []):
            if time.monotonic() > deadline:
                raise RealNodeError(f"the agent still hands {sorted(withheld)} to ztunnel: {self.agent_status()}")
            time.sleep(0.2)
        self.sync_pods()

    def _freeze_istiod(self, frozen: bool) -> None:
        """SIGSTOP (``frozen``) or SIGCONT istiod: its streams to ztunnel stay open and say nothing new."""
        process = controlplane.recorded_process("istiod", self.controlplane_dir)
        if process is None or not process.running():
            if frozen:
                raise RealNodeError("fault istiod-stale: no istiod runs on the node's control plane")
            return
        os.kill(process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def _spawn(self, record: NodeRecord, name: str, argv: list[str], log: Path, env: dict[str, str]) -> Proc:
        proc = processes.spawn(name, argv, log, env=env, log_mode=0o644)
        record.procs[name] = proc
        self._save(record)
        return proc

    def _require(self) -> NodeRecord:
        record = self.load()
        if record is None:
            raise RealNodeError(f"no real-ztunnel node in {self.state_dir}")
        return record

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        kubectl = controlplane.binary_dir(controlplane.read_pins()) / "kubectl"
        argv = [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise RealNodeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _ztunnel_identity(self) -> None:
        """The ztunnel ServiceAccount and Pod on this node, its bound token, and istiod's root cert."""
        namespace = istio.ISTIO_NAMESPACE
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"ztunnel-{NODE_NAME}", "namespace": namespace, "labels": {"app": "ztunnel"}},
            "spec": {
                "nodeName": NODE_NAME,
                "serviceAccountName": ZTUNNEL_SA,
                "hostNetwork": True,
                "containers": [{"name": "istio-proxy", "image": "istio/ztunnel"}],
            },
        }
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": ZTUNNEL_SA, "namespace": namespace},
        }
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([account, pod]))
        token = self.kubectl(
            "create",
            "token",
            ZTUNNEL_SA,
            f"--namespace={namespace}",
            "--audience=istio-ca",
            "--bound-object-kind=Pod",
            f"--bound-object-name=ztunnel-{NODE_NAME}",
            "--duration=24h",
        ).strip()
        # No trailing newline: ztunnel sends the file's bytes as the bearer header value.
        (self.node_dir / "istio-token").write_text(token)
        (self.node_dir / "root-cert.pem").write_text(self._root_cert())

    def _root_cert(self) -> str:
        # istiod publishes its root to every namespace as istio-ca-root-cert (its namespace controller).
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(RealNodeError, ValueError):
                text = self.kubectl(
                    "get",
                    "configmap",
                    "istio-ca-root-cert",
                    f"--namespace={istio.ISTIO_NAMESPACE}",
                    "--output=jsonpath={.data.root-cert\\.pem}",
                )
                if "BEGIN CERTIFICATE" in text:
                    return text
            time.sleep(0.5)
        raise RealNodeError("istiod published no istio-ca-root-cert within 60 s")

    def _wait_ready(self, record: NodeRecord, proc: Proc) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not proc.running():
                raise RealNodeError(f"ztunnel exited during start-up{self._log_tail()}")
            if self.ztunnel_ready(record):
                return
            time.sleep(0.3)
        raise RealNodeError(f"ztunnel not ready after {READY_TIMEOUT_S:.0f} s{self._log_tail()}")

    def _log_tail(self, lines: int = 40) -> str:
        try:
            tail = (self.node_dir / "ztunnel.log").read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- ztunnel.log ---\n" + "\n".join(tail)

    def ztunnel_ready(self, record: NodeRecord | None = None) -> bool:
        """ztunnel's readiness (:15021/healthz/ready in the node namespace) answers 200."""
        record = record or self._require()
        return self._node_get(record, 15021, "/healthz/ready") == 200

    def _node_get(self, record: NodeRecord, port: int, path: str) -> int:
        argv = [procs.IP, "netns", "exec", self.bridge(record), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
        result = subprocess.run(
            [*argv, "--max-time", "2", f"http://127.0.0.1:{port}{path}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        return int(result.stdout) if result.stdout.isdigit() else 0

    def config_dump(self) -> dict[str, Any]:
        """ztunnel's admin ``/config_dump`` (workloads, services, policies, certificates it holds)."""
        record = self._require()
        argv = [procs.IP, "netns", "exec", self.bridge(record), "curl", "-s", "--max-time", "5"]
        result = subprocess.run(
            [*argv, "http://127.0.0.1:15000/config_dump"], capture_output=True, text=True, check=False, timeout=10
        )
        dump: dict[str, Any] = json.loads(result.stdout or "{}")
        return dump

    # --- pods --------------------------------------------------------------------------------

    def sync_pods(self, *, withhold: frozenset[str] = frozenset()) -> dict[str, dict[str, str]]:
        """Give every addressed API pod a lab namespace and app; hand the redirected ones to ztunnel.

        ``withhold``: ``namespace/name`` of pods the CNI agent must never hand over (the fault of a
        pod started before the node's agent was ready: labelled ambient, not captured).
        The namespace (and app) of a pod the API server no longer has, or has under another uid, is
        removed; the agent then sends ztunnel its ``del``. Holds the node's lock.
        """
        with self._locked():
            return self._sync_pods(withhold)

    def _sync_pods(self, withhold: frozenset[str]) -> dict[str, dict[str, str]]:
        record = self._require()
        withhold = withhold | withheld_pods(record.faults)
        pods = json.loads(self.kubectl("get", "pods", "--all-namespaces", "--output=json"))["items"]
        services = json.loads(self.kubectl("get", "services", "--all-namespaces", "--output=json"))["items"]
        vips = [
            (s["metadata"]["namespace"], s["metadata"]["name"], s["spec"]["clusterIP"])
            for s in services
            if s["spec"].get("clusterIP") not in (None, "", "None")
        ]
        wanted: list[dict[str, str]] = []
        kube_proxied: list[str] = []  # namespaces of pods ztunnel does not hold: kube-proxy's DNAT applies
        waypoint_pods: list[dict[str, Any]] = []
        redirected: set[str] = set()
        network = ipaddress.ip_network(POD_CIDR)
        self._remove_gone_pods(record, pods, network)
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            address = status.get("podIP", "")
            key = f"{meta['namespace']}/{meta['name']}"
            if pod["spec"].get("hostNetwork"):
                continue  # ztunnel's own pod: the node's namespace is its network
            if not address or ipaddress.ip_address(address) not in network or meta.get("deletionTimestamp"):
                continue
            if GATEWAY_NAME in (meta.get("labels") or {}):
                # A waypoint istiod rendered: the lab's Envoy (realwaypoint) runs in its namespace;
                # istio-cni never redirects a waypoint pod (its template says dataplane-mode none).
                if key not in record.pods:
                    self._create_pod(record, key, address, meta["uid"], {})
                waypoint_pods.append(pod)
                continue
            if key not in record.pods:
                self._create_pod(record, key, address, meta["uid"], pod["spec"])
            # CoreDNS's answers as a hosts file: Service names to their ClusterIPs.
            hosts = netns.hosts_file(meta["name"], address, meta["namespace"], vips)
            netns.write_dns(record.pods[key]["netns"], hosts, netns.resolv_conf(meta["namespace"]))
            annotated = (meta.get("annotations") or {}).get(REDIRECTION) == "enabled"
            if annotated:
                redirected.add(key)
            if not annotated or key in withhold:
                kube_proxied.append(record.pods[key]["netns"])
            if annotated and key not in withhold:
                wanted.append(
                    {
                        "uid": meta["uid"],
                        "netns": record.pods[key]["netns"],
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "service_account": pod["spec"].get("serviceAccountName") or "default",
                    }
                )
        from testrigs.lab import zds  # noqa: PLC0415 - zds pulls in inpod only when pods are synced

        zds.write_json(self.node_dir / "pods.json", wanted)
        if kube_proxied:
            dnat = netns.kube_proxy_dnat(self._service_backends(services), ipaddress.ip_network(SERVICE_CIDR))
            chains = ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            rules = "*nat\n" + chains + "".join(f"{line}\n" for line in dnat) + "COMMIT\n"
            for name in kube_proxied:
                netns.apply_nat(name, rules)
        # The waypoint tunnels to what istiod calls HBONE-capable, the pods the API says istio-cni
        # redirected, whether or not ztunnel holds them (the uncaptured-pod fault: refused there).
        self._sync_waypoints(record, waypoint_pods, pods, services, frozenset(redirected))
        return record.pods

    def _service_backends(self, services: list[dict[str, Any]]) -> list[tuple[str, int, str, int]]:
        """kube-proxy's view: (VIP, port, ready endpoint address, its port) from the EndpointSlices.

        The real node has no kube-proxy on the node; like the emulated lab, each pod that ztunnel
        does not hold gets kube-proxy's DNAT in its own nat table (``netns.kube_proxy_dnat``), so a client
        outside the mesh reaches a Service by name. A pod ztunnel holds never needs it: istio-cni's
        in-pod rules send all its TCP to ztunnel before any DNAT would (they replace the table).
        """
        slices = json.loads(self.kubectl("get", "endpointslices", "--all-namespaces", "--output=json"))["items"]
        entries: list[tuple[str, int, str, int]] = []
        for service in services:
            meta, spec = service["metadata"], service["spec"]
            if spec.get("clusterIP") in (None, "", "None"):
                continue
            for port in spec.get("ports") or []:
                for item in slices:
                    labels = item["metadata"].get("labels") or {}
                    if item["metadata"]["namespace"] != meta["namespace"]:
                        continue
                    if labels.get("kubernetes.io/service-name") != meta["name"]:
                        continue
                    target = next(
                        (p["port"] for p in item.get("ports") or [] if p.get("name", "") == port.get("name", "")), None
                    )
                    for endpoint in item.get("endpoints") or []:
                        if target is None or (endpoint.get("conditions") or {}).get("ready") is False:
                            continue
                        for address in endpoint.get("addresses") or []:
                            if ipaddress.ip_address(address) in ipaddress.ip_network(POD_CIDR):
                                entries.append((spec["clusterIP"], int(port["port"]), address, int(target)))
        return entries

    def _sync_waypoints(
        self,
        record: NodeRecord,
        waypoint_pods: list[dict[str, Any]],
        pods: list[dict[str, Any]],
        services: list[dict[str, Any]],
        captured: frozenset[str],
    ) -> None:
        """Start or reconfigure the lab's Envoy for every waypoint pod istiod rendered; wait until served."""
        if not waypoint_pods:
            return
        kinds = "namespaces,gateways.gateway.networking.k8s.io,authorizationpolicies.security.istio.io"
        others = json.loads(self.kubectl("get", kinds, "--all-namespaces", "--output=json"))["items"]
        model = mesh.Mesh([*others, *services])
        vips = {
            f"{s['metadata']['namespace']}/{s['metadata']['name']}": s["spec"]["clusterIP"]
            for s in services
            if s["spec"].get("clusterIP") not in (None, "", "None")
        }
        envoy = proxy.install_envoy(self.state_dir / "bin")
        for pod in waypoint_pods:
            meta = pod["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            gateway = f"{meta['namespace']}/{meta['labels'][GATEWAY_NAME]}"
            waypoint = next((w for w in model.waypoints if w.key == gateway), None)
            if waypoint is None:
                continue  # not a waypoint the lab can run (class, listener): istiod would not use it either
            proxy_dir = proxy.ProxyDir(self.node_dir / "waypoints" / key.replace("/", "__"))
            certs = self._waypoint_certs(
                proxy_dir, meta["namespace"], pod["spec"].get("serviceAccountName") or "default"
            )
            resources = realwaypoint.resources(model, waypoint, vips, pods, captured=captured, certs=certs)
            name = f"waypoint:{key}"
            running = record.procs.get(name)
            if running is None or not running.running():
                running, version = proxy.start(
                    name,
                    record.pods[key]["netns"],
                    envoy,
                    proxy_dir,
                    resources,
                    extensions=[realwaypoint.INTERNAL_LISTENER_EXTENSION],
                )
                record.procs[name] = running
                self._save(record)
            else:
                version = proxy.publish(proxy_dir, resources)
            proxy.wait_version(running, proxy_dir, version)

    def _waypoint_certs(self, proxy_dir: proxy.ProxyDir, namespace: str, service_account: str) -> Certs:
        """The waypoint's certificate for its ServiceAccount's SPIFFE id, from the CA plugged into istiod."""
        cert, key = proxy_dir.path / "cert.pem", proxy_dir.path / "key.pem"
        ca = LabCA(self.state_dir / "ca")
        if not cert.exists():
            proxy_dir.create()
            ca.issue(mesh.spiffe_id(namespace, service_account), proxy_dir.path, netns.PROXY_UID)
        return Certs(str(cert), str(key), str(ca.cert_path))

    def _plug_ca(self) -> Path:
        """The lab CA as istiod's ``cacerts`` (a self-signed root: ca-cert = root-cert = cert-chain)."""
        ca = LabCA(self.state_dir / "ca")
        ca.create()
        directory = self.state_dir / "cacerts"
        directory.mkdir(mode=0o700)
        for name in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
            shutil.copyfile(ca.cert_path, directory / name)
        shutil.copyfile(ca.key_path, directory / "ca-key.pem")
        return directory

    def _remove_gone_pods(
        self, record: NodeRecord, pods: list[dict[str, Any]], network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ) -> None:
        """Tear down the node's side of every pod the API no longer has (or has anew, with another uid).

        A kubelet does this when a pod is deleted. Without it a deleted pod's namespace kept its
        address on the bridge, the stand-in gave the address to a new pod, and two namespaces
        answered for one IP: the differential run saw a captured sender refused and a plaintext
        one let through, each reaching the other's stale namespace.
        """
        live = {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["metadata"]["uid"]
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("podIP")
            and ipaddress.ip_address(p["status"]["podIP"]) in network
        }
        gone = [key for key, pod in record.pods.items() if live.get(key) != pod["uid"]]
        for key in gone:
            for name in [n for n in record.procs if n.endswith(f":{key}")]:  # app:<key>, waypoint:<key>
                procs.stop(record.procs.pop(name))
            pod = record.pods.pop(key)
            for pid in procs.netns_pids(pod["netns"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            # The bridge's end first: ztunnel may still hold the pod's namespace open (its fd from
            # ZDS, until the agent's del), and the address must leave the bridge now.
            subprocess.run(
                [procs.IP, "-n", self.bridge(record), "link", "delete", pod["veth"]],
                capture_output=True,
                check=False,
                timeout=10,
            )
            netns.delete_namespace(pod["netns"])
        if gone:
            self._save(record)

    def _create_pod(self, record: NodeRecord, key: str, address: str, uid: str, spec: dict[str, Any]) -> None:
        index = record.next_index  # only grows: a removed pod's names and log are never reused
        record.next_index += 1
        name = f"{netns.PREFIX}{record.lab_id}-p{index}"
        veth = f"v{record.lab_id}{index}"[:15]
        record.pods[key] = {"netns": name, "ip": address, "veth": veth, "uid": uid}
        self._save(record)
        netns.create_pod_namespace(name, self.bridge(record), veth, address)
        # Service VIPs are on no link: ztunnel (captured pods) takes them from the socket's
        # original destination, and the route only lets connect() reach the OUTPUT hook.
        netns.ip_batch(name, f"route add {SERVICE_CIDR} dev eth0\n")
        self._start_app(record, key, spec)

    def _start_app(self, record: NodeRecord, key: str, spec: dict[str, Any]) -> None:
        """The lab app on the pod's container ports, in the pod's namespace (none without ports)."""
        entry = record.pods[key]
        ports = [p["containerPort"] for c in spec.get("containers") or [] for p in c.get("ports") or []]
        if ports:
            index = entry["netns"].rsplit("-p", 1)[1]
            argv = [sys.executable, "-m", "testrigs.lab.app", f"--pod={key}", *(f"--port={p}" for p in ports)]
            proc = procs.spawn_in_netns(f"app:{key}", entry["netns"], argv, self.node_dir / f"app-{index}.log")
            record.procs[f"app:{key}"] = proc
            self._save(record)

    def set_app_running(self, key: str, running: bool) -> None:
        """Stop or restart a pod's app (``namespace/name``): the pod, its address and ztunnel's hold stay.

        The real node's form of the lab's ``service-down``: the Service keeps its endpoint, and
        whatever reaches it (ztunnel, the waypoint) finds nothing listening.
        """
        with self._locked():
            record = self._require()
            if key not in record.pods:
                raise RealNodeError(f"no pod {key} on the node")
            proc = record.procs.pop(f"app:{key}", None)
            if proc is not None:
                procs.stop(proc)
            self._save(record)
            if running:
                namespace, name = key.split("/", 1)
                pod = json.loads(self.kubectl("get", "pod", name, f"--namespace={namespace}", "--output=json"))
                self._start_app(record, key, pod["spec"])

    def assign_address(self, pod: dict[str, Any]) -> str:
        """Give a pod the kubelet runs (a probe pod) an address of ``POD_CIDR``, written to its status.

        The workload stand-in addresses the other pods from the bottom of the range; these come
        from the top, so the two never pick the same address. Returns the address.
        """
        meta = pod["metadata"]
        with self._locked():
            record = self._require()
            listed = json.loads(self.kubectl("get", "pods", "--all-namespaces", "--output=json"))["items"]
            used = {(p.get("status") or {}).get("podIP") for p in listed} | {e["ip"] for e in record.pods.values()}
            network = ipaddress.ip_network(POD_CIDR)
            address = next(
                str(ip) for ip in (network.broadcast_address - n for n in range(1, network.num_addresses - 1))
                if str(ip) not in used
            )  # fmt: skip
            status = {"status": {"podIP": address, "podIPs": [{"ip": address}], "hostIP": "127.0.0.1"}}
            self.kubectl(
                "patch", "pod", meta["name"], f"--namespace={meta['namespace']}", "--subresource=status",
                "--type=merge", f"--patch={json.dumps(status)}",
            )  # fmt: skip
        return address

    @property
    def auditor_kubeconfig(self) -> Path:
        """A kubeconfig for the auditor's ServiceAccount (``deploy_auditor``): RBAC and probe-guard apply."""
        return self.state_dir / "auditor-kubeconfig"

    def deploy_auditor(self) -> Path:
        """Apply what the auditor needs to run probe pods (the lab's ``AUDITOR_DEPLOY``) and write
        ``auditor_kubeconfig`` with a 24 h token of its ServiceAccount; returns the kubeconfig."""
        from testrigs.lab.lab import AUDITOR_DEPLOY, write_auditor_kubeconfig  # noqa: PLC0415 - the emulated lab's module is heavier; only this method needs it

        self.kubectl("apply", "-f", "-", stdin="\n---\n".join(path.read_text() for path in AUDITOR_DEPLOY))
        write_auditor_kubeconfig(self.kubectl, self.kubeconfig, self.auditor_kubeconfig)
        return self.auditor_kubeconfig

    def start_kubelet(self) -> Proc:
        """Build the probe image and start ``realkubelet`` (runs the auditor's probe pods); recorded as ``kubelet``."""
        from testrigs.lab.lab import PROBE_UID  # noqa: PLC0415 - the emulated lab's module is heavier

        image_dir = self.state_dir / "image"
        image = probe_image.build(image_dir)
        probe_image.verify(image, PROBE_UID)
        image.save(image_dir / "image.json")
        argv = [sys.executable, "-m", "testrigs.lab.realkubelet", f"--state-dir={self.state_dir}"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with self._locked():
            record = self._require()
            return self._spawn(record, "kubelet", argv, self.node_dir / "kubelet.log", env)

    def settle(self, timeout: float = READY_TIMEOUT_S) -> dict[str, dict[str, str]]:
        """Sync until every workload has its pod, every waypoint its Envoy, and ztunnel acked every pod handed to it.

        Returns the pods. Pods that appear later are picked up by the next ``sync_pods`` (no daemon
        follows them). Raises RealNodeError naming what is still missing after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        missing: list[str] = []
        while time.monotonic() < deadline:
            pods = self.sync_pods()
            wanted = {item["uid"] for item in json.loads((self.node_dir / "pods.json").read_text())}
            missing = self._missing(set(pods))
            if not missing and wanted <= set(self.agent_status().get("acked") or []):
                return pods
            time.sleep(1.0)
        raise RealNodeError(
            f"pods did not settle within {timeout:.0f} s: missing {missing or 'none'}, agent {self.agent_status()}"
        )

    def _missing(self, pods: set[str]) -> list[str]:
        """Workloads without a pod on the node yet: every API Pod (bare ones too: a manifest's
        ``curl-pod`` has no owner), Deployments and StatefulSets (the stand-in names their pod
        ``<name>-<n>``), and waypoint Gateways (istiod renders their Deployment) without a running
        Envoy."""
        kinds = "pods,deployments,statefulsets,gateways.gateway.networking.k8s.io"
        items = json.loads(self.kubectl("get", kinds, "--all-namespaces", "--output=json"))["items"]
        record = self._require()
        missing = []
        for item in items:
            namespace, name = item["metadata"]["namespace"], item["metadata"]["name"]
            spec = item.get("spec") or {}
            if item["kind"] == "Pod":
                # A pod waiting for its address is missing too: settling without it let a fault
                # test find no curl-pod on the node (CI, session 5). ztunnel's own pod is on the
                # host network, and a deleted pod is not awaited.
                awaited = not spec.get("hostNetwork") and not item["metadata"].get("deletionTimestamp")
                if awaited and f"{namespace}/{name}" not in pods:
                    missing.append(f"Pod {namespace}/{name}")
            elif item["kind"] == "Gateway":
                if not mesh.runnable_waypoint(item):
                    continue  # another class, or a waypoint without 15008: nothing for the lab to run
                running = [p for key, p in record.procs.items() if key.startswith(f"waypoint:{namespace}/{name}-")]
                if not any(p.running() for p in running):
                    missing.append(f"waypoint {namespace}/{name}")
            elif spec.get("replicas", 1) != 0 and not any(p.startswith(f"{namespace}/{name}-") for p in pods):
                missing.append(f"{item['kind']} {namespace}/{name}")
        return missing

    def agent_status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads((self.node_dir / "agent.json").read_text())
        except (OSError, ValueError):
            return {}
        return status

    def wait_handed(self, keys: set[str], timeout: float = 60.0) -> None:
        """Wait until the agent has ztunnel's ack for every pod in ``keys`` (``namespace/name``).

        Pods are synced on every pass: the istio-cni stand-in writes a new pod's address and its
        redirection annotation in two API writes, so a sync between them hands the pod to nobody
        (a CI run waited 90 s on exactly that). The uid compared is the API's, from the agent's
        wanted list, never one remembered from an earlier pod of the same name.
        """
        deadline = time.monotonic() + timeout
        missing = sorted(keys)
        while time.monotonic() < deadline:
            self.sync_pods()
            wanted = {
                f"{item['namespace']}/{item['name']}": item["uid"]
                for item in json.loads((self.node_dir / "pods.json").read_text())
            }
            acked = set(self.agent_status().get("acked") or [])
            missing = sorted(key for key in keys if wanted.get(key) not in acked)
            if not missing:
                return
            time.sleep(0.5)
        raise RealNodeError(f"ztunnel did not ack {missing} within {timeout:.0f} s: {self.agent_status()}")

    def exec(self, key: str, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside a pod's namespace (as root: never captured differently, no uid 1337)."""
        record = self._require()
        name = record.pods[key]["netns"]
        return subprocess.run(
            [procs.IP, "netns", "exec", name, *argv], capture_output=True, text=True, check=False, timeout=timeout
        )

    # --- status and down ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        record = self.load()
        if record is None:
            return {"up": False}
        return {
            "up": True,
            "node": NODE_NAME,
            "processes": {name: {"pid": p.pid, "running": p.running()} for name, p in record.procs.items()},
            "faults": record.faults,
            "ztunnel": [self._ztunnel_status(p, record) for name, p in record.procs.items() if name == "ztunnel"],
            "waypoints": [
                {"pod": name.removeprefix("waypoint:"), "pid": p.pid, "running": p.running()}
                for name, p in record.procs.items()
                if name.startswith("waypoint:")
            ],
            "agent": self.agent_status(),
            "pods": record.pods,
        }

    def _ztunnel_status(self, proc: Proc, record: NodeRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {"node": NODE_NAME, "pid": proc.pid, "running": proc.running()}
        if restart_period(record.faults) is not None:
            # The recorded process is the fault's supervisor: report its current ztunnel child.
            try:
                child = json.loads((self.node_dir / "ztrestart.json").read_text())
            except (OSError, ValueError):
                child = {}
            entry.update(supervisor_pid=proc.pid, pid=int(child.get("pid") or 0), restarts=child.get("restarts"))
            entry["running"] = proc.running() and entry["pid"] > 0 and Path(f"/proc/{entry['pid']}").exists()
        entry["rss_bytes"] = istio.rss_bytes(entry["pid"])
        return entry

    def down(self) -> bool:
        """Stop every recorded process, delete the lab namespaces and the state directory; repeatable."""
        record = self.load()
        if record is not None:
            if "istiod-stale" in record.faults:
                self._freeze_istiod(False)  # a stopped process would not act on the SIGTERM that stops it
            procs.stop_all(list(record.procs.values()))
            prefix = f"{netns.PREFIX}{record.lab_id}-"
            for name in netns.list_lab_namespaces(prefix):
                for pid in procs.netns_pids(name):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                netns.delete_namespace(name)
        if self.controlplane_dir.exists():
            controlplane.down(self.controlplane_dir)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return record is not None
