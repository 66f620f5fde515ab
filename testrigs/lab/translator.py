"""The lab's translator: reads the API server and keeps the lab's proxies in step with it.

Role: the stand-in for istiod + istio-cni. ``list_objects`` reads, as raw JSON, every kind the
lab's data plane depends on (Namespaces and their labels, Services, Deployments, Pods, waypoint
Gateways, PeerAuthentications, AuthorizationPolicies). ``run`` is the daemon loop that
``lab up`` starts: it lists every ``POLL_INTERVAL_S`` and, when any object's resourceVersion
changed, calls ``Lab.reconcile``, which publishes new Envoy config (hot, no restart) within a
second or two. Polling a handful of small lists is cheaper to get right than seven watches with
reconnects, and a change still reaches the proxies within a few seconds.

The minimal raw-GET pattern follows ``auditor/adapters/kubeapi.py``, copied rather than
imported: the lab must not depend on the auditor it checks (import-linter enforces it).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from testrigs.lab.mesh import Obj

POLL_INTERVAL_S = 1.0
REQUEST_TIMEOUT = (5.0, 20.0)
# (kind, list path); the lab reads nothing else.
KINDS = (
    ("Namespace", "/api/v1/namespaces"),
    ("Service", "/api/v1/services"),
    ("Pod", "/api/v1/pods"),
    ("Deployment", "/apis/apps/v1/deployments"),
    ("Gateway", "/apis/gateway.networking.k8s.io/v1/gateways"),
    ("PeerAuthentication", "/apis/security.istio.io/v1/peerauthentications"),
    ("AuthorizationPolicy", "/apis/security.istio.io/v1/authorizationpolicies"),
)


def new_client(kubeconfig: Path) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return api


def get_json(api: client.ApiClient, path: str) -> dict[str, Any]:
    """GET ``path`` as JSON; raises RuntimeError for an HTTP error status."""
    return _get(api, path)


def _get(api: client.ApiClient, path: str) -> dict[str, Any]:
    method, url, headers, _, _ = api.param_serialize(
        method="GET", resource_path=path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
    )
    response = api.call_api(method, url, header_params=headers, _request_timeout=REQUEST_TIMEOUT)
    body = response.read()  # type: ignore[no-untyped-call]
    if response.status >= 400:
        raise RuntimeError(f"GET {path}: HTTP {response.status}: {body[:300]!r}")
    document: dict[str, Any] = json.loads(body)
    return document


def list_objects(api: client.ApiClient) -> list[Obj]:
    """Every object of ``KINDS``, each with its ``kind`` set (lists omit it on items)."""
    objects: list[Obj] = []
    for kind, path in KINDS:
        for item in _get(api, path).get("items") or []:
            objects.append({**item, "kind": kind})
    return objects


def fingerprint(objects: list[Obj]) -> tuple[tuple[str, str, str, str], ...]:
    """What changes whenever any object changes: kind, namespace, name and resourceVersion."""
    keys = []
    for obj in objects:
        metadata = obj.get("metadata") or {}
        keys.append(
            (
                str(obj.get("kind")),
                str(metadata.get("namespace")),
                str(metadata.get("name")),
                str(metadata.get("resourceVersion")),
            )
        )
    return tuple(sorted(keys))


def run(kubeconfig: Path, reconcile: Callable[[list[Obj]], None], alive: Callable[[], bool]) -> None:
    """Poll and reconcile until SIGTERM or until ``alive()`` turns False (the lab was torn down)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last: tuple[tuple[str, str, str, str], ...] | None = None
    with new_client(kubeconfig) as api:
        while not stop.is_set() and alive():
            try:
                objects = list_objects(api)
                current = fingerprint(objects)
                if current != last:
                    reconcile(objects)
                    last = current
            except Exception:  # noqa: BLE001 - a daemon logs and retries; the next poll may succeed
                traceback.print_exc(file=sys.stderr)
                last = None
            stop.wait(POLL_INTERVAL_S)
