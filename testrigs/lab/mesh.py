"""Ambient semantics as the lab's data plane applies them: a pure view over Kubernetes objects.

Role: the translator (``lab.py``) hands in the objects it read (manifest files or the API
server) and asks this module which lab pods exist, which are captured, which Service resolves to
which waypoint, which PeerAuthentication mode and which AuthorizationPolicies bind each pod or
waypoint. ``envoyconf.py`` turns the answers into Envoy configuration. No I/O here; objects are
plain dicts in the manifests' camelCase shape.

It deliberately re-implements the rules from shared/docs/ambient-semantics.md instead of
importing the auditor's core: the lab is the reference the auditor is graded against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from testrigs.lab import nodes as lab_nodes

Obj = dict[str, Any]

ROOT_NAMESPACE = "istio-system"
TRUST_DOMAIN = "cluster.local"
DATAPLANE_MODE = "istio.io/dataplane-mode"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
DRY_RUN = "istio.io/dry-run"
WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
REVISION_LABEL = "istio.io/rev"
# The revision of the istiod both labs run (testrigs.devtools.istio.REVISION: the chart's default).
ISTIOD_REVISION = "default"


def rendered_for_gateway(obj: Obj) -> str | None:
    """The name of the Gateway whose deployment controller made ``obj`` (istiod renders a
    waypoint's ServiceAccount, Deployment and Service from its ``waypoint`` template, each owned
    by the Gateway), or None for any other object."""
    for owner in meta(obj).get("ownerReferences") or []:
        if owner.get("kind") == "Gateway" and str(owner.get("apiVersion", "")).startswith(f"{GATEWAY_API_GROUP}/"):
            return str(owner.get("name") or "") or None
    return None


def meta(obj: Obj) -> Mapping[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def labels_of(obj: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta(obj).get("labels") or {}).items()}


def annotations_of(obj: Obj) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta(obj).get("annotations") or {}).items()}


def spec(obj: Obj) -> Mapping[str, Any]:
    value = obj.get("spec")
    return value if isinstance(value, dict) else {}


def namespace_of(obj: Obj) -> str:
    return str(meta(obj).get("namespace") or "default")


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name") or "")


@dataclass(frozen=True)
class Workload:
    """One lab pod: a Deployment's replica, a bare Pod, or a waypoint's proxy.

    ``node`` is the lab node it runs on ("" for a waypoint, or a bare Pod not yet bound);
    ``replica_of`` the Deployment's key for a replica, else "".
    """

    namespace: str
    name: str
    service_account: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)  # container port name (or str(port)) -> port
    host_network: bool = False
    sidecar: bool = False
    waypoint: bool = False
    node: str = ""
    replica_of: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def spiffe_id(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    @property
    def port_numbers(self) -> list[int]:
        return sorted(set(self.ports.values()))


@dataclass(frozen=True)
class ServicePort:
    port: int
    target: int | str  # a number or a container port name


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    labels: Mapping[str, str]
    selector: Mapping[str, str]
    ports: tuple[ServicePort, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Waypoint:
    """A Gateway of class istio-waypoint that the lab can run (an HBONE listener on 15008)."""

    namespace: str
    name: str
    waypoint_for: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def spiffe_id(namespace: str, service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def _container_ports(pod_spec: Mapping[str, Any]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for container in pod_spec.get("containers") or []:
        for port in container.get("ports") or []:
            if str(port.get("protocol", "TCP")) != "TCP" or "containerPort" not in port:
                continue
            number = int(port["containerPort"])
            ports[str(port.get("name") or number)] = number
    return ports


def _workload(
    namespace: str,
    name: str,
    template_meta: Mapping[str, Any],
    pod_spec: Mapping[str, Any],
    *,
    node: str = "",
    replica_of: str = "",
) -> Workload:
    pod_annotations = {str(k): str(v) for k, v in (template_meta.get("annotations") or {}).items()}
    return Workload(
        namespace=namespace,
        name=name,
        service_account=str(pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default"),
        labels={str(k): str(v) for k, v in (template_meta.get("labels") or {}).items()},
        annotations=pod_annotations,
        ports=_container_ports(pod_spec),
        host_network=bool(pod_spec.get("hostNetwork")),
        sidecar="sidecar.istio.io/status" in pod_annotations
        or any(c.get("name") == "istio-proxy" for c in pod_spec.get("containers") or []),
        node=node,
        replica_of=replica_of,
    )


MAX_REPLICAS = 8  # per Deployment: each replica is a network namespace, an app and maybe an Envoy


def workloads_of(obj: Obj, nodes: Sequence[str] = lab_nodes.names(1)) -> list[Workload]:
    """The lab pods one object stands for: a Deployment's ``spec.replicas`` (default 1, at most
    ``MAX_REPLICAS``) pods ``<name>-<i>``, spread round-robin over ``nodes``; a bare Pod itself,
    on its ``spec.nodeName``. The Pods the lab's controllers create for replicas and ztunnels
    (label ``nodes.OWNED_BY``) mirror what is here already: none."""
    kind, namespace = obj.get("kind"), namespace_of(obj)
    if kind == "Pod":
        if lab_nodes.OWNED_BY in labels_of(obj):
            return []
        return [_workload(namespace, name_of(obj), meta(obj), spec(obj), node=str(spec(obj).get("nodeName") or ""))]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        template = spec(obj).get("template") or {}
        replicas = min(int(spec(obj).get("replicas", 1) or 0), MAX_REPLICAS)
        owner = f"{namespace}/{name_of(obj)}"
        return [
            _workload(
                namespace,
                f"{name_of(obj)}-{index}",
                template.get("metadata") or {},
                template.get("spec") or {},
                node=lab_nodes.replica_node(index, nodes),
                replica_of=owner,
            )
            for index in range(replicas)
        ]
    return []


def _service(obj: Obj) -> Service:
    ports = tuple(
        ServicePort(int(p["port"]), p.get("targetPort", p["port"]))
        for p in spec(obj).get("ports") or []
        if str(p.get("protocol", "TCP")) == "TCP"
    )
    selector = {str(k): str(v) for k, v in (spec(obj).get("selector") or {}).items()}
    return Service(namespace_of(obj), name_of(obj), labels_of(obj), selector, ports)


def _waypoint(obj: Obj) -> Waypoint | None:
    return (
        Waypoint(namespace_of(obj), name_of(obj), labels_of(obj).get(WAYPOINT_FOR, "service"))
        if runnable_waypoint(obj)
        else None
    )


def runnable_waypoint(obj: Obj) -> bool:
    """A Gateway of class istio-waypoint with a 15008/HBONE listener: one the lab runs an Envoy for.

    Semantics §2: other listeners do not unbind a waypoint (istiod marks only the odd listener
    ``Accepted=False``), so they do not stop the lab either (the lab used to require exactly one
    listener, and a generated Gateway with an extra HTTP listener never settled). A waypoint
    without a 15008 listener is bound yet unreachable: istiod still renders its pod, and the lab
    runs nothing in it, so ztunnel's HBONE to it fails closed as in a cluster.
    """
    listeners = spec(obj).get("listeners") or []
    return spec(obj).get("gatewayClassName") == WAYPOINT_CLASS and any(
        int(listener.get("port", 0)) == 15008 and listener.get("protocol") == "HBONE" for listener in listeners
    )


def _age(obj: Obj, position: int) -> tuple[str, int]:
    # Oldest wins (semantics §3); manifests without timestamps keep their file order.
    return (str(meta(obj).get("creationTimestamp") or ""), position)


def in_revision(obj: Obj, revision: str) -> bool:
    """Whether an istiod of ``revision`` reads ``obj`` (Istio's pkg/config/model.go
    ``LabelsInRevision``): an object without an ``istio.io/rev`` label always; an istiod with no
    revision ("") everything; otherwise only an object whose label is its revision. istiod filters
    PeerAuthentications and AuthorizationPolicies so (the ambient index's ``configFilter``, the
    CRD client), waypoint Gateways not (gateway/controller.go ``buildClient``)."""
    label = labels_of(obj).get(REVISION_LABEL)
    return label is None or not revision or label == revision


def matches(selector: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    return all(pod_labels.get(k) == v for k, v in selector.items())


class Mesh:
    """An index over one snapshot of objects, answering the questions the data plane asks.

    ``nodes`` are the lab's nodes (replicas spread over them). ``uncaptured_endpoint`` plants
    the fault of that name: None is off; otherwise, of every Deployment with two or more replicas
    (all of them for ``()``, else those whose ``namespace/name`` is listed), the last replica is
    not captured although its labels say ambient, as a pod that started before its node's
    istio-cni agent was ready (issue #13). ``uncaptured`` holds those pods' keys. ``revision``:
    the istiod's; PeerAuthentications and AuthorizationPolicies of another revision are left out
    (``in_revision``), as that istiod never hands them to ztunnel or a waypoint.
    """

    def __init__(
        self,
        objects: Iterable[Obj],
        *,
        nodes: Sequence[str] = lab_nodes.names(1),
        uncaptured_endpoint: Sequence[str] | None = None,
        revision: str = ISTIOD_REVISION,
    ) -> None:
        ordered = list(objects)
        self.revision = revision
        self.nodes = tuple(nodes)
        self.uncaptured: frozenset[str] = frozenset()
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.workloads: list[Workload] = []
        self.services: list[Service] = []
        self.waypoints: list[Waypoint] = []
        self.peer_authentications: list[Obj] = []
        self.authorization_policies: list[Obj] = []
        for obj in ordered:
            self._add(obj)
        position = {id(obj): index for index, obj in enumerate(ordered)}
        self.peer_authentications.sort(key=lambda o: _age(o, position[id(o)]))
        if uncaptured_endpoint is not None:
            self.uncaptured = self._uncaptured(set(uncaptured_endpoint))

    def _uncaptured(self, targets: set[str]) -> frozenset[str]:
        replicas: dict[str, list[Workload]] = {}
        for workload in self.workloads:
            if workload.replica_of and (not targets or workload.replica_of in targets):
                replicas.setdefault(workload.replica_of, []).append(workload)
        return frozenset(group[-1].key for group in replicas.values() if len(group) >= 2 and self.captured(group[-1]))

    def _add(self, obj: Obj) -> None:
        kind = obj.get("kind")
        if rendered_for_gateway(obj) is not None:
            # istiod's objects for a waypoint Gateway: the lab runs the waypoint (its Envoy) from
            # the Gateway itself; ``controllers`` mirrors its pod into istiod's Deployment.
            return
        if kind == "Namespace":
            self.namespace_labels[name_of(obj)] = labels_of(obj)
        elif kind == "Service":
            self.services.append(_service(obj))
        elif kind == "Gateway" and (waypoint := _waypoint(obj)) is not None:
            self.waypoints.append(waypoint)
        elif kind in ("PeerAuthentication", "AuthorizationPolicy") and not in_revision(obj, self.revision):
            return  # istiod of another revision's config: this istiod never reads it, its proxies never get it
        elif kind == "PeerAuthentication":
            self.peer_authentications.append(obj)
        elif kind == "AuthorizationPolicy":
            self.authorization_policies.append(obj)
        else:
            self.workloads.extend(workloads_of(obj, self.nodes))

    # --- enrollment (semantics §2) -------------------------------------------------------------

    def captured(self, workload: Workload) -> bool:
        """istio-cni's rule: pod label ambient, or namespace label ambient and pod label not none
        (and not a pod of the ``uncaptured-endpoint`` fault)."""
        if workload.waypoint or workload.sidecar or workload.host_network or workload.key in self.uncaptured:
            return False
        pod_mode = workload.labels.get(DATAPLANE_MODE)
        if pod_mode is not None:
            return pod_mode == "ambient"
        return self.namespace_labels.get(workload.namespace, {}).get(DATAPLANE_MODE) == "ambient"

    def waypoint_workloads(self) -> list[Workload]:
        return [Workload(w.namespace, w.name, w.name, {DATAPLANE_MODE: "none"}, waypoint=True) for w in self.waypoints]

    def all_workloads(self) -> list[Workload]:
        return [*self.workloads, *self.waypoint_workloads()]

    def waypoint_of(self, service: Service, ready: set[str]) -> Waypoint | None:
        """The waypoint service-addressed traffic goes through, or None (also for a typo, §4.7)."""
        ns_labels = self.namespace_labels.get(service.namespace, {})
        name = service.labels.get(USE_WAYPOINT, ns_labels.get(USE_WAYPOINT))
        if not name or name == "none":
            return None
        namespace = service.labels.get(USE_WAYPOINT_NAMESPACE) or ns_labels.get(USE_WAYPOINT_NAMESPACE)
        key = f"{namespace or service.namespace}/{name}"
        for waypoint in self.waypoints:
            if waypoint.key == key and key in ready and waypoint.waypoint_for in ("service", "all"):
                return waypoint
        return None

    def endpoints(self, service: Service, port: ServicePort) -> list[tuple[Workload, int]]:
        """Backing pods and the container port each receives (named target ports resolved per pod)."""
        if not service.selector:
            return []
        found = []
        for workload in self.workloads:
            if workload.namespace != service.namespace or not matches(service.selector, workload.labels):
                continue
            target = port.target
            if isinstance(target, int) or str(target).isdigit():
                found.append((workload, int(target)))
            elif str(target) in workload.ports:
                found.append((workload, workload.ports[str(target)]))
        return found

    # --- PeerAuthentication (semantics §3) -----------------------------------------------------

    def mtls_mode(self, workload: Workload, port: int) -> str:
        """STRICT, PERMISSIVE or DISABLE for plaintext arriving at ``port`` (a container port)."""
        mode = "PERMISSIVE"
        for scope in (self._mesh_pa(), self._namespace_pa(workload)):
            if scope is not None:
                mode = _pa_mode(scope, mode)
        selected = self._workload_pa(workload)
        if selected is not None:
            mode = _pa_mode(selected, mode)
            port_level = (spec(selected).get("portLevelMtls") or {}).get(str(port)) or (
                spec(selected).get("portLevelMtls") or {}
            ).get(port)
            if isinstance(port_level, dict):
                mode = _mode_value(port_level.get("mode"), mode)
        return mode

    def _mesh_pa(self) -> Obj | None:
        return next(
            (p for p in self.peer_authentications if namespace_of(p) == ROOT_NAMESPACE and not _has_selector(p)), None
        )

    def _namespace_pa(self, workload: Workload) -> Obj | None:
        if workload.namespace == ROOT_NAMESPACE:
            return None
        return next(
            (p for p in self.peer_authentications if namespace_of(p) == workload.namespace and not _has_selector(p)),
            None,
        )

    def _workload_pa(self, workload: Workload) -> Obj | None:
        # A selector policy in the root namespace is ignored in ambient (semantics §3).
        for policy in self.peer_authentications:
            if namespace_of(policy) != workload.namespace or namespace_of(policy) == ROOT_NAMESPACE:
                continue
            if _has_selector(policy) and matches(_selector(policy), workload.labels):
                return policy
        return None

    # --- AuthorizationPolicy binding (semantics §4.1) ------------------------------------------

    def ztunnel_policies(self, workload: Workload) -> list[Obj]:
        """Policies the destination ztunnel enforces for this pod: selector or namespace scope."""
        bound = []
        for policy in self._active_policies():
            if spec(policy).get("targetRefs") or spec(policy).get("targetRef"):
                continue
            namespace = namespace_of(policy)
            if namespace not in (workload.namespace, ROOT_NAMESPACE):
                continue
            if not _has_selector(policy) or matches(_selector(policy), workload.labels):
                bound.append(policy)
        return bound

    def waypoint_policies(self, waypoint: Waypoint, service: Service) -> list[Obj]:
        """targetRefs policies the waypoint enforces for traffic to ``service``."""
        return [p for p in self._active_policies() if _targets(p, waypoint, service)]

    def _active_policies(self) -> list[Obj]:
        # ztunnel and waypoints both skip dry-run; CUSTOM and AUDIT are ignored (fail-open, §4.3).
        return [
            p
            for p in self.authorization_policies
            if annotations_of(p).get(DRY_RUN) != "true" and str(spec(p).get("action") or "ALLOW") in ("ALLOW", "DENY")
        ]

    def service(self, key: str) -> Service | None:
        return next((s for s in self.services if s.key == key), None)


def _targets(policy: Obj, waypoint: Waypoint, service: Service) -> bool:
    refs = list(spec(policy).get("targetRefs") or [])
    if spec(policy).get("targetRef"):
        refs.append(spec(policy)["targetRef"])
    namespace = namespace_of(policy)
    for ref in refs:
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "Gateway" and namespace == waypoint.namespace and name == waypoint.name:
            return True
        if kind == "Service" and namespace == service.namespace and name == service.name:
            return True
        if kind == "GatewayClass" and namespace == ROOT_NAMESPACE and name == WAYPOINT_CLASS:
            return True
    return False


def _has_selector(policy: Obj) -> bool:
    return bool(_selector(policy))


def _selector(policy: Obj) -> dict[str, str]:
    selector = spec(policy).get("selector") or {}
    return {str(k): str(v) for k, v in (selector.get("matchLabels") or {}).items()}


def _mode_value(value: Any, inherited: str) -> str:
    text = str(value or "UNSET").upper()
    return inherited if text == "UNSET" else text


def _pa_mode(policy: Obj, inherited: str) -> str:
    return _mode_value((spec(policy).get("mtls") or {}).get("mode"), inherited)
