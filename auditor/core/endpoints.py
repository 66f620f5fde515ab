"""Every enforcement point (issue #13): the ready endpoints of each protected Service, and the
per-cycle share of them that probe pods address by pod IP.

A request to a Service name lands on one endpoint the mesh picks, so a pod that ztunnel never
captured, or a node whose ztunnel is broken, goes unseen most cycles. Probes also address each
ready endpoint by pod IP and the Service's target port:

- ``outside`` sends plaintext: STRICT must refuse it at that pod's node (semantics §1.2);
- ``intruder`` (only for Services bound to a waypoint) sends the allowed request's headers: a
  request to a pod IP skips the Service's waypoint (§4.6), so only policy that ztunnel enforces
  can refuse it, or the pod's own waypoint (``waypoint``, ``mesh.workload_waypoint``) with the
  policies targeting that Gateway (§4.8); when it is answered, the Service's L7 promise can be
  bypassed by anyone who learns a pod IP (``waypoint-enrollment.pod-ip-bypass``).

Where the endpoints come from (``service_endpoints``): on a live cluster, the Service's
``discovery.k8s.io/v1`` EndpointSlices (label ``kubernetes.io/service-name``), as kube-proxy and
istiod read them: an entry is ready unless ``conditions.ready`` is false (absent means ready, as
the API defines it) and not ``terminating``; its first address, the port of the slice's port named
as the Service port, its ``targetRef`` Pod and ``nodeName``. Services without a selector, whose
slices are written by hand, are covered the same way. A live Service whose slices are missing
(or unreadable) while Ready pods match its selector has unknown endpoints: a ``gap`` that keeps
the strict-mTLS verdict from passing. Manifest files hold no slices: their endpoints are the
Ready pods the selector matches (today's derivation), and the evidence says so.

The number of endpoints per cycle is bounded (``budget``); when a cluster has more, a fair
rotation (``rotation``, the cycle's number) covers every endpoint within ceil(n / budget) cycles.
Pure: the snapshot's slices and pods in, ``Endpoint`` values out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from auditor.core.mesh import workload_waypoint
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import EndpointSlice, Service, SliceEndpoint, SnapshotIndex, Workload

ENDPOINT_PLAINTEXT = "endpoint-plaintext:"
ENDPOINT_INTRUDER = "endpoint-intruder:"
FROM_SLICES = "EndpointSlices"
FROM_PODS = "the Ready pods its selector matches: the manifest files hold no EndpointSlices"
_ADDRESS_TYPES = frozenset({"IPv4", "IPv6"})  # FQDN endpoints have no pod IP to probe


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready endpoint: the pod behind a protected Service, where it runs, how to address it."""

    target: str  # the Service, "<namespace>/<name>"
    pod: str  # "<namespace>/<name>"; "" for a slice entry that names no Pod (a hand-written slice)
    node: str
    ip: str
    port: int
    waypoint: str = ""  # the pod's own waypoint "<namespace>/<name>", which traffic to its IP goes through (§4.8)

    @property
    def key(self) -> str:
        """What names the endpoint in request ids: its pod, else ``<ip>:<port>``. Never raises."""
        return self.pod or f"{self.ip}:{self.port}"

    @property
    def url_base(self) -> str:
        """``http://<ip>:<port>``, with an IPv6 address in brackets. Never raises."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        """The endpoint in words: IP and port, pod and node. Never raises."""
        pod = f"pod {self.pod}" if self.pod else "no pod named by its EndpointSlice"
        own = f", through its own waypoint {self.waypoint}" if self.waypoint else ""
        return f"endpoint {self.ip}:{self.port} ({pod} on node {self.node or '(unknown)'}{own})"


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many of a Service's ready endpoints this cycle probes by pod IP."""

    probed: int
    ready: int
    source: str = FROM_SLICES  # where the endpoints come from (FROM_SLICES or FROM_PODS)
    gap: str = ""  # why the Service's endpoints are unknown ("" when they are known)

    def describe(self) -> str:
        """``"<probed>/<ready> ready endpoints probed by pod IP"``, plus where they come from when not
        from EndpointSlices, or why they are unknown. Never raises."""
        if self.gap:
            return f"endpoints unknown: {self.gap}"
        shown = f"{self.probed}/{self.ready} ready endpoints probed by pod IP"
        return shown if self.source == FROM_SLICES else f"{shown} (endpoints from {self.source})"


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """A Service's ready endpoints on its probe port (sorted by pod, then IP), where they come from
    (``FROM_SLICES`` or ``FROM_PODS``) and, when they are unknown, why (``gap``, never a pass)."""

    endpoints: tuple[Endpoint, ...]
    source: str
    gap: str = ""


