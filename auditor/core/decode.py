"""Turns Kubernetes-shaped dicts (from YAML files or the API server) into snapshot models.

Pure and shared by the manifest reader and the live reader, so both build the same snapshot
from the same object. Wrong shapes raise ``DecodeError`` naming the field and the fix; the
caller adds where the object came from (file and document index, or the API resource).

Kinds the auditor does not read are ignored (``decode_object`` returns ``()``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from auditor.core import snapshot as s
from auditor.core.revision import serving_revision, split_by_revision

DEFAULT_NAMESPACE = "default"
_T = TypeVar("_T")
_CLUSTER_SCOPED = frozenset({"Namespace", "GatewayClass"})
_GATEWAY_API_GROUP = "gateway.networking.k8s.io"
_PROTOCOLS = ("TCP", "UDP", "SCTP")
# The label by which an EndpointSlice names its Service (discovery.k8s.io/v1, LabelServiceName).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class DecodeError(ValueError):
    """A document does not have the shape its kind requires."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; fix: {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix


Decoded = (
    s.Namespace
    | s.ServiceAccount
    | s.Service
    | s.Workload
    | s.PeerAuthentication
    | s.AuthorizationPolicy
    | s.Gateway
    | s.GatewayClass
    | s.HTTPRoute
    | s.ServiceEntry
    | s.EndpointSlice
)


