"""The immutable snapshot of cluster state that every check reads.

Both the manifest reader and the live cluster reader produce a ``Snapshot`` (via
``auditor.core.decode``); checks never see raw Kubernetes dicts. ``SnapshotIndex`` adds the
lookups checks need (by name, by namespace, label-selector candidates) in near-linear time.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Labels = Mapping[str, str]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Condition:
    """One entry of an object's ``status.conditions``: ``type`` (e.g. ``Accepted``, ``Programmed``), ``status``
    (``"True"``, ``"False"`` or ``"Unknown"``, as the API spells it), ``reason`` and ``message`` (free text).
    """

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """Identity and provenance of an object; ``source`` is ``file#doc`` or ``cluster``."""

    kind: str
    name: str
    namespace: str = ""
    labels: Labels = field(default_factory=dict)
    annotations: Labels = field(default_factory=dict)
    creation_timestamp: str | None = None
    source: str = ""

    @property
    def ref(self) -> str:
        """``"Kind namespace/name"``, or ``"Kind name"`` for a cluster-scoped object (names it in findings).

        Never raises.
        """
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    @property
    def key(self) -> str:
        """``"namespace/name"`` (``"/name"`` when cluster-scoped): the lookup key of ``SnapshotIndex``. Never raises."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Namespace:
    """A Namespace; its labels (``meta.labels``) carry ``istio.io/dataplane-mode`` and ``istio.io/use-waypoint``."""

    meta: ObjectMeta


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A ServiceAccount: the identity in a workload's SPIFFE principal (``<td>/ns/<ns>/sa/<name>``)."""

    meta: ObjectMeta


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of a Service's ``spec.ports``: ``port`` (the Service port number), ``target_port`` (a number, or
    the name of a container port), ``name``, ``protocol`` (``TCP``, ``UDP`` or ``SCTP``) and ``app_protocol``
    (``appProtocol``, ``""`` when absent; Istio reads the application protocol from it before the name).
    """

    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    """A Service: ``selector`` is ``spec.selector`` (``None`` when absent: the endpoints are then managed by
    hand), ``ports`` its ``spec.ports`` and ``conditions`` its ``status.conditions``.
    """

    meta: ObjectMeta
    selector: Labels | None
    ports: tuple[ServicePort, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """One entry of a container's ``ports``: ``container_port`` (a number) and its optional ``name``."""

    container_port: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Container:
    """One container (or init container) of a pod spec: its ``name``, declared ``ports`` and ``image``."""

    name: str
    ports: tuple[ContainerPort, ...] = ()
    image: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod, or the pod template of a controller (Deployment, Job, ...), as the mesh sees it.

    ``meta`` is the owning object (a Pod for real pods); ``is_pod`` tells real pods, which
    carry istio-cni's redirection annotation on a live cluster, from templates, which never do.
    """

    meta: ObjectMeta
    pod_labels: Labels
    pod_annotations: Labels
    service_account: str
    containers: tuple[Container, ...] = ()
    init_containers: tuple[Container, ...] = ()
    host_network: bool = False
    is_pod: bool = False
    # Real pods on a live cluster only: the node that runs it (spec.nodeName) and its Ready
    # condition (None: no status, e.g. a manifest file or a template).
    node_name: str = ""
    ready: bool | None = None
    pod_ip: str = ""  # status.podIP

    def container_port(self, name: str) -> int | None:
        """The number of the container port called ``name`` in any container or init container, else None.

        Resolves a Service's named ``targetPort``. Never raises.
        """
        for container in self.containers + self.init_containers:
            for port in container.ports:
                if port.name == name:
                    return port.container_port
        return None


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """A PeerAuthentication: ``selector`` is ``selector.matchLabels`` (``None``: namespace- or mesh-wide),
    ``mode`` the ``mtls.mode`` (``None`` when ``mtls`` is absent) and
    ``port_level`` maps a port number to its ``portLevelMtls`` mode.
    """

    meta: ObjectMeta
    selector: Labels | None
    mode: str | None
    port_level: Mapping[int, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthzSource:
    """One ``from.source`` of an AuthorizationPolicy rule: each field is the list of the same name in Istio's
    ``security/v1beta1`` ``Source`` (principals are SPIFFE ids without ``spiffe://``, IP blocks are CIDRs or
    addresses). An empty tuple means the field was absent.
    """

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    # Istio 1.31 (security/v1 Source.trustDomains): the caller's SPIFFE trust domain.
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzOperation:
    """One ``to.operation`` of an AuthorizationPolicy rule: the lists of Istio's ``security/v1beta1``
    ``Operation`` (ports as strings, as the API carries them). An empty tuple means the field was absent.
    """

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzCondition:
    """One ``when`` condition of an AuthorizationPolicy rule: ``key`` (e.g. ``source.ip``) with its ``values``
    and ``notValues``.
    """

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """One rule of an AuthorizationPolicy: ``from`` sources, ``to`` operations and ``when`` conditions (all must
    match; an empty tuple matches anything, as in Istio).
    """

    sources: tuple[AuthzSource, ...] = ()
    operations: tuple[AuthzOperation, ...] = ()
    conditions: tuple[AuthzCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class TargetRef:
    """One ``targetRefs`` entry of a policy: ``kind`` (``Service``, ``Gateway``, ``ServiceEntry``...), ``name``
    and API ``group`` (``""`` for the core group).
    """

    kind: str
    name: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """``rules is None`` means the field was absent (an ALLOW then matches nothing)."""

    meta: ObjectMeta
    action: str
    selector: Labels | None
    target_refs: tuple[TargetRef, ...] = ()
    rules: tuple[AuthzRule, ...] = ()
    provider: str = ""
    conditions: tuple[Condition, ...] = ()

    @property
    def dry_run(self) -> bool:
        """True when the ``istio.io/dry-run`` annotation is ``"true"`` (any case): Istio then logs the policy's
        decision but does not enforce it. Never raises.
        """
        return self.meta.annotations.get("istio.io/dry-run", "").lower() == "true"


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener of a Gateway: ``name``, ``port`` (number), ``protocol`` (``HTTP``, ``HBONE``...) and who may
    attach routes (``allowedRoutes.namespaces.from``: ``Same``, ``All`` or ``Selector``).
    """

    name: str
    port: int
    protocol: str
    allowed_routes_from: str = "Same"
    # allowedRoutes.namespaces.selector.matchLabels (for ``from: Selector``); ``None`` when the
    # selector also has matchExpressions, which the model does not evaluate.
    allowed_routes_selector: Labels | None = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Gateway:
    """A Gateway API Gateway (a waypoint when its class is ``istio-waypoint``): ``class_name`` is
    ``spec.gatewayClassName``; ``addresses`` and ``conditions`` come from its status, and ``has_status``
    tells whether it had any (a manifest file has none).
    """

    meta: ObjectMeta
    class_name: str
    listeners: tuple[Listener, ...] = ()
    addresses: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    has_status: bool = False