def service_endpoints(protected: ProtectedService, service: Service, index: SnapshotIndex) -> ServiceEndpoints:
    """The ready endpoints of ``service`` (module docstring for the source and the gap); none
    without a probe target or when the probe port is not a port of the Service. Never raises."""
    port = None
    if protected.probe is not None:
        port = next((p for p in service.ports if p.port == protected.probe.port), None)
    snapshot = index.snapshot
    slices = index.slices_for(service)
    if not snapshot.live and not slices:
        found = _from_pods(protected, service, index) if port is not None else ()
        return ServiceEndpoints(found, FROM_PODS)
    unread = next((p for p in snapshot.problems if p.kind == "EndpointSlice"), None)
    if unread is not None:
        needs = f" (needs {unread.permission})" if unread.permission else ""
        return ServiceEndpoints((), FROM_SLICES, f"its EndpointSlices could not be read: {unread.message}{needs}")
    if not slices:
        pods = [w for w in index.workloads_for(service) if w.is_pod and w.ready]
        if pods:
            gap = (
                f"no EndpointSlice names Service {protected.target} (label kubernetes.io/service-name) while "
                f"{len(pods)} Ready pod(s) match its selector: is the EndpointSlice controller running?"
            )
            return ServiceEndpoints((), FROM_SLICES, gap)
        return ServiceEndpoints((), FROM_SLICES)
    if port is None:
        return ServiceEndpoints((), FROM_SLICES)
    return ServiceEndpoints(_from_slices(protected, port.name, slices, index), FROM_SLICES)


def ready_endpoints(protected: ProtectedService, service: Service, index: SnapshotIndex) -> tuple[Endpoint, ...]:
    """The Service's ready endpoints on its probe port (``service_endpoints``), sorted by pod; none
    without a probe."""
    return service_endpoints(protected, service, index).endpoints


def serves(entry: SliceEndpoint) -> bool:
    """True for a slice entry that is a ready endpoint: ``conditions.ready`` not false (absent means
    ready, discovery.k8s.io/v1), not terminating, with an address. Never raises."""
    return entry.ready is not False and entry.terminating is not True and bool(entry.addresses)


def _from_slices(
    protected: ProtectedService, port_name: str, slices: tuple[EndpointSlice, ...], index: SnapshotIndex
) -> tuple[Endpoint, ...]:
    # By address and port: an endpoint may sit in two slices while they change; two pods may share
    # an IP with different ports (host-network pods).
    found: dict[tuple[str, int], Endpoint] = {}
    for piece in slices:
        if piece.address_type not in _ADDRESS_TYPES:
            continue
        # The controller names each slice port after the Service port (an unnamed one is "").
        number = next((p.port for p in piece.ports if p.name == port_name and p.port is not None), None)
        if number is None:
            continue
        for entry in piece.endpoints:
            if not serves(entry):
                continue
            ip = entry.addresses[0]  # the addresses are fungible; consumers may use the first
            pod = _pod_of(entry.pod, index)
            node = entry.node_name or (pod.node_name if pod is not None else "")
            waypoint = _own_waypoint(pod, index)
            found.setdefault((ip, number), Endpoint(protected.target, entry.pod, node, ip, number, waypoint))
    return tuple(sorted(found.values(), key=lambda e: (e.pod, e.ip)))


def _pod_of(pod: str, index: SnapshotIndex) -> Workload | None:
    namespace, _, name = pod.partition("/")
    for workload in index.workloads_by_ns.get(namespace, ()):
        if workload.is_pod and workload.meta.name == name:
            return workload
    return None


def _from_pods(protected: ProtectedService, service: Service, index: SnapshotIndex) -> tuple[Endpoint, ...]:
    port = next((p for p in service.ports if protected.probe and p.port == protected.probe.port), None)
    if port is None:
        return ()
    found = []
    for pod in index.workloads_for(service):
        if not (pod.is_pod and pod.ready and pod.pod_ip):
            continue
        number = _target_port(port.target_port, pod)
        if number is not None:
            found.append(
                Endpoint(protected.target, pod.meta.key, pod.node_name, pod.pod_ip, number, _own_waypoint(pod, index))
            )
    return tuple(sorted(found, key=lambda e: (e.pod, e.ip)))


def _own_waypoint(pod: Workload | None, index: SnapshotIndex) -> str:
    """The pod's own waypoint ``<namespace>/<name>`` (semantics §4.8), "" without one or without a pod."""
    own = workload_waypoint(pod, index).gateway if pod is not None else None
    return own.meta.key if own is not None else ""


def _target_port(target: int | str, pod: Workload) -> int | None:
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    return pod.container_port(target)


def rotate(endpoints: Sequence[Endpoint], budget: int, rotation: int) -> tuple[Endpoint, ...]:
    """At most ``budget`` endpoints: all when they fit, else a window that moves by ``budget``
    each cycle, so every endpoint is probed within ceil(len / budget) cycles."""
    if budget <= 0:
        return ()
    if len(endpoints) <= budget:
        return tuple(endpoints)
    start = (rotation * budget) % len(endpoints)
    return tuple(endpoints[(start + i) % len(endpoints)] for i in range(budget))


def rotate_with_focus(
    endpoints: Sequence[Endpoint], budget: int, rotation: int, nodes: frozenset[str]
) -> tuple[Endpoint, ...]:
    """``rotate``, but the endpoints on ``nodes`` (a new node, a ztunnel pod replaced or Ready
    again: the daemon's node trigger) come first, so the cycle it triggers probes them whatever
    the rotation; the rest of the budget rotates over the others."""
    focused = tuple(e for e in endpoints if e.node in nodes)[: max(budget, 0)]
    others = [e for e in endpoints if e.node not in nodes]
    return focused + rotate(others, budget - len(focused), rotation)
