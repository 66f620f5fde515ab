"""What istiod hands a waypoint proxy: its listeners over XDS, and Envoy's RBAC decision on them.

Role: the test-rig side of the waypoint translation oracle (tests/integration/
test_waypoint_oracle.py); the auditor never imports it. Three jobs:

* **Client.** ``build()`` builds ``waypointxds`` (tools/istio/waypointxds, a Go ADS client in the
  module pinned by tools/istio/go.mod) into ``<cache>/mesh-auditor/controlplane/istio-<version>-
  waypointxds-r<recipe>/bin``, with the flags of the Istio binaries. ``listeners()`` runs it
  against istiod's plaintext XDS port as one waypoint pod and returns the listeners (LDS, as
  Envoy's JSON).
* **The node.** ``waypoint_node()`` is the identity istiod recognises as a waypoint
  (pilot/pkg/model/context.go ``IsWaypointProxy``: node type ``waypoint`` and the label
  ``gateway.istio.io/managed=istio.io-mesh-controller``); istiod finds the Services the waypoint
  serves through the pod IP in the node id (``WaypointKeyForProxy`` uses the proxy's service
  targets, looked up by that IP), so the waypoint Deployment's pod must have an address.
* **Envoy's decision.** ``service_chains()`` picks the filter chain of each bound Service port
  (``inbound-vip|<port>|<protocol>|<hostname>`` of the listener ``main_internal``; the HTTP one
  where istiod sniffs the protocol, as an HTTP request would be sent there);
  ``chain_allows()`` evaluates its RBAC filters (network, then HTTP, in order) for one request,
  as Envoy's RBAC filter does (a DENY filter denies when a policy matches; an ALLOW filter with
  rules denies when none does; a LOG filter and shadow rules decide nothing). It covers the
  matchers Istio's authz builder emits (pilot/pkg/security/authz/model): and/or/not, any,
  authenticated principal and the ``io.istio.peer_principal`` filter state, headers (including
  ``:method`` and ``:authority``), url_path, destination_port; anything else (IP ranges, JWT
  metadata, path templates, ext_authz) makes the answer ``None`` or raises ``ValueError`` for a
  matcher not known here, never a guess.

Errors: ``controlplane.ControlPlaneError`` for build and client failures.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testrigs.devtools import controlplane, istio
from testrigs.devtools.controlplane import ControlPlaneError

CLIENT_PACKAGE = "./waypointxds"
CLIENT_SOURCE = ("waypointxds/main.go",)
# Bump when the build recipe changes: it is part of the cache directory's name.
BUILD_RECIPE = "1"
WAYPOINT_CONTROLLER = "istio.io-mesh-controller"  # constants.ManagedGatewayMeshControllerLabel
RBAC_HTTP = "envoy.filters.http.rbac"
RBAC_NETWORK = "envoy.filters.network.rbac"
HCM = "envoy.filters.network.http_connection_manager"
EXT_AUTHZ = ("envoy.filters.http.ext_authz", "envoy.filters.network.ext_authz")
PEER_PRINCIPAL = "io.istio.peer_principal"
Tri = bool | None


@dataclass(frozen=True)
class ClientBinary:
    """The built waypointxds client."""

    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / "waypointxds"

    def all(self) -> tuple[Path]:
        return (self.path,)


def _fingerprint() -> str:
    inputs = (*istio.BUILD_INPUTS, *CLIENT_SOURCE)
    return controlplane.recipe_fingerprint(BUILD_RECIPE, istio.GO_BUILD_TAGS, istio.ISTIO_MODULE_DIR, inputs)


def binary_dir(pins: istio.IstioPins | None = None) -> Path:
    pins = pins or istio.read_pins()
    return controlplane.cache_root() / f"istio-{pins.istio}-waypointxds-r{BUILD_RECIPE}" / "bin"


def build(pins: istio.IstioPins | None = None) -> ClientBinary:
    """Build the client into the cache unless it is there (seconds once the Istio build ran:
    the Go build cache holds every package it imports). Raises ControlPlaneError."""
    binary = ClientBinary(binary_dir(pins))
    fingerprint = _fingerprint()
    if controlplane.is_built(binary, fingerprint):
        return binary
    with controlplane._file_lock(binary.directory.parent / "build.lock"):
        if not controlplane.is_built(binary, fingerprint):
            _build_into(binary.directory, fingerprint)
    return binary


def _build_into(target: Path, fingerprint: str) -> None:
    go, env = istio._go(), istio._go_env()
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bin-", dir=target.parent))
    try:
        argv = [go, "build", "-trimpath", "-tags", istio.GO_BUILD_TAGS, "-ldflags", "-s -w"]
        controlplane._run_go(
            [*argv, "-o", str(staging / "waypointxds"), CLIENT_PACKAGE],
            env,
            "go build (waypointxds)",
            cwd=istio.ISTIO_MODULE_DIR,
        )
        info = {"fingerprint": fingerprint, "build_seconds": round(time.monotonic() - started)}
        (staging / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        controlplane._replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def waypoint_node(namespace: str, gateway: str, pod: str, pod_ip: str, service_account: str) -> dict[str, Any]:
    """The node a waypoint pod of Gateway ``namespace/gateway`` presents to istiod (what the
    chart's waypoint template gives istio-proxy: ``proxy waypoint``, the pod's labels, its
    namespace, cluster and service account)."""
    return {
        "id": f"waypoint~{pod_ip}~{pod}.{namespace}~{namespace}.svc.cluster.local",
        "metadata": {
            "NAMESPACE": namespace,
            "CLUSTER_ID": "Kubernetes",
            "ISTIO_VERSION": "1.31.0",
            "SERVICE_ACCOUNT": service_account,
            "WORKLOAD_NAME": gateway,
            "ENABLE_HBONE": "true",
            "LABELS": {
                "gateway.networking.k8s.io/gateway-name": gateway,
                "gateway.istio.io/managed": WAYPOINT_CONTROLLER,
            },
        },
    }


def listeners(binary: ClientBinary, grpc_port: int, node: Mapping[str, Any], timeout_s: float = 20.0) -> list[Any]:
    """The listeners istiod hands ``node`` (one LDS response), as Envoy JSON. Raises ControlPlaneError."""
    argv = [
        str(binary.path),
        f"-addr=127.0.0.1:{grpc_port}",
        f"-node={json.dumps(node)}",
        f"-timeout={timeout_s:.0f}s",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout_s + 10)
    if result.returncode != 0:
        raise ControlPlaneError(f"waypointxds failed: {result.stderr.strip()[:2000]}")
    found: list[Any] = json.loads(result.stdout)["listeners"]
    return found


def service_chains(found: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The filter chain of each bound Service port: ``(hostname, port) -> chain`` from the
    ``main_internal`` listener's ``inbound-vip|<port>|<protocol>|<hostname>`` chains."""
    chains: dict[tuple[str, int], dict[str, Any]] = {}
    for listener in found:
        if listener.get("name") != "main_internal":
            continue
        for chain in listener.get("filterChains") or []:
            parts = str(chain.get("name", "")).split("|")
            if len(parts) == 4 and parts[0] == "inbound-vip":
                key = (parts[3], int(parts[1]))
                # A port of unknown protocol has a TCP and an HTTP chain behind protocol
                # detection: an HTTP request reaches the HTTP one.
                if key not in chains or parts[2] == "http":
                    chains[key] = chain
    return chains


