"""Envoy configuration for the lab's ztunnel and waypoint emulation (pure: objects in, dicts out).

Role: ``lab.py`` asks for the listeners and clusters of one captured pod's ztunnel or of one
waypoint and writes them to the files that proxy watches (``proxy.py``). Layout, mirroring
ztunnel's in-pod listeners:

ztunnel (one Envoy per captured pod, in the pod's network namespace, uid 1337):

* ``outbound`` :15001 - iptables REDIRECTs the app's outbound TCP here; ``original_dst`` recovers
  the destination. One filter chain per Service VIP:port and per pod IP:port. A Service that
  resolves to a ready waypoint goes to the waypoint's :15008 with this pod's certificate and the
  SNI ``outbound_.<port>_._.<service host>``; everything else goes to each backend pod: mTLS to
  its :15008 when it is captured (HBONE stand-in), plaintext to the container port otherwise.
* ``inbound_hbone`` :15008 - mTLS with a client certificate from the lab CA. The destination
  container port travels in the SNI ``outbound_.<port>_._.hbone.cluster.local`` (Envoy's
  filter_chain_match on server_names picks the chain; this replaces HBONE's CONNECT authority).
  Each chain runs the pod's AuthorizationPolicies as network RBAC on the peer's SPIFFE id, then
  proxies to 127.0.0.1:<port>. A deny closes the accepted connection, as ztunnel does (§1.1).
* ``inbound_plaintext`` :15006 - iptables REDIRECTs plaintext inbound here. STRICT (for that
  container port) denies every connection; otherwise the same RBAC applies, with no principal.

waypoint (one Envoy per istio-waypoint Gateway, in its own pod, identity sa/<gateway name>):

* ``waypoint`` :15008 - mTLS terminating the caller's connection, so HTTP RBAC sees the original
  caller's SPIFFE id as the TLS peer. One chain per enrolled Service port (SNI as above), an HTTP
  connection manager named ``istio-envoy`` (adds ``x-request-id`` and, from the router,
  ``x-envoy-upstream-service-time``), the targetRefs policies as HTTP RBAC, then mTLS to the backend
  pods with the waypoint's own certificate (so the identity pitfall of §4.5 reproduces).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from testrigs.lab import rbac
from testrigs.lab.mesh import Mesh, Service, ServicePort, Waypoint, Workload

Config = dict[str, Any]

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
_TYPE = "type.googleapis.com/envoy"
_TLS = f"{_TYPE}.extensions.transport_sockets.tls.v3"
_TCP_PROXY = f"{_TYPE}.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_HCM = f"{_TYPE}.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = f"{_TYPE}.extensions.filters.http.router.v3.Router"


@dataclass(frozen=True)
class Faults:
    """Planted divergences between config and data plane (see lab.FAULTS)."""

    strict_not_enforced: bool = False
    waypoint_bypassed: bool = False
    header_not_enforced: bool = False
    l4_allow_all: bool = False


@dataclass(frozen=True)
class Certs:
    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class World:
    """Everything a render needs besides the proxy's own pod."""

    mesh: Mesh
    pod_ips: Mapping[str, str]  # workload key -> IP
    vips: Mapping[str, str]  # service key -> VIP
    ready_waypoints: frozenset[str]  # waypoint keys whose proxy is serving
    faults: Faults


@dataclass(frozen=True)
class Resources:
    listeners: list[Config]
    clusters: list[Config]


def hbone_sni(port: int) -> str:
    return f"outbound_.{port}_._.hbone.cluster.local"


def service_sni(service: Service, port: int) -> str:
    return f"outbound_.{port}_._.{service.hostname}"


# --- ztunnel --------------------------------------------------------------------------------------


def ztunnel(world: World, pod: Workload, certs: Certs) -> Resources:
    """Listeners and clusters of the ztunnel emulation for one captured pod."""
    clusters: dict[str, Config] = {"passthrough": _passthrough_cluster()}
    chains = _service_chains(world, certs, clusters) + _pod_chains(world, certs, clusters)
    outbound = _listener("outbound", OUTBOUND_PORT, chains, [_original_dst()])
    outbound["default_filter_chain"] = {"filters": [_tcp_proxy("passthrough", "passthrough")]}
    plaintext = [_inbound_chain(world, pod, port, clusters, tls=None) for port in pod.port_numbers]
    hbone = [_inbound_chain(world, pod, port, clusters, tls=certs) for port in pod.port_numbers]
    listeners = [outbound]
    if pod.port_numbers:  # Envoy refuses a listener without chains; a closed port refuses anyway
        listeners.append(_listener("inbound_plaintext", INBOUND_PLAINTEXT_PORT, plaintext, [_original_dst()]))
        listeners.append(_listener("inbound_hbone", HBONE_PORT, hbone, [_tls_inspector()]))
    return Resources(listeners, sorted(clusters.values(), key=lambda c: str(c["name"])))


