"""What istio-cni writes back to the API server, as far as the lab models it.

Role: after each reconcile, ``Lab.reconcile`` calls ``patches`` with the snapshot it applied and
the pods it runs, and ``apply`` sends the result. The lab's data plane is its own istio-cni (it
decides which pods are captured, including the ``uncaptured-endpoint`` fault), so the lab writes
what istio-cni writes: a Pod the lab captured gets the annotation
``ambient.istio.io/redirection: enabled``; a pod no longer captured loses it.

Everything istiod writes comes from the real istiod the lab runs (``controlplane.up(istio=True)``),
never from here: the waypoint Gateway's ``Accepted``/``Programmed`` conditions and
``status.addresses``, the Service's ``istio.io/WaypointBound`` condition, the
AuthorizationPolicy's ``WaypointAccepted``/``ZtunnelAccepted`` conditions, and the waypoint's
Deployment, Service and ServiceAccount (docs/lab.md, "What istiod writes").

``patches`` is pure and returns nothing when the API already says the right thing, so the write
(which changes resourceVersions and wakes the translator) happens once per real change.
Deployment replicas are Pods here too (``controllers``, the controller-manager's stand-in), so
they carry the annotation like bare Pods (probe pods, the walkthrough's curl pods); a replica of
the ``uncaptured-endpoint`` fault never gets it, as istio-cni never redirected it.
"""

from __future__ import annotations

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


def patches(objects: list[Obj], mesh: Mesh, running: Mapping[str, str]) -> list[Patch]:
    """What to write so the API agrees with the data plane; ``running`` maps pod key -> address
    for the pods (and waypoints) whose proxies and nat rules are in place."""
    captured = {w.key for w in mesh.workloads if mesh.captured(w)}
    found = []
    for obj in objects:
        key = f"{namespace_of(obj)}/{name_of(obj)}"
        if obj.get("kind") == "Pod" and key in running and not meta(obj).get("deletionTimestamp"):
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
