"""The lab: a real data plane with ambient semantics, driven by a real API server.

Role: the composition root of ``testrigs.lab``. ``Lab.up`` starts the control plane with the real
istiod (``testrigs.devtools.controlplane``, ``istio=True``: istiod writes the status of Istio's
objects and renders waypoints' Deployments), applies the manifests (and, ``with_auditor``, the
auditor's ``deploy/`` RBAC and probe-guard plus a kubeconfig for its ServiceAccount), builds the
bridge namespace, the CA and the probe image (``image``), then ``reconcile``s and starts the
translator and kubelet daemons (``translator``, ``kubelet``). ``reconcile`` is level-based and
idempotent: from one snapshot of the API server, read under the lab's lock so concurrent reconcilers
never apply an older snapshot after a newer one, it creates or removes lab pods (``netns``), keeps
each pod's app and Envoy running (``procs``, ``proxy``), publishes fresh Envoy config
(``envoyconf``), rewrites each pod's nat table and DNS files, writes istio-cni's redirection
annotation (``writeback``) and the controller-manager's and kubelets' objects (``controllers``).
``down`` stops every recorded process by pid, deletes every ``malab-<id>-*`` namespace and the state
directory, and is safe to repeat.

Everything the lab created is recorded in ``<state dir>/lab.json`` before it is created, so a
``down`` from another process (or after a crash half-way through ``up``) finds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testrigs.devtools import controlplane
from testrigs.lab import controllers, envoyconf, manifests, netns, procs, proxy, writeback
from testrigs.lab import image as probe_image
from testrigs.lab import nodes as lab_nodes
from testrigs.lab.envoyconf import Certs, Faults, World
from testrigs.lab.mesh import BYPASS_INBOUND, Mesh, Obj, Workload
from testrigs.lab.pki import LabCA
from testrigs.lab.procs import Proc

FAULTS = {
    "strict-not-enforced": "plaintext is accepted although PeerAuthentication says STRICT",
    "waypoint-bypassed": "ztunnels send Service traffic straight to the pods, never to the waypoint",
    "header-not-enforced": "waypoints ignore request.headers conditions",
    "l4-allow-all": "ztunnels enforce no AuthorizationPolicy",
    "service-down": "the app of every pod (or, with service-down=NS/NAME, of one Service) is stopped",
    "uncaptured-endpoint": "one replica of each Deployment with two or more (or, with uncaptured-endpoint=NS/NAME, "
    "of that Deployment) is labelled ambient but not captured: no ztunnel sees its traffic",
}
TARGETED_FAULTS = ("service-down", "uncaptured-endpoint")  # these take =NS/NAME
DEFAULT_STATE_DIR = Path("/tmp/malab")  # noqa: S108 - must be traversable by the proxy uid
APP_READY_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]
# What the auditor needs to run probe pods (docs/probes.md); the opt-in control Roles are not here.
AUDITOR_DEPLOY = tuple(
    REPO_ROOT / "deploy" / name for name in ("namespaces.yaml", "serviceaccounts.yaml", "rbac.yaml", "probe-guard.yaml")
)
AUDITOR_SERVICE_ACCOUNT = ("mesh-auditor", "mesh-auditor")  # namespace, name
AUDITOR_TOKEN_DURATION = "24h"  # noqa: S105 - a lifetime, not a secret
PROBE_UID = 65532  # probe pods' runAsUser (auditor/adapters/probepods/podspec.py)
ISTIOD_STATUS_TIMEOUT_S = 60.0


class LabError(RuntimeError):
    """The lab cannot start or act; the message says what is missing or what failed."""


@dataclass
class PodRecord:
    """One lab pod as created: namespace name, address, veth, index, and the lab node it runs on."""

    netns: str
    ip: str
    veth: str
    index: int
    node: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "ip": self.ip, "veth": self.veth, "index": self.index, "node": self.node}


@dataclass
class Record:
    """Everything ``down`` needs, persisted as JSON after every change."""

    lab_id: str
    faults: list[str] = field(default_factory=list)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    vips: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)  # proxy name -> xDS version
    applied: dict[str, str] = field(default_factory=dict)  # pod key -> hash of nat + dns
    kubeconfig: str = ""
    last_index: int = 0  # pod addresses are never reused, see _ensure_pod
    nodes: list[str] = field(default_factory=lambda: list(lab_nodes.names(1)))

    def to_json(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "faults": self.faults,
            "pods": {k: v.to_json() for k, v in self.pods.items()},
            "vips": self.vips,
            "procs": {k: v.to_json() for k, v in self.procs.items()},
            "published": self.published,
            "applied": self.applied,
            "kubeconfig": self.kubeconfig,
            "last_index": self.last_index,
            "nodes": self.nodes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            lab_id=str(data["lab_id"]),
            faults=list(data.get("faults") or []),
            pods={k: PodRecord(**v) for k, v in (data.get("pods") or {}).items()},
            vips=dict(data.get("vips") or {}),
            procs={k: Proc.from_json(v) for k, v in (data.get("procs") or {}).items()},
            published=dict(data.get("published") or {}),
            applied=dict(data.get("applied") or {}),
            kubeconfig=str(data.get("kubeconfig") or ""),
            last_index=int(data.get("last_index") or 0),
            nodes=list(data.get("nodes") or lab_nodes.names(1)),
        )


def parse_faults(names: Sequence[str]) -> list[str]:
    for fault in names:
        name, _, target = fault.partition("=")
        if name not in FAULTS:
            raise LabError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
        if target and name not in TARGETED_FAULTS:
            raise LabError(f"fault {name} takes no target")
    return list(names)


def uncaptured_targets(names: Sequence[str]) -> tuple[str, ...] | None:
    """The ``uncaptured-endpoint`` fault as ``Mesh`` takes it: None (off), () (every Deployment
    with two or more replicas) or the named Deployments (``NS/NAME``, or ``NAME`` in default)."""
    targets = [fault.partition("=")[2] for fault in names if fault.partition("=")[0] == "uncaptured-endpoint"]
    if not targets:
        return None
    if not all(targets):
        return ()
    return tuple(target if "/" in target else f"default/{target}" for target in targets)


def _faults(names: Sequence[str]) -> Faults:
    plain = {name.partition("=")[0] for name in names}
    return Faults(
        strict_not_enforced="strict-not-enforced" in plain,
        waypoint_bypassed="waypoint-bypassed" in plain,
        header_not_enforced="header-not-enforced" in plain,
        l4_allow_all="l4-allow-all" in plain,
    )


def check_host() -> None:
    """Root, Linux, and the tools the lab shells out to; a missing one is an error, never a skip."""
    if sys.platform != "linux" or os.geteuid() != 0:
        raise LabError("the lab needs Linux and root (it creates network namespaces)")
    for tool in (procs.IP, proxy.SETPRIV):
        if not Path(tool).exists():
            raise LabError(f"{tool} is missing (Debian: apt-get install iproute2 util-linux)")
    if not Path(netns.IPTABLES_RESTORE).exists():
        raise LabError(f"{netns.IPTABLES_RESTORE} is missing (Debian: apt-get install iptables)")
    proxy.envoy_source()


class Lab:
    """One lab, identified by its state directory."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.state_dir = state_dir.absolute()
        self.record_path = self.state_dir / "lab.json"

    # --- the record ----------------------------------------------------------------------------

    def load(self) -> Record | None:
        try:
            return Record.from_json(json.loads(self.record_path.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    def _save(self, record: Record) -> None:
        temporary = self.record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record.to_json(), indent=1))
        temporary.replace(self.record_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.state_dir / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @property
    def controlplane_dir(self) -> Path:
        return self.state_dir / "controlplane"

    def _require(self) -> Record:
        record = self.load()
        if record is None:
            raise LabError(f"no lab in {self.state_dir}: run 'python -m testrigs.lab up' first")
        return record

    def bridge_netns(self, record: Record) -> str:
        return f"{netns.PREFIX}{record.lab_id}-br"

    # --- up --------------------------------------------------------------------------------------

    def up(
        self,
        manifest_paths: Sequence[Path],
        faults: Sequence[str] = (),
        *,
        translator: bool = True,
        kubelet: bool | None = None,
        with_auditor: bool = False,
        nodes: int = lab_nodes.DEFAULT_NODES,
    ) -> Path:
        """Start everything, wait until the data plane serves the manifests; return the kubeconfig.

        ``translator`` starts the daemon that follows the API server; ``kubelet`` (default: as
        ``translator``) the one that runs probe pods inside lab pods; ``with_auditor`` also
        applies ``AUDITOR_DEPLOY`` and writes ``auditor_kubeconfig``. ``nodes`` lab nodes
        (``testrigs.lab.nodes``) carry the Deployments' replicas and the probe pods.
        """
        check_host()
        parse_faults(faults)
        try:
            node_names = lab_nodes.names(nodes)
        except lab_nodes.NodeError as error:
            raise LabError(str(error)) from error
        paths = [*AUDITOR_DEPLOY, *manifest_paths] if with_auditor else list(manifest_paths)
        objects = manifests.supplement(manifests.load(paths))
        if self.load() is not None:
            raise LabError(f"a lab is already recorded in {self.state_dir}: run down first")
        self._make_state_dir()
        record = Record(lab_id=secrets.token_hex(3), faults=list(faults), nodes=list(node_names))
        self._save(record)
        try:
            self._start(record, objects)
            if with_auditor:
                self._write_auditor_kubeconfig()
            if translator:
                self._start_daemon("translator", "_translate")
            if translator if kubelet is None else kubelet:
                self._start_daemon("kubelet", "_kubelet")
        except BaseException:
            self.down()
            raise
        return Path(record.kubeconfig)

    def _make_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        # World-traversable on purpose: the proxies run as uid 1337 and read their files below.
        self.state_dir.chmod(0o755)
        for parent in self.state_dir.parents:
            if not parent.stat().st_mode & 0o001:
                raise LabError(f"{parent} is not traversable by others: the proxy (uid 1337) could not read its files")

    def _start(self, record: Record, objects: list[Obj]) -> None:
        ca = LabCA(self.state_dir / "ca")
        ca.create()
        # The real istiod writes every status of Istio's the auditor reads and renders waypoints'
        # Deployments; the lab's ``controllers`` are the controller-manager, kubelet and
        # istio-cni, so the control plane's workload stand-in is not started.
        kubeconfig = controlplane.up(self.controlplane_dir, istio=True, stand_in=False, cacerts=self._plug_ca(ca))
        record.kubeconfig = str(kubeconfig)
        self._save(record)
        api = controlplane.KubeAPI(kubeconfig, controlplane.build().kubectl)
        for batch in manifests.apply_order(objects):
            api.apply_text(manifests.dump(batch))
        netns.create_bridge_namespace(self.bridge_netns(record))
        proxy.install_envoy(self.state_dir / "bin")
        image = probe_image.build(self.state_dir / "image")
        probe_image.verify(image, PROBE_UID)
        image.save(self.state_dir / "image" / "image.json")
        self.reconcile()
        self.wait_istiod_status()

    def _plug_ca(self, ca: LabCA) -> Path:
        """The lab CA as istiod's ``cacerts`` (self-signed root: ca-cert = root-cert = cert-chain),
        so the root istiod publishes (``istio-ca-root-cert``) is the one the lab's proxies trust."""
        directory = self.state_dir / "cacerts"
        directory.mkdir(mode=0o700, exist_ok=True)
        for name in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
            shutil.copyfile(ca.cert_path, directory / name)
        shutil.copyfile(ca.key_path, directory / "ca-key.pem")
        return directory

    def wait_istiod_status(self, timeout: float = ISTIOD_STATUS_TIMEOUT_S) -> None:
        """Reconcile until istiod has programmed every waypoint Gateway the lab runs (``Programmed``
        True for the current generation, with an address); raises LabError naming those it has not.

        istiod writes the status asynchronously (after it rendered the waypoint's Deployment and
        Service and the lab's controllers gave that Deployment its pod), so a caller that applies a
        waypoint and audits at once calls this in between, as one waits for ``kubectl wait
        --for=condition=Programmed`` on a cluster.
        """
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while True:
            self.reconcile()
            objects = self.read_api()
            waypoints = {w.key for w in Mesh(objects).waypoints}
            pending = [
                f"{key}: {_conditions(obj)}"
                for obj in objects
                if obj.get("kind") == "Gateway"
                and (key := f"{obj['metadata'].get('namespace')}/{obj['metadata'].get('name')}") in waypoints
                and not _programmed(obj)
            ]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if pending:
            raise LabError(f"istiod did not program these waypoints within {timeout:.0f} s: {'; '.join(pending)}")

    @property
    def auditor_kubeconfig(self) -> Path:
        """A kubeconfig for the auditor's ServiceAccount (``with_auditor``): RBAC and probe-guard apply."""
        return self.state_dir / "auditor-kubeconfig"

    def _write_auditor_kubeconfig(self) -> None:
        kube = self.kube()
        write_auditor_kubeconfig(kube.kubectl, kube.kubeconfig, self.auditor_kubeconfig)

    def _start_daemon(self, name: str, command: str) -> None:
        with self._locked():
            record = self._require()
            argv = [sys.executable, "-m", "testrigs.lab", "--state-dir", str(self.state_dir), command]
            record.procs[name] = procs.spawn(name, argv, self.state_dir / f"{name}.log")
            self._save(record)

    def read_api(self) -> list[Obj]:
        """The objects the data plane follows, as the API server has them now."""
        from testrigs.lab import translator  # noqa: PLC0415 - the kubernetes client is slow to import

        with translator.new_client(Path(self._require().kubeconfig)) as api:
            return translator.list_objects(api)

    def kube(self) -> controlplane.KubeAPI:
        """kubectl against the lab's API server."""
        return controlplane.KubeAPI(Path(self._require().kubeconfig), controlplane.build().kubectl)

    # --- reconcile -------------------------------------------------------------------------------

    def reconcile(self, objects: list[Obj] | None = None) -> None:
        """Make the data plane match ``objects`` (default: the API server now); returns when it does.

        The API server is read under the lock: two reconcilers (the translator, the kubelet, a
        test) never apply an older snapshot after a newer one. istio-cni's annotation (``writeback``)
        and the controllers' objects follow, best effort: a refused write is reported on stderr and retried next time.
        """
        from testrigs.lab import translator  # noqa: PLC0415 - the kubernetes client is slow to import

        with self._locked():
            record = self._require()
            with translator.new_client(Path(record.kubeconfig)) as api:
                snapshot = translator.list_objects(api) if objects is None else objects
                mesh = self.mesh(record, snapshot)
                _Reconciler(self, record, mesh).run()
                running = {key: pod.ip for key, pod in record.pods.items() if key in record.applied}
                for problem in writeback.apply(api, writeback.patches(snapshot, mesh, running)):
                    print(f"lab: status write-back: {problem}", file=sys.stderr, flush=True)
                for problem in controllers.sync(api, snapshot, mesh, running):
                    print(f"lab: controllers: {problem}", file=sys.stderr, flush=True)

    @staticmethod
    def mesh(record: Record, objects: list[Obj]) -> Mesh:
        """The ambient view of ``objects`` on this lab's nodes, with its planted capture fault."""
        return Mesh(objects, nodes=record.nodes, uncaptured_endpoint=uncaptured_targets(record.faults))

    def set_faults(self, faults: Sequence[str]) -> None:
        """Change the planted faults; the next reconcile applies them."""
        parse_faults(faults)
        with self._locked():
            record = self._require()
            record.faults = list(faults)
            self._save(record)

    # --- down and status -------------------------------------------------------------------------

    def down(self) -> bool:
        """Stop and delete everything this lab created; False when there was nothing."""
        if not self.state_dir.exists():
            return False
        record = self.load()
        if record is not None:
            # The daemons first: they would reconcile, or start probes in, what is being removed.
            procs.stop_all([record.procs.pop(name) for name in ("translator", "kubelet") if name in record.procs])
            procs.stop_all(list(record.procs.values()))
            self._delete_namespaces(record)
        controlplane.down(self.controlplane_dir)
        if (self.state_dir / "lab.json").exists() or not any(self.state_dir.iterdir()):
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return record is not None

    def _delete_namespaces(self, record: Record) -> None:
        names = {pod.netns for pod in record.pods.values()} | {self.bridge_netns(record)}
        names |= set(netns.list_lab_namespaces(f"{netns.PREFIX}{record.lab_id}-"))
        for name in sorted(names):
            # Anything still inside is the lab's own (a probe the caller left running): end it by pid.
            for pid in procs.netns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            netns.delete_namespace(name)

    def status(self) -> dict[str, Any]:
        """What runs: pods with their address, capture and processes; healthy when all recorded run."""
        record = self.load()
        if record is None:
            return {"state_dir": str(self.state_dir), "up": False}
        running = {name: proc.running() for name, proc in record.procs.items()}
        return {
            "state_dir": str(self.state_dir),
            "up": True,
            "lab_id": record.lab_id,
            "kubeconfig": record.kubeconfig,
            "auditor_kubeconfig": str(self.auditor_kubeconfig) if self.auditor_kubeconfig.exists() else None,
            "faults": record.faults,
            "nodes": record.nodes,
            "healthy": all(running.values()) and controlplane.is_healthy(self.controlplane_dir),
            "pods": {key: {"netns": pod.netns, "ip": pod.ip, "node": pod.node} for key, pod in record.pods.items()},
            "vips": record.vips,
            "processes": running,
        }

    # --- acting inside pods ----------------------------------------------------------------------

    def netns_of(self, pod_key: str) -> str:
        record = self._require()
        if pod_key not in record.pods:
            raise LabError(f"no lab pod {pod_key}; pods: {', '.join(sorted(record.pods))}")
        return record.pods[pod_key].netns

    def exec(
        self, pod_key: str, argv: Sequence[str], stdin: str | None = None, timeout: float = PROBE_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the pod's network namespace as root (so its traffic is captured)."""
        command = [procs.IP, "netns", "exec", self.netns_of(pod_key), *argv]
        return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=timeout)

    def envoy_admin(self, pod_key: str, path: str) -> str:
        """A GET on the admin API of the pod's Envoy (ztunnel or waypoint)."""
        self.netns_of(pod_key)
        proxy_dir = proxy.ProxyDir(self.state_dir / "pods" / pod_key.replace("/", "__") / "proxy")
        status, body = proxy.admin_get(proxy_dir, path)
        if status != 200:
            raise LabError(f"Envoy admin of {pod_key} answered {status} for {path}")
        return body.decode(errors="replace")

    def probe(self, pod_key: str, requests: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Run ``python -m probes`` in the pod; results by request id."""
        plan = {"run_id": "lab", "requests": list(requests)}
        argv = [sys.executable, "-m", "probes", "--plan", "-", "--termination-log", "/dev/null"]
        result = self.exec(pod_key, argv, stdin=json.dumps(plan))
        if result.returncode != 0:
            raise LabError(f"probe in {pod_key} failed ({result.returncode}): {result.stderr[-2000:]}")
        return {item["id"]: item for item in json.loads(result.stdout.splitlines()[-1])["results"]}


class _Reconciler:
    """One pass of reconcile: pods, apps, proxies, then nat and DNS (order matters for capture)."""

    def __init__(self, lab: Lab, record: Record, mesh: Mesh) -> None:
        self.lab, self.record, self.mesh = lab, record, mesh
        self.faults = _faults(record.faults)
        self.wanted = {w.key: w for w in mesh.all_workloads()}

    def run(self) -> None:
        self._remove_gone()
        for workload in self.wanted.values():
            self._ensure_pod(workload)
        self._allocate_vips()
        self._ensure_apps()
        self._publish_proxies()
        self._apply_nat_and_dns()
        self._stop_unneeded_proxies()
        self.lab._save(self.record)

    # pods

    def _pod_dir(self, key: str) -> Path:
        return self.lab.state_dir / "pods" / key.replace("/", "__")

    def _remove_gone(self) -> None:
        for key in sorted(set(self.record.pods) - set(self.wanted)):
            for name in (f"app:{key}", f"envoy:{key}"):
                if name in self.record.procs:
                    procs.stop(self.record.procs.pop(name))
            netns.delete_namespace(self.record.pods.pop(key).netns)
            self.record.published.pop(f"envoy:{key}", None)
            self.record.applied.pop(key, None)
            shutil.rmtree(self._pod_dir(key), ignore_errors=True)
            self.lab._save(self.record)

    def _ensure_pod(self, workload: Workload) -> None:
        if workload.key in self.record.pods:
            self.record.pods[workload.key].node = workload.node  # a bare pod is bound after it is seen
            return
        # Never reuse an index: a re-created pod (a waypoint deleted and applied again) with its old
        # address but a new MAC would be unreachable until its peers' ARP entries expire.
        index = max([self.record.last_index, *(pod.index for pod in self.record.pods.values())]) + 1
        if index >= 60_000:
            raise LabError("the lab ran out of pod addresses; run down and up again")
        self.record.last_index = index
        address = str(netns.POD_NETWORK[256 + index])
        name = f"{netns.PREFIX}{self.record.lab_id}-{workload.namespace}-{workload.name}"
        pod = PodRecord(netns=name, ip=address, veth=f"v{index}", index=index, node=workload.node)
        self.record.pods[workload.key] = pod
        self.lab._save(self.record)  # recorded before created: down finds half-made pods
        netns.create_pod_namespace(name, self.lab.bridge_netns(self.record), pod.veth, address)
        self._pod_dir(workload.key).mkdir(mode=0o755, parents=True, exist_ok=True)

    def _allocate_vips(self) -> None:
        keys = {service.key for service in self.mesh.services}
        for key in set(self.record.vips) - keys:
            del self.record.vips[key]
        used = set(self.record.vips.values())
        for key in sorted(keys - set(self.record.vips)):
            address = next(str(netns.VIP_NETWORK[i]) for i in range(1, 60_000) if str(netns.VIP_NETWORK[i]) not in used)
            self.record.vips[key] = used_address = address
            used.add(used_address)

    # apps

    def _service_down(self, workload: Workload) -> bool:
        for fault in self.record.faults:
            name, _, target = fault.partition("=")
            if name != "service-down":
                continue
            if not target:
                return True
            service = self.mesh.service(target if "/" in target else f"default/{target}")
            if service is not None and any(
                workload == pod for port in service.ports for pod, _ in self.mesh.endpoints(service, port)
            ):
                return True
        return False

    def _ensure_apps(self) -> None:
        started = []
        for workload in self.mesh.workloads:
            name = f"app:{workload.key}"
            want = bool(workload.port_numbers) and not self._service_down(workload)
            current = self.record.procs.get(name)
            if current is not None and (not want or not current.running()):
                procs.stop(self.record.procs.pop(name))
                current = None
            if want and current is None:
                started.append((workload, self._start_app(workload)))
        for workload, proc in started:
            _wait_listening(proc, workload.port_numbers)

    def _start_app(self, workload: Workload) -> Proc:
        argv = [sys.executable, "-m", "testrigs.lab.app", "--pod", workload.name]
        for port in workload.port_numbers:
            argv += ["--port", str(port)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log = self._pod_dir(workload.key) / "app.log"
        proc = procs.spawn_in_netns(f"app:{workload.key}", self.record.pods[workload.key].netns, argv, log, env)
        self.record.procs[proc.name] = proc
        self.lab._save(self.record)
        return proc

    # proxies

    def _proxied(self) -> dict[str, Workload]:
        """Pods that run an Envoy: every captured pod (ztunnel) and every waypoint."""
        return {k: w for k, w in self.wanted.items() if w.waypoint or self.mesh.captured(w)}

    def _world(self) -> World:
        ready = frozenset(w.key for w in self.wanted.values() if w.waypoint)
        pod_ips = {key: pod.ip for key, pod in self.record.pods.items()}
        return World(self.mesh, pod_ips, dict(self.record.vips), ready, self.faults)

    def _resources(self, world: World, workload: Workload, certs: Certs) -> envoyconf.Resources:
        if workload.waypoint:
            waypoint = next(w for w in self.mesh.waypoints if w.key == workload.key)
            return envoyconf.waypoint(world, waypoint, certs)
        return envoyconf.ztunnel(world, workload, certs)

    def _publish_proxies(self) -> None:
        world = self._world()
        envoy = self.lab.state_dir / "bin" / "envoy"
        pending: list[tuple[Proc, proxy.ProxyDir, str]] = []
        for key, workload in self._proxied().items():
            proxy_dir = proxy.ProxyDir(self._pod_dir(key) / "proxy")
            name = f"envoy:{key}"
            certs = self._certs(workload, proxy_dir)
            resources = self._resources(world, workload, certs)
            current = self.record.procs.get(name)
            if current is None or not current.running():
                current, version = proxy.start(name, self.record.pods[key].netns, envoy, proxy_dir, resources)
                self.record.procs[name] = current
                self.lab._save(self.record)
            else:
                version = proxy.publish(proxy_dir, resources)
            self.record.published[name] = version
            pending.append((current, proxy_dir, version))
        for current, proxy_dir, version in pending:
            proxy.wait_version(current, proxy_dir, version)

    def _certs(self, workload: Workload, proxy_dir: proxy.ProxyDir) -> Certs:
        proxy_dir.create()
        files = proxy_dir.path / "cert.pem", proxy_dir.path / "key.pem"
        if not all(path.exists() for path in files):
            LabCA(self.lab.state_dir / "ca").issue(workload.spiffe_id, proxy_dir.path, netns.PROXY_UID)
        return Certs(str(files[0]), str(files[1]), str(self.lab.state_dir / "ca" / "ca.crt"))

    def _stop_unneeded_proxies(self) -> None:
        proxied = self._proxied()
        for name in [n for n in self.record.procs if n.startswith("envoy:")]:
            if name.removeprefix("envoy:") not in proxied:
                procs.stop(self.record.procs.pop(name))
                self.record.published.pop(name, None)

    # nat and dns

    def _apply_nat_and_dns(self) -> None:
        services = [(s.namespace, s.name, self.record.vips[s.key]) for s in self.mesh.services]
        for key, workload in self.wanted.items():
            pod = self.record.pods[key]
            rules = netns.nat_rules(
                captured=self.mesh.captured(workload),
                inbound=workload.annotations.get(BYPASS_INBOUND) != "true",
                vip_dnat=self._vip_dnat(),
            )
            hosts = netns.hosts_file(workload.name, pod.ip, workload.namespace, services)
            resolv = netns.resolv_conf(workload.namespace)
            digest = hashlib.sha256(f"{rules}\n{hosts}\n{resolv}".encode()).hexdigest()
            if self.record.applied.get(key) == digest:
                continue
            netns.write_dns(pod.netns, hosts, resolv)
            netns.apply_nat(pod.netns, rules)
            self.record.applied[key] = digest

    def _vip_dnat(self) -> list[tuple[str, int, str, int]]:
        # Every endpoint, in order: netns.nat_rules picks one per connection at random, as kube-proxy.
        rules = []
        for service in self.mesh.services:
            for port in service.ports:
                for pod, target in self.mesh.endpoints(service, port):
                    rules.append((self.record.vips[service.key], port.port, self.record.pods[pod.key].ip, target))
        return rules


def _programmed(gateway: Obj) -> bool:
    status = gateway.get("status") or {}
    generation = (gateway.get("metadata") or {}).get("generation")
    return bool(status.get("addresses")) and any(
        c.get("type") == "Programmed" and c.get("status") == "True" and c.get("observedGeneration") == generation
        for c in status.get("conditions") or []
    )


def _conditions(gateway: Obj) -> str:
    conditions = (gateway.get("status") or {}).get("conditions") or []
    return ", ".join(f"{c.get('type')}={c.get('status')} ({c.get('reason')})" for c in conditions) or "no status"


def _wait_listening(proc: Proc, ports: Sequence[int], timeout: float = APP_READY_TIMEOUT_S) -> None:
    """Until every port listens in the process's namespace (/proc/<pid>/net/tcp is per-namespace)."""
    deadline = time.monotonic() + timeout
    wanted = {f"{port:04X}" for port in ports}
    while time.monotonic() < deadline:
        if not proc.running():
            raise LabError(f"{proc.name} exited during start-up")
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{proc.pid}/net/tcp").read_text().splitlines()[1:]
            listening = {line.split()[1].rsplit(":", 1)[1] for line in lines if line.split()[3] == "0A"}
            if wanted <= listening:
                return
        time.sleep(0.05)
    raise LabError(f"{proc.name} did not listen on {sorted(ports)} within {timeout:.0f} s")


def write_auditor_kubeconfig(kubectl: Callable[..., str], admin_kubeconfig: Path, target: Path) -> None:
    """Write ``target`` (mode 0600): ``admin_kubeconfig`` with its user replaced by a token of the
    auditor's ServiceAccount (``AUDITOR_SERVICE_ACCOUNT``, valid ``AUDITOR_TOKEN_DURATION``), made
    with ``kubectl`` (called as ``kubectl(*args) -> stdout``), so RBAC and probe-guard apply."""
    namespace, name = AUDITOR_SERVICE_ACCOUNT
    token = kubectl("create", "token", name, f"--namespace={namespace}", f"--duration={AUDITOR_TOKEN_DURATION}")
    config = yaml.safe_load(admin_kubeconfig.read_text(encoding="utf-8"))
    config["users"] = [{"name": name, "user": {"token": token.strip()}}]
    for context in config.get("contexts") or []:
        context["context"]["user"] = name
    target.touch(mode=0o600)
    target.write_text(yaml.safe_dump(config), encoding="utf-8")