@dataclass(frozen=True)
class Witness:
    """One request through the waypoint: the caller's SPIFFE id (no ``spiffe://``), and the
    HTTP request (header names lower-case)."""

    principal: str
    method: str = "GET"
    path: str = "/"
    host: str = ""
    port: int = 80
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        if name == ":method":
            return self.method
        if name == ":path":
            return self.path
        if name in {":authority", "host"}:
            return self.host
        return self.headers.get(name)


def rbac_filters(chain: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The chain's authorization filters in the order Envoy runs them: ``(filter name, typed config)``."""
    found: list[tuple[str, dict[str, Any]]] = []
    for network in chain.get("filters") or []:
        name = network.get("name", "")
        if name in (RBAC_NETWORK, *EXT_AUTHZ):
            found.append((name, network.get("typedConfig") or {}))
        if name == HCM:
            for http in (network.get("typedConfig") or {}).get("httpFilters") or []:
                if http.get("name") in (RBAC_HTTP, *EXT_AUTHZ):
                    found.append((http["name"], http.get("typedConfig") or {}))
    return found


def chain_allows(chain: Mapping[str, Any], witness: Witness) -> Tri:
    """Whether the chain's RBAC filters let the request through: False as soon as one denies,
    None when an undecidable filter (ext_authz, an IP matcher) comes first, else True."""
    unknown = False
    for name, config in rbac_filters(chain):
        if name in EXT_AUTHZ:
            unknown = True  # an external authorizer decides (CUSTOM)
            continue
        verdict = _rbac_filter(config, witness, http=name == RBAC_HTTP)
        if verdict is False:
            return None if unknown else False
        if verdict is None:
            unknown = True
    return None if unknown else True


def _rbac_filter(config: Mapping[str, Any], witness: Witness, *, http: bool) -> Tri:
    rules = config.get("rules")
    if rules is None:  # only shadow rules: enforces nothing
        return True
    action = rules.get("action", "ALLOW")
    matched: Tri = False
    for policy in (rules.get("policies") or {}).values():
        result = _and(
            (
                _or(_permission(p, witness, http) for p in policy.get("permissions") or []),
                _or(_principal(p, witness, http) for p in policy.get("principals") or []),
            )
        )
        matched = _or((matched, result))
        if matched is True:
            break
    if action == "ALLOW":
        return matched
    if action == "DENY":
        return None if matched is None else not matched
    if action == "LOG":
        return True
    raise ValueError(f"RBAC action {action!r} not modelled here")


def _and(values: Iterable[Tri]) -> Tri:
    result: Tri = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def _or(values: Iterable[Tri]) -> Tri:
    result: Tri = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def _not(value: Tri) -> Tri:
    return None if value is None else not value


def _principal(p: Mapping[str, Any], w: Witness, http: bool) -> Tri:
    if p.get("any"):
        return True
    if "andIds" in p:
        return _and(_principal(x, w, http) for x in p["andIds"].get("ids") or [])
    if "orIds" in p:
        return _or(_principal(x, w, http) for x in p["orIds"].get("ids") or [])
    if "notId" in p:
        return _not(_principal(p["notId"], w, http))
    peer = "spiffe://" + w.principal
    if "authenticated" in p:
        matcher = (p["authenticated"] or {}).get("principalName")
        return True if matcher is None else string_match(matcher, peer)
    if "filterState" in p:
        state = p["filterState"]
        if state.get("key") != PEER_PRINCIPAL or "stringMatch" not in state:
            raise ValueError(f"filter state matcher {state} not modelled here")
        return string_match(state["stringMatch"], peer)
    if "header" in p:
        return header_match(p["header"], w) if http else False
    if {"directRemoteIp", "remoteIp", "sourceIp"} & p.keys():
        return None  # the witnesses carry no address
    if "metadata" in p:
        return _jwt_metadata(p["metadata"])
    raise ValueError(f"RBAC principal {sorted(p)} not modelled here")


def _jwt_metadata(metadata: Mapping[str, Any]) -> Tri:
    # Istio matches JWT claims / request principals in the jwt_authn filter's metadata; the
    # witnesses carry no JWT, so a positive matcher there does not match.
    if metadata.get("filter") in {"istio_authn", "envoy.filters.http.jwt_authn"}:
        return bool(metadata.get("invert", False))
    raise ValueError(f"metadata matcher {metadata} not modelled here")


def _permission(p: Mapping[str, Any], w: Witness, http: bool) -> Tri:
    if p.get("any"):
        return True
    if "andRules" in p:
        return _and(_permission(x, w, http) for x in p["andRules"].get("rules") or [])
    if "orRules" in p:
        return _or(_permission(x, w, http) for x in p["orRules"].get("rules") or [])
    if "notRule" in p:
        return _not(_permission(p["notRule"], w, http))
    if "destinationPort" in p:
        return int(p["destinationPort"]) == w.port
    if "header" in p:
        return header_match(p["header"], w) if http else False
    if "urlPath" in p:
        if not http:
            return False
        path = w.path.split("?", 1)[0]
        return string_match(p["urlPath"]["path"], path)
    if {"destinationIp", "requestedServerName", "uriTemplate"} & p.keys():
        return None
    if "metadata" in p:
        return _jwt_metadata(p["metadata"])
    raise ValueError(f"RBAC permission {sorted(p)} not modelled here")


def string_match(m: Mapping[str, Any], value: str) -> Tri:
    """Envoy's StringMatcher (exact, prefix, suffix, contains, safe_regex as RE2 full match)."""
    ignore = bool(m.get("ignoreCase"))
    subject = value.lower() if ignore else value

    def norm(text: Any) -> str:
        return str(text).lower() if ignore else str(text)

    if "exact" in m:
        return subject == norm(m["exact"])
    if "prefix" in m:
        return subject.startswith(norm(m["prefix"]))
    if "suffix" in m:
        return subject.endswith(norm(m["suffix"]))
    if "contains" in m:
        return norm(m["contains"]) in subject
    if "safeRegex" in m:
        try:
            return re.fullmatch(m["safeRegex"]["regex"], value) is not None
        except re.error:
            return None
    raise ValueError(f"string matcher {m} not modelled here")


def header_match(h: Mapping[str, Any], w: Witness) -> Tri:
    """Envoy's HeaderMatcher for one request (a missing header matches only an inverted or
    ``present_match: false`` matcher, unless ``treat_missing_header_as_empty``)."""
    if not h.get("name"):  # request.headers[]: istiod's validation refuses such a policy
        raise ValueError(f"header matcher without a name {h}: Envoy refuses the listener")
    value = w.header(str(h["name"]))
    invert = bool(h.get("invertMatch"))
    if "presentMatch" in h:
        result: Tri = (value is not None) == bool(h["presentMatch"])
    elif value is None and not h.get("treatMissingHeaderAsEmpty"):
        return invert
    else:
        result = _header_value_match(h, value or "")
    return _not(result) if invert else result


def _header_value_match(h: Mapping[str, Any], value: str) -> Tri:
    if "stringMatch" in h:
        return string_match(h["stringMatch"], value)
    if "exactMatch" in h:
        return bool(value == h["exactMatch"])
    if "prefixMatch" in h:
        return value.startswith(h["prefixMatch"])
    if "suffixMatch" in h:
        return value.endswith(h["suffixMatch"])
    if "safeRegexMatch" in h:
        return string_match({"safeRegex": h["safeRegexMatch"]}, value)
    raise ValueError(f"header matcher {h} not modelled here")
