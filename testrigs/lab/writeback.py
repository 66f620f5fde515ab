"""What istiod and istio-cni write back to the API server, as far as the lab models it.

Role: after each reconcile, ``Lab.reconcile`` calls ``patches`` with the snapshot it applied and
the pods it runs, and ``apply`` sends the result. Without it the API server would disagree with
the data plane in ways a real cluster does not:

- a waypoint Gateway the lab runs gets ``Accepted``/``Programmed`` True and ``status.addresses``
  (the waypoint pod's address), as Istio writes once the waypoint is ready (semantics §2); the
  Gateway API CRD otherwise leaves the ``Pending`` conditions of "no controller reconciled it";
- a bare Pod the lab captured gets the annotation ``ambient.istio.io/redirection: enabled``, as
  istio-cni writes; a pod no longer captured loses it.

``patches`` is pure and returns nothing when the API already says the right thing, so the write
(which changes resourceVersions and wakes the translator) happens once per real change.
Deployment replicas are Pods here too (``controllers``, the controller-manager's stand-in), so
they carry the annotation like bare Pods (probe pods, the walkthrough's curl pods); a replica of
the ``uncaptured-endpoint`` fault never gets it, as istio-cni never redirected it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testrigs.lab.mesh import Mesh, Obj, meta, name_of, namespace_of

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REDIRECTION = "ambient.istio.io/redirection"
REQUEST_TIMEOUT = (5.0, 20.0)


@dataclass(frozen=True)
class Patch:
    """A JSON merge patch for one object (``path`` is its API path, with /status for status)."""

    path: str
    body: dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gateway_ready(obj: Obj, address: str) -> bool:
    status = obj.get("status") or {}
    generation = meta(obj).get("generation")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = all(
        (conditions.get(kind) or {}).get("status") == "True"
        and (conditions.get(kind) or {}).get("observedGeneration") == generation
        for kind in ("Accepted", "Programmed")
    )
    return ready and [a.get("value") for a in status.get("addresses") or []] == [address]


def _gateway_status(obj: Obj, address: str) -> dict[str, Any]:
    now, generation = _now(), meta(obj).get("generation")
    conditions = [
        {
            "type": kind,
            "status": "True",
            "reason": kind,
            "message": "the lab runs this waypoint",
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
        for kind in ("Accepted", "Programmed")
    ]
    return {"status": {"addresses": [{"type": "IPAddress", "value": address}], "conditions": conditions}}


def patches(objects: list[Obj], mesh: Mesh, running: Mapping[str, str]) -> list[Patch]:
    """What to write so the API agrees with the data plane; ``running`` maps pod key -> address
    for the pods (and waypoints) whose proxies and nat rules are in place."""
    waypoints = {w.key for w in mesh.waypoints}
    captured = {w.key for w in mesh.workloads if mesh.captured(w)}
    found = []
    for obj in objects:
        key = f"{namespace_of(obj)}/{name_of(obj)}"
        if obj.get("kind") == "Gateway" and key in waypoints and key in running:
            if not _gateway_ready(obj, running[key]):
                path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{namespace_of(obj)}/gateways/{name_of(obj)}"
                found.append(Patch(f"{path}/status", _gateway_status(obj, running[key])))
        elif obj.get("kind") == "Pod" and key in running and not meta(obj).get("deletionTimestamp"):
            current = (meta(obj).get("annotations") or {}).get(REDIRECTION)
            wanted = "enabled" if key in captured else None
            if current != wanted:
                path = f"/api/v1/namespaces/{namespace_of(obj)}/pods/{name_of(obj)}"
                found.append(Patch(path, {"metadata": {"annotations": {REDIRECTION: wanted}}}))
    return found


def apply(api: ApiClient, found: list[Patch]) -> list[str]:
    """Send the patches; returns one message per patch the API server refused (never raises)."""
    problems = []
    for patch in found:
        headers = {"Accept": "application/json", "Content-Type": "application/merge-patch+json"}
        method, url, headers, body, _ = api.param_serialize(
            method="PATCH", resource_path=patch.path, header_params=headers, body=patch.body,
            auth_settings=["BearerToken"],
        )  # fmt: skip
        try:
            response = api.call_api(method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()  # type: ignore[no-untyped-call]  # the client ships no annotations
        except Exception as error:  # noqa: BLE001 - the next reconcile retries; the data plane is what matters
            problems.append(f"PATCH {patch.path}: {error}")
            continue
        if response.status >= 400 and response.status != 404:  # 404: deleted meanwhile
            problems.append(f"PATCH {patch.path}: HTTP {response.status}: {data[:300]!r}")
    return problems