@dataclass(frozen=True, slots=True)
class GatewayClass:
    """A GatewayClass: ``controller_name`` is ``spec.controllerName``."""

    meta: ObjectMeta
    controller_name: str


@dataclass(frozen=True, slots=True)
class ParentRef:
    """One ``parentRefs`` entry of a route: the ``kind`` (default ``Gateway``), ``name``, ``namespace``
    (default: the route's own) and API ``group`` of what it attaches to.
    """

    kind: str
    name: str
    namespace: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """A Gateway API HTTPRoute; only its ``parent_refs`` matter to the checks."""

    meta: ObjectMeta
    parent_refs: tuple[ParentRef, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """An Istio ServiceEntry: its ``hosts`` (DNS names) from ``spec.hosts``."""

    meta: ObjectMeta
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One entry of an EndpointSlice's ``endpoints``: its ``addresses`` (pod IPs), the ``conditions``
    (``ready``/``serving``/``terminating``; ``None`` when absent, which the API says to read as ready and
    serving, and not terminating), the ``targetRef`` Pod (``"namespace/name"``, ``""`` when the entry names
    no Pod, e.g. a hand-written slice) and the ``nodeName`` (``""`` when absent).
    """

    addresses: tuple[str, ...]
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None
    pod: str = ""
    node_name: str = ""


@dataclass(frozen=True, slots=True)
class SlicePort:
    """One entry of an EndpointSlice's ``ports``: the Service port's ``name`` (``""`` when unnamed) and the
    endpoints' ``port`` number (``None``: every port, which the API allows and probes cannot use).
    """

    name: str
    port: int | None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A ``discovery.k8s.io/v1`` EndpointSlice: ``service`` is its ``kubernetes.io/service-name`` label (``""``
    when it belongs to no Service), ``address_type`` ``IPv4``, ``IPv6`` or ``FQDN``.
    """

    meta: ObjectMeta
    service: str
    address_type: str
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()


@dataclass(frozen=True, slots=True)
class Backends:
    """The backends of a Service (``SnapshotIndex.backends``).

    ``workloads``: the pods (or, offline without pods, the pod templates) that receive its traffic;
    ``unknown``: serving EndpointSlice entries that name no Pod of the snapshot in the Service's
    namespace (a hand-written slice pointing at an IP outside the cluster's pods, or at a Pod the
    input does not hold), as ``"endpoint <address>"`` (plus ``" (Pod <ns>/<name>, not in the input)"``):
    nothing about them can be judged, so no promise that depends on the backend may pass;
    ``from_slices``: True when the Service's EndpointSlices were read (live or in manifest files).
    """

    workloads: tuple[Workload, ...] = ()
    unknown: tuple[str, ...] = ()
    from_slices: bool = False


@dataclass(frozen=True, slots=True)
class ReadProblem:
    """Something the reader could not read (a forbidden list, a missing CRD): never a pass."""

    kind: str
    resource: str
    message: str
    permission: str = ""


@dataclass(frozen=True, slots=True)
class ServingRevision:
    """The revision of the istiod that programs ztunnel and the waypoints, and how it was found.

    ``name``: the revision (never empty); ``source``: the object and field that said so, or why it
    is an assumption; ``assumed``: True when the input does not show it (the audit then reports
    every verdict that depends on it as INCONCLUSIVE: ``auditor.core.revision``).
    """

    name: str
    source: str
    assumed: bool = False


@dataclass(frozen=True, slots=True)
class IgnoredConfig:
    """An Istio config object istiod does not read: the object (an AuthorizationPolicy,
    PeerAuthentication, ServiceEntry or HTTPRoute) and its ``istio.io/rev`` ``label``."""

    obj: AuthorizationPolicy | PeerAuthentication | ServiceEntry | HTTPRoute
    label: str

    @property
    def meta(self) -> ObjectMeta:
        """The object's metadata. Never raises."""
        return self.obj.meta


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the checks may look at, frozen at one moment."""

    namespaces: tuple[Namespace, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()
    services: tuple[Service, ...] = ()
    workloads: tuple[Workload, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    gateway_classes: tuple[GatewayClass, ...] = ()
    http_routes: tuple[HTTPRoute, ...] = ()
    service_entries: tuple[ServiceEntry, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    problems: tuple[ReadProblem, ...] = ()
    live: bool = False
    # The revision whose istiod serves the mesh, and the Istio config objects it does not read
    # (left out of the fields above: auditor.core.revision).
    revision: ServingRevision = ServingRevision("default", "Istio's chart default", assumed=True)
    ignored_config: tuple[IgnoredConfig, ...] = ()


def selector_matches(selector: Labels, labels: Labels) -> bool:
    """True when every ``key: value`` of ``selector`` (a ``matchLabels``) is in ``labels``; an empty selector
    matches everything. Never raises.
    """
    return all(labels.get(key) == value for key, value in selector.items())


class SelectorIndex(Generic[T]):
    """Finds the objects whose ``matchLabels`` select a label set without scanning them all.

    Each selector is filed under one of its (key, value) pairs; a lookup visits only the buckets
    of the labels it has, which keeps 10k-Service audits near-linear (docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], list[tuple[Labels, T]]] = defaultdict(list)
        self._match_all: list[T] = []

    def add(self, selector: Labels, item: T) -> None:
        """Files ``item`` under ``selector`` (an empty selector matches every label set). Never raises."""
        if not selector:
            self._match_all.append(item)
            return
        key, value = min(selector.items())
        self._buckets[(key, value)].append((selector, item))

    def replaced(
        self,
        removed: Iterable[tuple[Labels, T]],
        added: Iterable[tuple[Labels, T]],
        owned: Callable[[T], bool],
        order: Callable[[T], Any],
        only: set[tuple[str, str]] | None = None,
    ) -> SelectorIndex[T]:
        """A copy where the ``owned`` items filed under the selectors of ``removed`` and ``added``
        are replaced by ``added``, each bucket kept in ``order`` (incremental audit, #16).
        ``only``: the buckets that can differ (the others are kept as they are)."""
        new: SelectorIndex[T] = SelectorIndex()
        new._match_all = list(self._match_all)
        new._buckets = self._buckets.copy()
        by_pair: dict[tuple[str, str], list[tuple[Labels, T]]] = defaultdict(list)
        for selector, item in added:
            if selector:
                by_pair[min(selector.items())].append((selector, item))
        pairs = {min(s.items()) for s, _ in removed if s} | by_pair.keys()
        for pair in pairs if only is None else pairs & only:
            kept = [(s, i) for s, i in self._buckets.get(pair, []) if not owned(i)]
            kept += by_pair.get(pair, [])
            if kept:
                new._buckets[pair] = sorted(kept, key=lambda entry: order(entry[1]))
            else:
                new._buckets.pop(pair, None)
        return new

    def select(self, labels: Labels) -> list[T]:
        """The items whose selector matches ``labels``: match-all items first, then in bucket order. Never raises."""
        found = list(self._match_all)
        for pair in labels.items():
            found.extend(i for s, i in self._buckets.get(pair, ()) if selector_matches(s, labels))
        return found


