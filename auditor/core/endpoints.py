"""Every enforcement point (issue #13): the ready endpoints of each protected Service, and the
per-cycle share of them that probe pods address by pod IP.

A request to a Service name lands on one endpoint the mesh picks, so a pod that ztunnel never
captured, or a node whose ztunnel is broken, goes unseen most cycles. Probes also address each
ready endpoint (a Ready pod with an IP behind the Service, what the EndpointSlice controller
publishes) by pod IP and the Service's target port:

- ``outside`` sends plaintext: STRICT must refuse it at that pod's node (semantics §1.2);
- ``intruder`` (only for Services bound to a waypoint) sends the allowed request's headers: a
  request to a pod IP skips the Service's waypoint (§4.6), so only policy that ztunnel enforces
  can refuse it, or the pod's own waypoint (``waypoint``, ``mesh.workload_waypoint``) with the
  policies targeting that Gateway (§4.8); when it is answered, the Service's L7 promise can be
  bypassed by anyone who learns a pod IP (``waypoint-enrollment.pod-ip-bypass``).

The number of endpoints per cycle is bounded (``budget``); when a cluster has more, a fair
rotation (``rotation``, the cycle's number) covers every endpoint within ceil(n / budget) cycles.
Pure: the snapshot's pods in, ``Endpoint`` values out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from auditor.core.mesh import workload_waypoint
from auditor.core.posture import ProtectedService
from auditor.core.snapshot import Service, SnapshotIndex, Workload

ENDPOINT_PLAINTEXT = "endpoint-plaintext:"
ENDPOINT_INTRUDER = "endpoint-intruder:"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready endpoint: the pod behind a protected Service, where it runs, how to address it."""

    target: str  # the Service, "<namespace>/<name>"
    pod: str  # "<namespace>/<name>"
    node: str
    ip: str
    port: int
    waypoint: str = ""  # the pod's own waypoint "<namespace>/<name>", which traffic to its IP goes through (§4.8)

    @property
    def url_base(self) -> str:
        """``http://<ip>:<port>``, with an IPv6 address in brackets. Never raises."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"

    def describe(self) -> str:
        """The endpoint in words: IP and port, pod and node. Never raises."""
        own = f", through its own waypoint {self.waypoint}" if self.waypoint else ""
        return f"endpoint {self.ip}:{self.port} (pod {self.pod} on node {self.node or '(unknown)'}{own})"


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many of a Service's ready endpoints this cycle probes by pod IP."""

    probed: int
    ready: int

    def describe(self) -> str:
        """``"<probed>/<ready> ready endpoints probed by pod IP"``. Never raises."""
        return f"{self.probed}/{self.ready} ready endpoints probed by pod IP"


def ready_endpoints(protected: ProtectedService, service: Service, index: SnapshotIndex) -> tuple[Endpoint, ...]:
    """The Service's ready endpoints on its probe port, sorted by pod; none without a probe."""
    if protected.probe is None:
        return ()
    port = next((p for p in service.ports if p.port == protected.probe.port), None)
    if port is None:
        return ()
    found = []
    for pod in index.workloads_for(service):
        if not (pod.is_pod and pod.ready and pod.pod_ip):
            continue
        number = _target_port(port.target_port, pod)
        if number is not None:
            own = workload_waypoint(pod, index).gateway
            waypoint = own.meta.key if own is not None else ""
            found.append(Endpoint(protected.target, pod.meta.key, pod.node_name, pod.pod_ip, number, waypoint))
    return tuple(sorted(found, key=lambda e: e.pod))


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