class _Doc:
    """A document plus the path prefix used in error messages.

    A plain slotted class, not a frozen dataclass: one is made per mapping of every object, and
    a frozen dataclass's ``__init__`` costs several times more (#16).
    """

    __slots__ = ("_parent", "_part", "body")

    def __init__(self, body: Mapping[str, Any], path: str = "", parent: _Doc | None = None) -> None:
        self.body = body
        # The path is only read by error messages: a child keeps its parent and its own part
        # (``key``, ``key[index]``) and spells the path out when asked (#16).
        self._parent = parent
        self._part = path

    @property
    def path(self) -> str:
        """Where this mapping is in the object, as error messages name it (``spec.rules[0]``)."""
        return self._part if self._parent is None else self._parent.at(self._part)

    def at(self, key: str) -> str:
        path = self.path
        return f"{path}.{key}" if path else key

    def child(self, key: str) -> _Doc:
        return _Doc(self.mapping(key), key, self)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.body.get(key)
        if value is None:
            return {}
        if type(value) is not dict and not isinstance(value, Mapping):
            raise DecodeError(
                self.at(key),
                f"expected a mapping, got {_kind_of(value)}",
                "write it as key: value pairs",
            )
        return value

    def items(self, key: str) -> list[_Doc]:
        value = self.body.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise DecodeError(
                self.at(key),
                f"expected a list, got {_kind_of(value)}",
                "write it as a YAML list (- item)",
            )
        docs = []
        for index, item in enumerate(value):
            if type(item) is not dict and not isinstance(item, Mapping):
                raise DecodeError(
                    f"{self.at(key)}[{index}]",
                    f"expected a mapping, got {_kind_of(item)}",
                    "each item is key: value pairs",
                )
            docs.append(_Doc(item, f"{key}[{index}]", self))
        return docs

    def string(self, key: str, default: str = "") -> str:
        value = self.body.get(key)
        if type(value) is str:  # the common case first (#16)
            return value
        if value is None:  # absent or null
            return default
        # The API server refuses a number where its schema says string (core types' JSON decoding,
        # CRDs' structural schema), so the offline reader must too: kubectl sends 0x10 as 16.
        if not isinstance(value, str):
            raise DecodeError(
                self.at(key), f"expected a string, got {_kind_of(value)} (the API server refuses it)", "quote the value"
            )
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.body.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise DecodeError(
                self.at(key), f"expected a list of strings, got {_kind_of(value)}", 'write it as ["a", "b"]'
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise DecodeError(
                    f"{self.at(key)}[{index}]",
                    f"expected a string, got {_kind_of(item)} (the API server refuses it)",
                    "quote the value",
                )
        return tuple(value)

    def integer(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(
                self.at(key),
                f"expected an integer, got {_kind_of(value)}",
                "write a number such as 8080",
            )
        return value

    def flag(self, key: str) -> bool:
        value = self.body.get(key, False)
        if not isinstance(value, bool):
            raise DecodeError(
                self.at(key),
                f"expected true or false, got {_kind_of(value)}",
                "write true or false",
            )
        return value

    def labels(self, key: str) -> dict[str, str]:
        mapping = self.mapping(key)
        for label, value in mapping.items():
            if not isinstance(label, str) or not isinstance(value, str):
                raise DecodeError(
                    f"{self.at(key)}.{label}",
                    f"label and annotation values must be strings, got {_kind_of(value)} (the API server refuses it)",
                    "quote the value",
                )
        return dict(mapping)


def _kind_of(value: object) -> str:
    return "nothing" if value is None else type(value).__name__.replace("dict", "mapping").replace("str", "string")


def decode_object(body: Mapping[str, Any], *, source: str = "") -> tuple[Decoded, ...]:
    """Decode one Kubernetes object; ``List`` kinds are flattened; unknown kinds give ``()``."""
    doc = _Doc(body)
    kind = doc.string("kind")
    api_version = doc.string("apiVersion")
    if not kind or not api_version:
        missing = "kind" if not kind else "apiVersion"
        raise DecodeError(missing, "is missing", "every Kubernetes object names its apiVersion and kind")
    if kind.endswith("List") and "items" in body:
        return tuple(obj for item in doc.items("items") for obj in _decode_item(item, source))
    decoder = _DECODERS.get(kind)
    if decoder is None or not _group_matches(kind, api_version):
        return ()
    return decoder(doc, _meta(doc, kind, source))


def _decode_item(item: _Doc, source: str) -> tuple[Decoded, ...]:
    try:
        return decode_object(item.body, source=source)
    except DecodeError as error:
        raise DecodeError(f"{item.path}.{error.field}", error.problem, error.fix) from error


def _group_matches(kind: str, api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    if kind in {"Gateway", "GatewayClass", "HTTPRoute"}:
        # networking.istio.io also has a Gateway kind; only the Gateway API one defines waypoints.
        return group == _GATEWAY_API_GROUP
    if kind in {"PeerAuthentication", "AuthorizationPolicy"}:
        return group == "security.istio.io"
    if kind == "ServiceEntry":
        return group == "networking.istio.io"
    if kind == "EndpointSlice":
        return api_version == "discovery.k8s.io/v1"  # v1beta1 (removed in Kubernetes 1.25) had nodeName elsewhere
    return True


def _meta(doc: _Doc, kind: str, source: str) -> s.ObjectMeta:
    meta = doc.child("metadata")
    name = meta.string("name")
    if not name:
        raise DecodeError("metadata.name", "is missing", "give the object a name")
    namespace = "" if kind in _CLUSTER_SCOPED else meta.string("namespace") or DEFAULT_NAMESPACE
    return s.ObjectMeta(
        kind=kind,
        name=name,
        namespace=namespace,
        labels=meta.labels("labels"),
        annotations=meta.labels("annotations"),
        creation_timestamp=meta.string("creationTimestamp") or None,
        source=source,
    )


def _conditions(doc: _Doc) -> tuple[s.Condition, ...]:
    return tuple(
        s.Condition(
            type=c.string("type"),
            status=c.string("status"),
            reason=c.string("reason"),
            message=c.string("message"),
        )
        for c in doc.child("status").items("conditions")
    )


def _namespace(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    return (s.Namespace(meta),)


def _service_account(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    return (s.ServiceAccount(meta),)


def _service(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    spec = doc.child("spec")
    selector = spec.labels("selector") if spec.body.get("selector") is not None else None
    return (
        s.Service(
            meta=meta,
            selector=selector,
            ports=tuple(_service_port(p) for p in spec.items("ports")),
            conditions=_conditions(doc),
        ),
    )


def _service_port(doc: _Doc) -> s.ServicePort:
    port = doc.integer("port")
    if port is None:
        raise DecodeError(doc.at("port"), "is missing", "give every Service port a number")
    raw_target = doc.body.get("targetPort", port)
    target: int | str = (
        raw_target if isinstance(raw_target, int) and not isinstance(raw_target, bool) else doc.string("targetPort")
    )
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    return s.ServicePort(
        port=port,
        target_port=target,
        name=doc.string("name"),
        protocol=_enum(doc, "protocol", "TCP", _PROTOCOLS),
        app_protocol=doc.string("appProtocol"),
    )


def _enum(doc: _Doc, key: str, default: str, allowed: tuple[str, ...]) -> str:
    """A case-sensitive enum as the API server validates it (a null is the default)."""
    value = doc.string(key, default)
    if value not in allowed:
        raise DecodeError(
            doc.at(key),
            f"unknown value {value!r} (the API server refuses it)",
            f"use one of {', '.join(allowed)}, spelled exactly",
        )
    return value


def _pod(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    workload = _workload(meta, meta.labels, meta.annotations, doc.child("spec"), is_pod=True)
    ready = next((c.status for c in _conditions(doc) if c.type == "Ready"), None)
    node = doc.child("spec").string("nodeName")
    address = doc.child("status").string("podIP")
    if node or address or ready is not None:
        # A terminating pod is no endpoint (the EndpointSlice controller marks it not ready).
        terminating = bool(doc.child("metadata").body.get("deletionTimestamp"))
        is_ready = None if ready is None else ready == "True" and not terminating
        workload = dataclasses.replace(workload, node_name=node, ready=is_ready, pod_ip=address)
    return (workload,)


def _template_owner(*template_path: str) -> Callable[[_Doc, s.ObjectMeta], tuple[Decoded, ...]]:
    def decode(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
        node = doc
        for key in template_path:
            node = node.child(key)
        template_meta = node.child("metadata")
        return (
            _workload(
                meta,
                template_meta.labels("labels"),
                template_meta.labels("annotations"),
                node.child("spec"),
                is_pod=False,
            ),
        )

    return decode


def _workload(meta: s.ObjectMeta, labels: s.Labels, annotations: s.Labels, spec: _Doc, *, is_pod: bool) -> s.Workload:
    return s.Workload(
        meta=meta,
        pod_labels=labels,
        pod_annotations=annotations,
        service_account=spec.string("serviceAccountName") or spec.string("serviceAccount") or "default",
        containers=tuple(_container(c) for c in spec.items("containers")),
        init_containers=tuple(_container(c) for c in spec.items("initContainers")),
        host_network=spec.flag("hostNetwork"),
        is_pod=is_pod,
    )


def _container(doc: _Doc) -> s.Container:
    ports = []
    for port in doc.items("ports"):
        number = port.integer("containerPort")
        if number is None:
            raise DecodeError(port.at("containerPort"), "is missing", "give every container port a number")
        ports.append(s.ContainerPort(container_port=number, name=port.string("name")))
    return s.Container(name=doc.string("name"), ports=tuple(ports), image=doc.string("image"))


def _selector(spec: _Doc) -> dict[str, str] | None:
    if spec.body.get("selector") is None:
        return None
    return spec.child("selector").labels("matchLabels")


def _peer_authentication(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    spec = doc.child("spec")
    port_level: dict[int, str | None] = {}
    for key, value in spec.mapping("portLevelMtls").items():
        port = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdigit()) else None
        if port is None or not isinstance(value, Mapping):
            raise DecodeError(
                spec.at(f"portLevelMtls.{key}"),
                "expected a port number mapped to {mode: ...}",
                "write 8080: {mode: STRICT}",
            )
        port_level[port] = _mode(_Doc(value, spec.at(f"portLevelMtls.{key}")))
    mode = _mode(spec.child("mtls")) if spec.body.get("mtls") is not None else None
    return (s.PeerAuthentication(meta=meta, selector=_selector(spec), mode=mode, port_level=port_level),)


_MODES = frozenset({"UNSET", "DISABLE", "PERMISSIVE", "STRICT"})


def _mode(doc: _Doc) -> str | None:
    # The CRD's enum is case-sensitive: the API server refuses "strict" (and Istio's proto
    # parsing would too), so it is an error here rather than STRICT.
    mode = doc.string("mode", "UNSET")
    if mode not in _MODES:
        raise DecodeError(
            doc.at("mode"),
            f"unknown mode {mode!r} (the API server refuses it)",
            "use one of STRICT, PERMISSIVE, DISABLE, UNSET, in capitals",
        )
    return None if mode == "UNSET" else mode


_ACTIONS = frozenset({"ALLOW", "DENY", "AUDIT", "CUSTOM"})


def _authorization_policy(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    spec = doc.child("spec")
    action = spec.string("action", "ALLOW")  # case-sensitive, as the CRD's enum
    if action not in _ACTIONS:
        raise DecodeError(
            spec.at("action"),
            f"unknown action {action!r} (the API server refuses it)",
            "use one of ALLOW, DENY, AUDIT, CUSTOM, in capitals",
        )
    refs = [spec.child("targetRef")] if spec.body.get("targetRef") is not None else []
    refs += spec.items("targetRefs")
    return (
        s.AuthorizationPolicy(
            meta=meta,
            action=action,
            selector=_selector(spec),
            target_refs=tuple(
                s.TargetRef(kind=r.string("kind"), name=r.string("name"), group=r.string("group")) for r in refs
            ),
            rules=tuple(_rule(r) for r in spec.items("rules")),
            provider=spec.child("provider").string("name"),
            conditions=_conditions(doc),
        ),
    )


def _rule(doc: _Doc) -> s.AuthzRule:
    return s.AuthzRule(
        sources=tuple(_source(f.child("source")) for f in doc.items("from")),
        operations=tuple(_operation(t.child("operation")) for t in doc.items("to")),
        conditions=tuple(
            s.AuthzCondition(key=w.string("key"), values=w.strings("values"), not_values=w.strings("notValues"))
            for w in doc.items("when")
        ),
    )


def _source(doc: _Doc) -> s.AuthzSource:
    return s.AuthzSource(**{field: doc.strings(key) for field, key in _SOURCE_KEYS})


def _operation(doc: _Doc) -> s.AuthzOperation:
    return s.AuthzOperation(**{field: doc.strings(key) for field, key in _OPERATION_KEYS})


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


# (model field, YAML key) pairs, computed once rather than per source and operation.
_SOURCE_KEYS = tuple((field, _camel(field)) for field in s.AuthzSource.__dataclass_fields__)
_OPERATION_KEYS = tuple((field, _camel(field)) for field in s.AuthzOperation.__dataclass_fields__)


def _gateway(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    spec = doc.child("spec")
    status = doc.child("status")
    listeners = tuple(
        s.Listener(
            name=item.string("name"),
            port=item.integer("port") or 0,
            protocol=item.string("protocol"),
            allowed_routes_from=_enum(
                item.child("allowedRoutes").child("namespaces"), "from", "Same", ("All", "Selector", "Same")
            ),
            allowed_routes_selector=_namespace_selector(item.child("allowedRoutes").child("namespaces")),
        )
        for item in spec.items("listeners")
    )
    return (
        s.Gateway(
            meta=meta,
            class_name=spec.string("gatewayClassName"),
            listeners=listeners,
            addresses=tuple(a.string("value") for a in status.items("addresses")),
            conditions=_conditions(doc),
            has_status=bool(doc.body.get("status")),
        ),
    )


def _namespace_selector(namespaces: _Doc) -> dict[str, str] | None:
    selector = namespaces.child("selector")
    return None if selector.items("matchExpressions") else selector.labels("matchLabels")


def _gateway_class(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    return (s.GatewayClass(meta=meta, controller_name=doc.child("spec").string("controllerName")),)


def _http_route(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    refs = tuple(
        s.ParentRef(
            kind=r.string("kind", "Gateway"),
            name=r.string("name"),
            namespace=r.string("namespace") or meta.namespace,
            group=r.string("group"),
        )
        for r in doc.child("spec").items("parentRefs")
    )
    return (s.HTTPRoute(meta=meta, parent_refs=refs),)


def _service_entry(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    return (s.ServiceEntry(meta=meta, hosts=doc.child("spec").strings("hosts")),)


def _endpoint_slice(doc: _Doc, meta: s.ObjectMeta) -> tuple[Decoded, ...]:
    # discovery.k8s.io/v1 EndpointSlice: the endpoints the EndpointSlice controller (or a person,
    # for a Service without a selector) publishes; kube-proxy and istiod read the same.
    endpoints = []
    for entry in doc.items("endpoints"):
        conditions = entry.child("conditions")
        ref = entry.child("targetRef")
        pod = ""
        if ref.string("kind") == "Pod" and ref.string("name"):
            pod = f"{ref.string('namespace') or meta.namespace}/{ref.string('name')}"
        endpoints.append(
            s.SliceEndpoint(
                addresses=entry.strings("addresses"),
                ready=_optional_flag(conditions, "ready"),
                serving=_optional_flag(conditions, "serving"),
                terminating=_optional_flag(conditions, "terminating"),
                pod=pod,
                node_name=entry.string("nodeName"),
            )
        )
    ports = tuple(
        s.SlicePort(name=p.string("name"), port=p.integer("port"), protocol=_enum(p, "protocol", "TCP", _PROTOCOLS))
        for p in doc.items("ports")
    )
    return (
        s.EndpointSlice(
            meta=meta,
            service=meta.labels.get(SERVICE_NAME_LABEL, ""),
            address_type=doc.string("addressType", "IPv4"),
            endpoints=tuple(endpoints),
            ports=ports,
        ),
    )


def _optional_flag(doc: _Doc, key: str) -> bool | None:
    """A pointer-to-bool field: ``None`` when absent (its meaning is then the API's default)."""
    return None if doc.body.get(key) is None else doc.flag(key)


_DECODERS: Mapping[str, Callable[[_Doc, s.ObjectMeta], tuple[Decoded, ...]]] = {
    "Namespace": _namespace,
    "ServiceAccount": _service_account,
    "Service": _service,
    "Pod": _pod,
    "Deployment": _template_owner("spec", "template"),
    "StatefulSet": _template_owner("spec", "template"),
    "DaemonSet": _template_owner("spec", "template"),
    "ReplicaSet": _template_owner("spec", "template"),
    "ReplicationController": _template_owner("spec", "template"),
    "Job": _template_owner("spec", "template"),
    "CronJob": _template_owner("spec", "jobTemplate", "spec", "template"),
    "PeerAuthentication": _peer_authentication,
    "AuthorizationPolicy": _authorization_policy,
    "Gateway": _gateway,
    "GatewayClass": _gateway_class,
    "HTTPRoute": _http_route,
    "ServiceEntry": _service_entry,
    "EndpointSlice": _endpoint_slice,
}

READ_KINDS: Sequence[str] = tuple(_DECODERS)
_MODEL_CLASSES: tuple[type, ...] = (
    s.Namespace,
    s.ServiceAccount,
    s.Service,
    s.Workload,
    s.PeerAuthentication,
    s.AuthorizationPolicy,
    s.Gateway,
    s.GatewayClass,
    s.HTTPRoute,
    s.ServiceEntry,
    s.EndpointSlice,
)


def build_snapshot(
    objects: Sequence[Decoded], *, problems: Sequence[s.ReadProblem] = (), live: bool = False
) -> s.Snapshot:
    """Sort decoded objects into a snapshot, in a stable order (namespace, name)."""
    ordered = sorted(objects, key=lambda o: (o.meta.namespace, o.meta.name, o.meta.kind))
    # One pass (not one per kind); each type's model classes are found once, in stable order.
    buckets: dict[type, list[Any]] = {}
    classes: dict[type, list[list[Any]]] = {}
    for obj in ordered:
        kind = type(obj)
        targets = classes.get(kind)
        if targets is None:
            targets = classes[kind] = [buckets.setdefault(cls, []) for cls in _MODEL_CLASSES if issubclass(kind, cls)]
        for bucket in targets:
            bucket.append(obj)

    def of(cls: type[_T]) -> tuple[_T, ...]:
        return tuple(buckets.get(cls, ()))

    # Istio config objects labelled for another istiod revision are not read by the one serving
    # the mesh: they are left out, and listed (auditor.core.revision).
    workloads, gateways, namespaces = of(s.Workload), of(s.Gateway), of(s.Namespace)
    revision = serving_revision(workloads, gateways, namespaces)
    peer_authentications, ignored_peer = split_by_revision(of(s.PeerAuthentication), revision.name)
    authorization_policies, ignored_authz = split_by_revision(of(s.AuthorizationPolicy), revision.name)
    http_routes, ignored_routes = split_by_revision(of(s.HTTPRoute), revision.name)
    service_entries, ignored_entries = split_by_revision(of(s.ServiceEntry), revision.name)
    ignored = ignored_peer + ignored_authz + ignored_routes + ignored_entries
    return s.Snapshot(
        namespaces=namespaces,
        service_accounts=of(s.ServiceAccount),
        services=of(s.Service),
        workloads=workloads,
        peer_authentications=peer_authentications,
        authorization_policies=authorization_policies,
        gateways=gateways,
        gateway_classes=of(s.GatewayClass),
        http_routes=http_routes,
        service_entries=service_entries,
        endpoint_slices=of(s.EndpointSlice),
        problems=tuple(problems),
        live=live,
        revision=revision,
        ignored_config=tuple(sorted(ignored, key=lambda i: (i.meta.namespace, i.meta.name, i.meta.kind))),
    )
