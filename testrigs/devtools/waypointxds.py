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
  ``chain_outcome()`` evaluates its authorization filters (network, then HTTP, in order) for one
  request, as Envoy does: the request passes when every filter lets it through; an RBAC filter's
  ``rules`` decide (a DENY filter denies when a policy matches; an ALLOW filter denies when none
  does; LOG decides nothing), its ``shadow_rules`` only record which policy matched. CUSTOM
  policies (pilot/pkg/security/authz/builder/builder.go ``buildHTTP``/``buildTCP``; istiod puts
  their filters first, listener_waypoint.go ``buildWaypointHTTPFilters``): for a provider the mesh
  config defines, an RBAC filter whose shadow rules (stat prefix ``istio_ext_authz_``) select the
  requests, then an ext_authz filter enabled only when they matched (``filter_enabled_metadata``
  on ``istio_ext_authz_shadow_effective_policy_id``); the rules of a dry-run CUSTOM policy go in
  that RBAC filter's enforced ``rules`` (action DENY). For a provider it cannot build (unknown,
  or more than one provider for a workload), a DENY filter of the same rules (policy names
  ending ``-deny-due-to-bad-CUSTOM-action``). The outcome holds the verdict if the external
  authorizer allows and if it denies, and whether a CUSTOM policy's filters selected the request.
  It covers the matchers Istio's authz builder emits (pilot/pkg/security/authz/model): and/or/not,
  any, authenticated principal and the ``io.istio.peer_principal`` filter state, headers
  (including ``:method`` and ``:authority``), url_path, destination_port; anything else (IP
  ranges, JWT metadata, path templates) makes the answer ``None`` or raises ``ValueError`` for a
  matcher not known here, never a guess. ``chain_allows()`` is the verdict when it does not
  depend on the external authorizer.

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
EXT_AUTHZ_STAT_PREFIX = "istio_ext_authz_"  # authzmodel.RBACExtAuthzShadowRulesStatPrefix
EXT_AUTHZ_POLICY_PREFIX = "istio-ext-authz-"  # builder/extauthz.go extAuthzMatchPrefix + "-"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"  # builder/extauthz.go badCustomActionSuffix
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


@dataclass(frozen=True)
class Outcome:
    """Envoy's handling of one request on one chain.

    ``if_provider_allows`` / ``if_provider_denies``: whether the request passes every filter when
    the external authorizer (an enabled ext_authz filter) allows / denies it. ``custom``: whether a
    CUSTOM policy's filters selected it (its ext_authz filter runs, or istiod's deny rules for a
    provider it could not build, or a dry-run CUSTOM policy's rules, matched). ``custom_filters``:
    whether the chain holds any filter built from a CUSTOM policy."""

    if_provider_allows: Tri
    if_provider_denies: Tri
    custom: Tri
    custom_filters: bool

    @property
    def allowed(self) -> Tri:
        """The verdict, ``None`` when it depends on the external authorizer or cannot be told."""
        return self.if_provider_allows if self.if_provider_allows == self.if_provider_denies else None

    @property
    def external(self) -> bool:
        """Whether the external authorizer's answer is the verdict."""
        return self.if_provider_allows is True and self.if_provider_denies is False


def chain_allows(chain: Mapping[str, Any], witness: Witness) -> Tri:
    """Whether the chain's filters let the request through: ``chain_outcome(...).allowed``."""
    return chain_outcome(chain, witness).allowed


def chain_outcome(chain: Mapping[str, Any], witness: Witness) -> Outcome:
    """Evaluate the chain's authorization filters for ``witness``; see ``Outcome``."""
    verdicts: dict[bool, list[Tri]] = {True: [], False: []}
    selected: list[Tri] = []
    custom_filters = False
    enabled: Tri = False  # whether the last CUSTOM RBAC filter's shadow rules matched
    for name, config in rbac_filters(chain):
        if name in EXT_AUTHZ:
            custom_filters = True
            selected.append(enabled)
            for provider_allows, found in verdicts.items():
                found.append(
                    True if enabled is False else (provider_allows if enabled else _deny_or_unknown(provider_allows))
                )
            enabled = False
            continue
        http = name == RBAC_HTTP
        if config.get("shadowRulesStatPrefix") == EXT_AUTHZ_STAT_PREFIX:
            custom_filters = True
            enabled = _any_policy(config.get("shadowRules") or {}, witness, http)
            if config.get("rules") is not None:  # dry-run CUSTOM policies: enforced as DENY
                selected.append(_any_policy(config["rules"], witness, http))
        elif any(str(n).endswith(BAD_CUSTOM_SUFFIX) for n in ((config.get("rules") or {}).get("policies") or {})):
            custom_filters = True
            selected.append(_any_policy(config["rules"], witness, http))
        verdict = _rbac_filter(config, witness, http=http)
        for found in verdicts.values():
            found.append(verdict)
    return Outcome(_and(verdicts[True]), _and(verdicts[False]), _or(selected), custom_filters)


def _deny_or_unknown(provider_allows: bool) -> Tri:
    # The ext_authz filter may run (its RBAC filter's match cannot be told): it lets the
    # request through if the provider allows, and may deny it otherwise.
    return True if provider_allows else None


def _any_policy(rules: Mapping[str, Any], witness: Witness, http: bool) -> Tri:
    """Whether any policy of an RBAC rule set matches (Envoy's RBAC engine, action aside)."""
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
    return matched


def _rbac_filter(config: Mapping[str, Any], witness: Witness, *, http: bool) -> Tri:
    rules = config.get("rules")
    if rules is None:  # only shadow rules: enforces nothing
        return True
    action = rules.get("action", "ALLOW")
    matched = _any_policy(rules, witness, http)
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