def _service_chains(world: World, certs: Certs, clusters: dict[str, Config]) -> list[Config]:
    chains = []
    for service in world.mesh.services:
        vip = world.vips.get(service.key)
        if vip is None:
            continue
        waypoint = (
            None if world.faults.waypoint_bypassed else world.mesh.waypoint_of(service, set(world.ready_waypoints))
        )
        for port in service.ports:
            if waypoint is not None:
                names = [_waypoint_cluster(world, waypoint, service, port, certs=certs, clusters=clusters)]
            else:
                names = [
                    _pod_cluster(world, pod, target, certs, clusters)
                    for pod, target in world.mesh.endpoints(service, port)
                ]
            if names:
                chains.append(_outbound_chain(f"svc {service.key}:{port.port}", vip, port.port, names))
    return chains


def _pod_chains(world: World, certs: Certs, clusters: dict[str, Config]) -> list[Config]:
    chains = []
    for pod in world.mesh.workloads:
        ip = world.pod_ips.get(pod.key)
        for port in pod.port_numbers if ip else []:
            name = _pod_cluster(world, pod, port, certs, clusters)
            chains.append(_outbound_chain(f"pod {pod.key}:{port}", str(ip), port, [name]))
    return chains


def _outbound_chain(name: str, ip: str, port: int, clusters: list[str]) -> Config:
    match = {"prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}], "destination_port": port}
    return {"name": name, "filter_chain_match": match, "filters": [_tcp_proxy(name, *clusters)]}


def _pod_cluster(world: World, pod: Workload, port: int, certs: Certs, clusters: dict[str, Config]) -> str:
    """mTLS to the pod's :15008 when it is captured, plaintext to the port otherwise."""
    ip = world.pod_ips[pod.key]
    name = f"pod|{port}|{pod.name}.{pod.namespace}"
    if world.mesh.captured(pod):
        clusters[name] = _static_cluster(name, ip, HBONE_PORT, _upstream_tls(certs, hbone_sni(port)))
    else:
        clusters[name] = _static_cluster(name, ip, port)
    return name


def _waypoint_cluster(
    world: World, waypoint: Waypoint, service: Service, port: ServicePort, *, certs: Certs, clusters: dict[str, Config]
) -> str:
    name = f"waypoint|{port.port}|{service.name}.{service.namespace}|{waypoint.name}.{waypoint.namespace}"
    ip = world.pod_ips[waypoint.key]
    clusters[name] = _static_cluster(name, ip, HBONE_PORT, _upstream_tls(certs, service_sni(service, port.port)))
    return name


def _inbound_chain(world: World, pod: Workload, port: int, clusters: dict[str, Config], tls: Certs | None) -> Config:
    local = f"local|{port}"
    clusters[local] = _static_cluster(local, "127.0.0.1", port)
    ip = world.pod_ips.get(pod.key, "0.0.0.0")  # noqa: S104 - only compared against ipBlocks
    filters = (
        []
        if world.faults.l4_allow_all
        else rbac.network_filters(world.mesh.ztunnel_policies(pod), rbac.Target(port, ip))
    )
    name = f"{'hbone' if tls else 'plaintext'} {port}"
    chain: Config = {"name": name, "filters": [*filters, _tcp_proxy(name, local)]}
    if tls is None:
        chain["filter_chain_match"] = {"destination_port": port}
        strict = world.mesh.mtls_mode(pod, port) == "STRICT" and not world.faults.strict_not_enforced
        if strict:
            # ztunnel's synthetic istio_converted_static_strict: deny when the peer has no identity.
            chain["filters"] = [_deny_all("strict"), _tcp_proxy(name, local)]
    else:
        chain["filter_chain_match"] = {"server_names": [hbone_sni(port)]}
        chain["transport_socket"] = _downstream_tls(tls)
    return chain


def _deny_all(prefix: str) -> Config:
    config: Config = {"@type": f"{_TYPE}.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": prefix}
    config["rules"] = {"action": "ALLOW", "policies": {}}
    return {"name": "envoy.filters.network.rbac", "typed_config": config}


# --- waypoint ---------------------------------------------------------------------------------------


def waypoint(world: World, proxy: Waypoint, certs: Certs) -> Resources:
    """Listeners and clusters of one waypoint: a chain per enrolled Service port."""
    clusters: dict[str, Config] = {}
    chains = []
    ready = set(world.ready_waypoints) | {proxy.key}
    for service in world.mesh.services:
        if world.mesh.waypoint_of(service, ready) != proxy:
            continue
        for port in service.ports:
            endpoints = world.mesh.endpoints(service, port)
            names = [_pod_cluster(world, pod, target, certs, clusters) for pod, target in endpoints]
            target = endpoints[0][1] if endpoints else port.port
            target_spec = rbac.Target(target, world.vips.get(service.key, "0.0.0.0"), world.faults.header_not_enforced)  # noqa: S104
            filters = rbac.http_filters(world.mesh.waypoint_policies(proxy, service), target_spec)
            chains.append(_waypoint_chain(service, port, names, filters, certs))
    # A waypoint no Service uses yet serves nothing (Envoy refuses a listener without chains).
    listeners = [_listener("waypoint", HBONE_PORT, chains, [_tls_inspector()])] if chains else []
    return Resources(listeners, sorted(clusters.values(), key=lambda c: str(c["name"])))


def _waypoint_chain(
    service: Service, port: ServicePort, clusters: list[str], filters: list[Config], certs: Certs
) -> Config:
    if clusters:
        weighted = [{"name": name, "weight": 1} for name in clusters]
        action: Config = (
            {"weighted_clusters": {"clusters": weighted}} if len(clusters) > 1 else {"cluster": clusters[0]}
        )
        route: Config = {"match": {"prefix": "/"}, "route": action}
    else:
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": "no healthy upstream"}},
        }
    manager = {
        "@type": _HCM,
        "stat_prefix": f"waypoint_{service.name}_{port.port}",
        "server_name": "istio-envoy",  # what Istio's proxies call themselves (§1.3)
        "route_config": {"virtual_hosts": [{"name": service.hostname, "domains": ["*"], "routes": [route]}]},
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": f"{service.key}:{port.port}",
        "filter_chain_match": {"server_names": [service_sni(service, port.port)]},
        "transport_socket": _downstream_tls(certs),
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
    }


