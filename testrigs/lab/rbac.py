"""AuthorizationPolicy -> Envoy RBAC, for the lab's ztunnels (network RBAC) and waypoints (HTTP RBAC).

Role: ``envoyconf.py`` asks for the RBAC filters of one inbound filter chain. Each chain serves
one destination port, so port and destination-IP conditions are decided here, at render time,
against that port; what remains goes to Envoy:

* Istio's order (semantics §4.4): a DENY filter first (only when some DENY rule survives), then an
  ALLOW filter whenever any ALLOW policy binds the target, even if none of its rules survive:
  one ALLOW anywhere flips the target to default-deny, and an ALLOW whose rules were all dropped
  denies everything (§4.3).
* ``Layer.L4`` (ztunnel): a rule that uses any L7 attribute (paths, methods, hosts, request
  headers, JWT keys) is dropped; named ports are dropped from port lists (§4.2).
* ``Layer.L7`` (waypoint): headers, methods, paths and hosts are matched on the request; the
  ``header-not-enforced`` fault makes header conditions match anything.

Principals are SPIFFE URIs in the peer certificate (``authenticated.principal_name``): Istio's
``cluster.local/ns/default/sa/ui`` becomes ``spiffe://cluster.local/ns/default/sa/ui``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from testrigs.lab.mesh import Obj, name_of, namespace_of, spec

Config = dict[str, Any]

_NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
_HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_L4_SOURCE_KEYS = {"principals", "namespaces", "ipBlocks", "remoteIpBlocks", "serviceAccounts"}
_L4_WHEN_KEYS = {"source.ip", "remote.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
_HEADER_KEY = re.compile(r"^request\.headers\[(.+)\]$")


class Layer(Enum):
    L4 = "ztunnel"
    L7 = "waypoint"


@dataclass(frozen=True)
class Target:
    """What a chain serves: the destination (container) port and the destination pod's IP."""

    port: int
    ip: str
    ignore_headers: bool = False  # the header-not-enforced fault


class _Never(Exception):  # noqa: N818 - control flow: a condition that can never hold here
    """A condition that can never match this target: the whole rule is dropped."""


class _Dropped(Exception):  # noqa: N818 - control flow, not an error
    """The rule uses attributes this layer cannot see (L7 at ztunnel): the rule is dropped."""


def network_filters(policies: Iterable[Obj], target: Target) -> list[Config]:
    """ztunnel's inbound RBAC for one port: [DENY?, ALLOW?] network filters."""
    return [
        {"name": f"envoy.filters.network.rbac.{action.lower()}", "typed_config": config}
        for action, config in _filters(policies, target, Layer.L4, _NETWORK_RBAC)
    ]


def http_filters(policies: Iterable[Obj], target: Target) -> list[Config]:
    """The waypoint's RBAC for one Service port: [DENY?, ALLOW?] HTTP filters."""
    return [
        {"name": f"envoy.filters.http.rbac.{action.lower()}", "typed_config": config}
        for action, config in _filters(policies, target, Layer.L7, _HTTP_RBAC)
    ]


def _filters(policies: Iterable[Obj], target: Target, layer: Layer, type_url: str) -> list[tuple[str, Config]]:
    bound = list(policies)
    result = []
    for action in ("DENY", "ALLOW"):
        of_action = [p for p in bound if str(spec(p).get("action") or "ALLOW") == action]
        if not of_action:
            continue
        envoy_policies = {
            f"{namespace_of(p)}/{name_of(p)}[{index}]": compiled
            for p in of_action
            for index, rule in enumerate(spec(p).get("rules") or [])
            if (compiled := _rule(rule, target, layer)) is not None
        }
        if action == "DENY" and not envoy_policies:
            continue  # a DENY with nothing left denies nothing
        config: Config = {"@type": type_url, "rules": {"action": action, "policies": envoy_policies}}
        if type_url == _NETWORK_RBAC:
            config["stat_prefix"] = f"{layer.value}_{action.lower()}"
        result.append((action, config))
    return result


def _rule(rule: Mapping[str, Any], target: Target, layer: Layer) -> Config | None:
    try:
        sources = [_source(s.get("source") or {}, layer) for s in rule.get("from") or []]
        operations = [_operation(o.get("operation") or {}, target, layer) for o in rule.get("to") or []]
        conditions = [_condition(c, target, layer) for c in rule.get("when") or []]
    except (_Never, _Dropped):
        return None
    principals = [c for c in conditions if c is not None and "permission" not in c]
    permissions = [c["permission"] for c in conditions if c is not None and "permission" in c]
    if sources:
        principals.insert(0, {"or_ids": {"ids": sources}} if len(sources) > 1 else sources[0])
    if operations:
        permissions.insert(0, {"or_rules": {"rules": operations}} if len(operations) > 1 else operations[0])
    return {"permissions": [_all_rules(permissions)], "principals": [_all_ids(principals)]}


def _all_ids(ids: list[Config]) -> Config:
    return {"and_ids": {"ids": ids}} if ids else {"any": True}


def _all_rules(rules: list[Config]) -> Config:
    return {"and_rules": {"rules": rules}} if rules else {"any": True}


# --- sources -----------------------------------------------------------------------------------