_LabelIndex = Mapping[tuple[str, str], list[Workload]]
_NAMESPACED_FIELDS = (
    "service_accounts",
    "services",
    "workloads",
    "peer_authentications",
    "authorization_policies",
    "gateways",
    "http_routes",
    "service_entries",
    "endpoint_slices",
    "ignored_config",  # sorted by namespace too (build_snapshot)
)
K = TypeVar("K")
V = TypeVar("V")


def _namespace_of(obj: object) -> str:
    meta: ObjectMeta = getattr(obj, "meta")  # noqa: B009 - every namespaced snapshot field has .meta
    return meta.namespace


def _splice(items: tuple[T, ...], namespace: str, source: tuple[T, ...]) -> tuple[T, ...]:
    """``items`` (sorted by namespace) with ``namespace``'s run replaced by ``source``'s."""
    low = bisect.bisect_left(items, namespace, key=_namespace_of)
    high = bisect.bisect_right(items, namespace, lo=low, key=_namespace_of)
    mine = tuple(o for o in source if _namespace_of(o) == namespace)
    return items[:low] + mine + items[high:]


def _replaced(old: dict[str, V], part: Mapping[str, V], namespace: str) -> dict[str, V]:
    """A per-namespace map with ``namespace``'s entry from ``part``; a new namespace goes where a
    fresh index (built in namespace order) would have it, an emptied one goes."""
    copy: dict[str, V] = old.copy()  # keeps a defaultdict's factory
    value = part.get(namespace)
    if not value:
        copy.pop(namespace, None)
    elif namespace in copy:
        copy[namespace] = value
    else:
        copy[namespace] = value
        ordered = sorted(copy.items())
        copy.clear()
        copy.update(ordered)
    return copy