# --- building blocks --------------------------------------------------------------------------------


def _listener(name: str, port: int, chains: list[Config], listener_filters: list[Config]) -> Config:
    return {
        "@type": f"{_TYPE}.config.listener.v3.Listener",
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},  # noqa: S104 - pod netns
        "listener_filters": listener_filters,
        "filter_chains": chains,
    }


def _original_dst() -> Config:
    return {
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": f"{_TYPE}.extensions.filters.listener.original_dst.v3.OriginalDst"},
    }


def _tls_inspector() -> Config:
    return {
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": f"{_TYPE}.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
    }


def _tcp_proxy(stat: str, *clusters: str) -> Config:
    config: Config = {"@type": _TCP_PROXY, "stat_prefix": stat.replace(" ", "_")}
    if len(clusters) == 1:
        config["cluster"] = clusters[0]
    else:
        config["weighted_clusters"] = {"clusters": [{"name": name, "weight": 1} for name in clusters]}
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def _static_cluster(name: str, ip: str, port: int, transport: Config | None = None) -> Config:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
    cluster: Config = {
        "@type": f"{_TYPE}.config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if transport is not None:
        cluster["transport_socket"] = transport
    return cluster


def _passthrough_cluster() -> Config:
    return {
        "@type": f"{_TYPE}.config.cluster.v3.Cluster",
        "name": "passthrough",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
    }


def _common_tls(certs: Certs) -> Config:
    return {
        "tls_certificates": [{"certificate_chain": {"filename": certs.cert}, "private_key": {"filename": certs.key}}],
        "validation_context": {"trusted_ca": {"filename": certs.ca}},
    }


def _upstream_tls(certs: Certs, sni: str) -> Config:
    context = {"@type": f"{_TLS}.UpstreamTlsContext", "sni": sni, "common_tls_context": _common_tls(certs)}
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _downstream_tls(certs: Certs) -> Config:
    context = {
        "@type": f"{_TLS}.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(certs),
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}