def _source(source: Mapping[str, Any], layer: Layer) -> Config:
    parts: list[Config] = []
    for key, values in source.items():
        if layer is Layer.L4 and _base(key) not in _L4_SOURCE_KEYS:
            raise _Dropped  # requestPrincipals: an L7 (JWT) attribute
        matcher = _source_field(_base(key), list(values or []))
        if matcher is None:
            raise _Dropped  # request principals and the like: not a peer attribute
        parts.append({"not_id": matcher} if key.startswith("not") else matcher)
    return _all_ids(parts)


def _base(key: str) -> str:
    return key[3].lower() + key[4:] if key.startswith("not") and len(key) > 3 else key


def _source_field(key: str, values: list[str]) -> Config | None:
    if key == "principals":
        return _any_of([_principal(v) for v in values])
    if key == "namespaces":
        return _any_of([_namespace(v) for v in values])
    if key in ("ipBlocks", "remoteIpBlocks"):
        return _any_of([_ip(v) for v in values])
    if key == "serviceAccounts":
        return _any_of([_service_account(v) for v in values])
    return None


def _any_of(ids: list[Config]) -> Config:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _principal(value: str) -> Config:
    return {"authenticated": {"principal_name": _string_match(value, prefix="spiffe://")}}


def _namespace(value: str) -> Config:
    pattern = ".*" if value == "*" else re.escape(value)
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": f"spiffe://[^/]+/ns/{pattern}/sa/.*"}}}}


def _service_account(value: str) -> Config:
    namespace, _, account = value.rpartition("/")
    ns_pattern = re.escape(namespace) if namespace else "[^/]+"
    regex = f"spiffe://[^/]+/ns/{ns_pattern}/sa/{re.escape(account)}"
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def _ip(value: str) -> Config:
    network = ipaddress.ip_network(value, strict=False)
    return {"direct_remote_ip": {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}}


def _string_match(value: str, prefix: str = "") -> Config:
    """Istio's string forms: exact, ``*``, ``prefix*`` and ``*suffix``."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    if value.startswith("*"):
        return {"suffix": value[1:]}
    return {"exact": prefix + value}


# --- operations and conditions -------------------------------------------------------------------


def _operation(operation: Mapping[str, Any], target: Target, layer: Layer) -> Config:
    parts: list[Config] = []
    for key, values in operation.items():
        base = _base(key)
        if base == "ports":
            _check_ports(list(values or []), target, negated=key.startswith("not"))
            continue
        if layer is Layer.L4:
            raise _Dropped  # methods, paths, hosts are L7 (§4.2)
        matcher = _operation_field(base, list(values or []))
        parts.append({"not_rule": matcher} if key.startswith("not") else matcher)
    return _all_rules(parts)


def _check_ports(values: list[Any], target: Target, *, negated: bool) -> None:
    # Named ports are silently dropped (§4.2); a chain serves one port, so decide now.
    numeric = {int(v) for v in values if str(v).isdigit()}
    if not numeric:
        return
    if (target.port in numeric) == negated:
        raise _Never


def _operation_field(key: str, values: list[str]) -> Config:
    if key == "methods":
        return _or_rules([_header_rule(":method", v) for v in values])
    if key == "paths":
        return _or_rules([{"url_path": {"path": _string_match(v)}} for v in values])
    if key == "hosts":
        return _or_rules([_header_rule(":authority", v) for v in values])
    raise _Never  # an attribute the lab does not model never matches: fail closed for ALLOW


def _or_rules(rules: list[Config]) -> Config:
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def _header_rule(name: str, value: str) -> Config:
    # istiod's matcher.HeaderMatcher: "*" is present_match, which an empty value also satisfies
    # (the regex ".+" of _string_match would refuse it; found by scripts/lab verify, #12).
    if value == "*":
        return {"header": {"name": name, "present_match": True}}
    return {"header": {"name": name, "string_match": _string_match(value)}}


def _condition(condition: Mapping[str, Any], target: Target, layer: Layer) -> Config | None:
    key = str(condition.get("key", ""))
    values, not_values = list(condition.get("values") or []), list(condition.get("notValues") or [])
    if layer is Layer.L4 and key not in _L4_WHEN_KEYS:
        raise _Dropped
    if key in ("destination.port", "destination.ip"):
        _check_destination(key, values, not_values, target)
        return None
    header = _HEADER_KEY.match(key)
    if header and target.ignore_headers:
        return None
    matcher = _when_matcher(key, header.group(1) if header else None)
    if matcher is None:
        raise _Never  # JWT claims and other keys the lab has no source for never match
    parts = []
    if values:
        parts.append(_any_of([matcher(v) for v in values]))
    if not_values:
        parts.append({"not_id": _any_of([matcher(v) for v in not_values])})
    return _all_ids(parts)


def _when_matcher(key: str, header: str | None) -> Any:
    if header is not None:
        return lambda v: _header_rule(header.lower(), v)
    table = {
        "source.principal": _principal,
        "source.namespace": _namespace,
        "source.ip": _ip,
        "remote.ip": _ip,
    }
    return table.get(key)


def _check_destination(key: str, values: list[str], not_values: list[str], target: Target) -> None:
    def hit(value: str) -> bool:
        if key == "destination.port":
            return value.isdigit() and int(value) == target.port
        return ipaddress.ip_address(target.ip) in ipaddress.ip_network(value, strict=False)

    if values and not any(hit(v) for v in values):
        raise _Never
    if any(hit(v) for v in not_values):
        raise _Never