def _rekeyed(old: dict[K, V], before: Mapping[K, V], after: Mapping[K, V], mine: Callable[[K], bool]) -> dict[K, V]:
    """A map with the entries ``mine`` selects replaced: those of ``before`` go, ``after``'s come."""
    copy: dict[K, V] = old.copy()
    for key in before:
        if mine(key):
            copy.pop(key, None)
    copy.update((key, value) for key, value in after.items() if mine(key) and value)
    return copy


# Istio's ztunnel chart labels the DaemonSet's pods app: ztunnel (manifests/charts/ztunnel).
ZTUNNEL_LABEL = ("app", "ztunnel")


@dataclass(frozen=True, slots=True)
class ZtunnelView:
    """Where ztunnel runs: ``deployed`` is True when a ztunnel pod or DaemonSet template (label ``app: ztunnel``)
    is in the snapshot; ``by_node`` maps a node name to the real ztunnel pods scheduled on it.
    """

    deployed: bool  # a ztunnel pod or DaemonSet template exists in the snapshot
    by_node: Mapping[str, tuple[Workload, ...]]


class SnapshotIndex:
    """Read-only lookups over a snapshot, built once per audit."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.namespaces = {n.meta.name: n for n in snapshot.namespaces}
        self.services = {s.meta.key: s for s in snapshot.services}
        self.services_by_ns: dict[str, list[Service]] = defaultdict(list)
        for service in snapshot.services:
            self.services_by_ns[service.meta.namespace].append(service)
        self.gateways = {g.meta.key: g for g in snapshot.gateways}
        self.gateway_classes = {c.meta.name: c for c in snapshot.gateway_classes}
        self.service_accounts = {a.meta.key for a in snapshot.service_accounts}
        self._slices = self._index_slices(snapshot.endpoint_slices)
        self._workloads = self._index_workloads(snapshot.workloads)
        self._workloads_for: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Workload, ...]] = {}
        self._backends: dict[str, Backends] = {}
        self._pods_by_ns: dict[str, dict[str, Workload]] | None = None
        self._ztunnels: ZtunnelView | None = None
        self.peer_auth_by_ns: dict[str, list[PeerAuthentication]] = defaultdict(list)
        self.peer_auth_wide: dict[str, list[PeerAuthentication]] = defaultdict(list)
        self.peer_auth_selected: dict[str, SelectorIndex[PeerAuthentication]] = defaultdict(SelectorIndex)
        for policy in snapshot.peer_authentications:
            self.peer_auth_by_ns[policy.meta.namespace].append(policy)
            if policy.selector:
                self.peer_auth_selected[policy.meta.namespace].add(policy.selector, policy)
            else:
                self.peer_auth_wide[policy.meta.namespace].append(policy)
        self.authz_by_ns: dict[str, list[AuthorizationPolicy]] = defaultdict(list)
        self.authz_by_selector: SelectorIndex[AuthorizationPolicy] = SelectorIndex()
        self.authz_by_ref_name: dict[str, list[AuthorizationPolicy]] = defaultdict(list)  # by targetRef name
        for authz in snapshot.authorization_policies:
            self.authz_by_ns[authz.meta.namespace].append(authz)
            if authz.selector:
                self.authz_by_selector.add(authz.selector, authz)
            for name in dict.fromkeys(ref.name for ref in authz.target_refs):
                self.authz_by_ref_name[name].append(authz)
        self.workloads_by_account: dict[tuple[str, str], list[Workload]] = defaultdict(list)
        self.workloads_by_ns: dict[str, list[Workload]] = defaultdict(list)
        self.accounts_by_ns: dict[str, set[str]] = defaultdict(set)
        for account in snapshot.service_accounts:
            self.accounts_by_ns[account.meta.namespace].add(account.meta.name)
        for workload in snapshot.workloads:
            self.workloads_by_account[(workload.meta.namespace, workload.service_account)].append(workload)
            self.workloads_by_ns[workload.meta.namespace].append(workload)
            self.accounts_by_ns[workload.meta.namespace].add(workload.service_account)
        # What the checks derive from one namespace's objects, keyed (what, namespace, ...): an
        # incremental audit's index keeps the entries of the namespaces that did not change.
        self.namespace_memo: dict[tuple[str, str, str], object] = {}
        # What the checks derive from one workload (and its namespace), keyed by id(workload),
        # kept with the workload itself so that an id reused by another object never matches.
        self.workload_memo: dict[int, tuple[Workload, object]] = {}
        # What the checks derive from the whole snapshot (keyed (what, ...)): it lives and dies
        # with this index, and an incremental audit's patched index starts without it.
        self.index_memo: dict[tuple[str, ...], object] = {}

    def replaced_namespace(self, namespace: str, before: SnapshotIndex, after: SnapshotIndex) -> SnapshotIndex:
        """This index with the namespaced objects of ``namespace`` as ``after`` has them (``before``
        has them as this index does): equal to an index built afresh from the changed snapshot, at
        the cost of that namespace plus copies of the top-level maps (the daemon's incremental
        audit, #16). ``before`` and ``after`` may index other namespaces too: only ``namespace``'s
        objects are taken. Needs this snapshot in ``build_snapshot`` order (sorted by namespace);
        Namespaces and GatewayClasses are kept (a change of those needs a fresh index)."""
        ns = namespace
        new = object.__new__(SnapshotIndex)
        fields: dict[str, Any] = {
            name: _splice(getattr(self.snapshot, name), ns, getattr(after.snapshot, name))
            for name in _NAMESPACED_FIELDS
        }
        new.snapshot = dataclasses.replace(self.snapshot, **fields)
        new.namespaces, new.gateway_classes = self.namespaces, self.gateway_classes
        new.services = _rekeyed(self.services, before.services, after.services, lambda key: key.startswith(ns + "/"))
        new.services_by_ns = _replaced(self.services_by_ns, after.services_by_ns, ns)
        new.gateways = _rekeyed(self.gateways, before.gateways, after.gateways, lambda key: key.startswith(ns + "/"))
        mine = {a for a in before.service_accounts if a.startswith(ns + "/")}
        new.service_accounts = (self.service_accounts - mine) | {
            a for a in after.service_accounts if a.startswith(ns + "/")
        }
        workloads = dict(self._workloads)
        for is_pod in (True, False):
            if (ns, is_pod) in after._workloads:
                workloads[(ns, is_pod)] = after._workloads[(ns, is_pod)]
            else:
                workloads.pop((ns, is_pod), None)
        new._workloads = workloads
        new._slices = _rekeyed(self._slices, before._slices, after._slices, lambda key: key[0] == ns)
        new._workloads_for = {}
        new._backends = {}
        new._pods_by_ns = None
        new._ztunnels = None  # rebuilt on first use from the new snapshot
        new.peer_auth_by_ns = _replaced(self.peer_auth_by_ns, after.peer_auth_by_ns, ns)
        new.peer_auth_wide = _replaced(self.peer_auth_wide, after.peer_auth_wide, ns)
        new.peer_auth_selected = _replaced(self.peer_auth_selected, after.peer_auth_selected, ns)
        new.authz_by_ns = _replaced(self.authz_by_ns, after.authz_by_ns, ns)
        # The namespace's policies that changed (unchanged ones are the very same objects).
        old_ids = {id(p) for p in before.authz_by_ns.get(ns, [])}
        new_ids = {id(p) for p in after.authz_by_ns.get(ns, [])}
        old_authz = [p for p in before.authz_by_ns.get(ns, []) if id(p) not in new_ids]
        new_authz = [p for p in after.authz_by_ns.get(ns, []) if id(p) not in old_ids]
        every_new = after.authz_by_ns.get(ns, [])
        new.authz_by_selector = self.authz_by_selector.replaced(
            [(p.selector, p) for p in old_authz if p.selector],
            [(p.selector, p) for p in every_new if p.selector],
            lambda p: p.meta.namespace == ns,
            lambda p: (p.meta.namespace, p.meta.name),
            only={min(p.selector.items()) for p in old_authz + new_authz if p.selector},
        )
        by_name = defaultdict(list, self.authz_by_ref_name)
        for name in {ref.name for p in old_authz + new_authz for ref in p.target_refs}:
            kept = [p for p in by_name.get(name, []) if p.meta.namespace != ns]
            kept += [p for p in every_new if any(ref.name == name for ref in p.target_refs)]
            if kept:
                by_name[name] = sorted(kept, key=lambda p: (p.meta.namespace, p.meta.name))
            else:
                by_name.pop(name, None)
        new.authz_by_ref_name = by_name
        new.workloads_by_account = _rekeyed(
            self.workloads_by_account, before.workloads_by_account, after.workloads_by_account, lambda key: key[0] == ns
        )
        new.accounts_by_ns = _replaced(self.accounts_by_ns, after.accounts_by_ns, ns)
        new.workloads_by_ns = _replaced(self.workloads_by_ns, after.workloads_by_ns, ns)
        new.namespace_memo = {key: value for key, value in self.namespace_memo.items() if key[1] != ns}
        memo = dict(self.workload_memo)
        for workload in before.snapshot.workloads:
            memo.pop(id(workload), None)
        new.workload_memo = memo
        new.index_memo = {}
        return new

    @staticmethod
    def _index_slices(slices: Iterable[EndpointSlice]) -> dict[tuple[str, str], tuple[EndpointSlice, ...]]:
        found: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for piece in slices:
            if piece.service:
                found[(piece.meta.namespace, piece.service)].append(piece)
        return {key: tuple(pieces) for key, pieces in found.items()}

    def slices_for(self, service: Service) -> tuple[EndpointSlice, ...]:
        """The EndpointSlices of ``service`` (label ``kubernetes.io/service-name``, same namespace), by name;
        ``()`` when it has none or the snapshot holds no slices (manifest files). Never raises."""
        return self._slices.get((service.meta.namespace, service.meta.name), ())

    @staticmethod
    def _index_workloads(workloads: Iterable[Workload]) -> dict[tuple[str, bool], _LabelIndex]:
        by_scope: dict[tuple[str, bool], _LabelIndex] = defaultdict(lambda: defaultdict(list))
        for workload in workloads:
            bucket = by_scope[(workload.meta.namespace, workload.is_pod)]
            for pair in workload.pod_labels.items():
                bucket[pair].append(workload)
        return dict(by_scope)

    def ztunnels(self) -> ZtunnelView:
        """Where ztunnel runs: its pods by node, and whether the cluster shows ztunnel at all
        (a pod or a DaemonSet template labelled ``app: ztunnel``). Built once per index."""
        if self._ztunnels is None:
            pods: dict[str, list[Workload]] = defaultdict(list)
            deployed = False
            for workload in self.snapshot.workloads:
                if workload.pod_labels.get(ZTUNNEL_LABEL[0]) != ZTUNNEL_LABEL[1]:
                    continue
                deployed = True
                if workload.is_pod and workload.node_name:
                    pods[workload.node_name].append(workload)
            self._ztunnels = ZtunnelView(deployed, {node: tuple(found) for node, found in pods.items()})
        return self._ztunnels

    def namespace_labels(self, namespace: str) -> Labels:
        """The labels of the namespace called ``namespace``; ``{}`` when the snapshot does not have it. Never raises."""
        found = self.namespaces.get(namespace)
        return found.meta.labels if found else {}

    def workloads_for(self, service: Service) -> tuple[Workload, ...]:
        """The workloads behind a Service: ``backends(service).workloads``. Never raises."""
        return self.backends(service).workloads

    def backends(self, service: Service) -> Backends:
        """The backends of ``service``, the one answer every check uses (``Backends``).

        With EndpointSlices for it in the snapshot (label ``kubernetes.io/service-name``; live, or in
        manifest files): every Pod an entry names that is not ``terminating`` (its ``targetRef``, else
        the Pod of the Service's namespace with the entry's address as ``status.podIP``), plus the pods
        the selector matches (the slice controller adds them once Ready); a serving entry (ready not
        false, not terminating) naming no Pod of the snapshot is ``unknown``. Without slices: the
        pods the selector matches, else its pod templates (offline); none without a selector.
        Kubernetes routes a Service's traffic to its slices' addresses whoever wrote them
        (discovery.k8s.io/v1; kube-proxy and istiod read slices, not selectors). Never raises."""
        key = service.meta.key
        cached = self._backends.get(key)
        if cached is not None:
            return cached
        selected = self._selected(service)
        slices = self.slices_for(service)
        if not slices:
            found = Backends(selected)
        else:
            pods = self._pods_in(service.meta.namespace)
            named: dict[str, Workload] = {}
            unknown: dict[str, None] = {}
            for piece in slices:
                for entry in piece.endpoints:
                    if entry.terminating is True or not entry.addresses:
                        continue
                    pod = self._pod_of(entry, service.meta.namespace, pods)
                    if pod is not None:
                        named.setdefault(pod.meta.key, pod)
                    elif entry.ready is not False:
                        missing = f" (Pod {entry.pod}, not in the input)" if entry.pod else ""
                        unknown[f"endpoint {entry.addresses[0]}{missing}"] = None
            for workload in selected:
                if workload.is_pod or not named:
                    named.setdefault(workload.meta.key, workload)
            found = Backends(tuple(named.values()), tuple(unknown), from_slices=True)
        self._backends[key] = found
        return found

    def _pods_in(self, namespace: str) -> dict[str, Workload]:
        # Pods by name and by IP (``ip:<address>``) per namespace, built once per index.
        if self._pods_by_ns is None:
            by_ns: dict[str, dict[str, Workload]] = defaultdict(dict)
            for workload in self.snapshot.workloads:
                if workload.is_pod:
                    by_ns[workload.meta.namespace][workload.meta.name] = workload
                    if workload.pod_ip:
                        by_ns[workload.meta.namespace].setdefault(f"ip:{workload.pod_ip}", workload)
            self._pods_by_ns = dict(by_ns)
        return self._pods_by_ns.get(namespace, {})

    @staticmethod
    def _pod_of(entry: SliceEndpoint, namespace: str, pods: Mapping[str, Workload]) -> Workload | None:
        # A Pod of another namespace is not looked up: the checks of a Service read only its own
        # namespace (the incremental audit relies on it), so such an entry stays unknown.
        if entry.pod:
            pod_ns, _, name = entry.pod.partition("/")
            return pods.get(name) if pod_ns == namespace else None
        return next((pods[f"ip:{a}"] for a in entry.addresses if f"ip:{a}" in pods), None)

    def _selected(self, service: Service) -> tuple[Workload, ...]:
        """The workloads ``service``'s selector matches: real pods when any exist, else pod templates."""
        if not service.selector:
            return ()
        # The answer depends only on the namespace and the selector; the checks ask several
        # times per Service, so it is computed once (#16).
        key = (service.meta.namespace, tuple(sorted(service.selector.items())))
        cached = self._workloads_for.get(key)
        if cached is not None:
            return cached
        found: tuple[Workload, ...] = ()
        for is_pod in (True, False):
            found = self._select(self._workloads.get((service.meta.namespace, is_pod), {}), service.selector)
            if found:
                break
        self._workloads_for[key] = found
        return found

    @staticmethod
    def _select(index: _LabelIndex, selector: Labels) -> tuple[Workload, ...]:
        # The smallest bucket among the selector's pairs bounds the work per Service.
        smallest = min((index.get(pair, []) for pair in selector.items()), key=len)
        return tuple(w for w in smallest if selector_matches(selector, w.pod_labels))
