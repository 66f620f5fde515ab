"""The drill's writes to the API server, confined to the sandbox namespace (``ports``
``SandboxWriter``): create the canary, JSON-Patch it, sweep it by label, read the kill switch.

Three fences keep a drill inside its sandbox: this adapter refuses any object whose namespace is
not the sandbox's (``SandboxViolationError``, before a request is made); the chart's drill Role grants
writes in that namespace only; its drill-guard admission policy refuses any write by the auditor
there to an object without ``app.kubernetes.io/managed-by: mesh-auditor`` (deploy/drill.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from kubernetes import client

from auditor.adapters import kubeapi
from auditor.adapters.kubeapi import ApiRefused
from auditor.core.drill import KILL_SWITCH_LABEL, KILL_SWITCH_OFF, SELECTOR, ObjectRef

# Kind -> (API path prefix, plural). Only the kinds a canary is made of: nothing else is writable.
KINDS: Mapping[str, tuple[str, str]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PeerAuthentication": ("/apis/security.istio.io/v1", "peerauthentications"),
    "AuthorizationPolicy": ("/apis/security.istio.io/v1", "authorizationpolicies"),
    "Gateway": ("/apis/gateway.networking.k8s.io/v1", "gateways"),
}
# Deleted first to last: the policy and the waypoint before the workload they protect, so the
# canary never runs unprotected while it is removed; the ServiceAccount last.
SWEEP_ORDER = ("AuthorizationPolicy", "Gateway", "Service", "Deployment", "PeerAuthentication", "ServiceAccount")


class SandboxViolationError(RuntimeError):
    """A drill tried to write outside its sandbox namespace: refused before any request."""


class KubeSandbox:
    """The sandbox namespace of one cluster."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._api = api
        self._namespace = namespace
        self._log = structlog.get_logger("auditor.drill")

    def _collection(self, kind: str, namespace: str) -> str:
        if namespace != self._namespace:
            raise SandboxViolationError(
                f"{kind} in namespace {namespace!r}: a drill writes only in {self._namespace!r}"
            )
        if kind not in KINDS:
            raise SandboxViolationError(f"a drill never writes a {kind}")
        prefix, plural = KINDS[kind]
        return f"{prefix}/namespaces/{namespace}/{plural}"

    def create(self, manifest: Mapping[str, Any]) -> None:
        """POSTs ``manifest`` to its collection in the sandbox. Raises ``SandboxViolationError`` (another namespace
        or kind, before any request), ``ApiRefused`` or ``ApiUnavailable``.
        """
        meta = manifest["metadata"]
        path = self._collection(str(manifest["kind"]), str(meta.get("namespace", "")))
        kubeapi.request_json(self._api, "POST", path, body=manifest)
        self._log.info("drill object created", kind=manifest["kind"], name=meta["name"], namespace=self._namespace)

    def patch(self, ref: ObjectRef, operations: Sequence[Mapping[str, Any]]) -> None:
        """JSON-Patches (RFC 6902) the object ``ref`` in the sandbox. Raises ``SandboxViolationError`` (a kind not in
        ``KINDS``), ``ApiRefused`` or ``ApiUnavailable``.
        """
        path = f"{self._collection(ref.kind, self._namespace)}/{ref.name}"
        kubeapi.json_patch(self._api, path, [dict(op) for op in operations])
        self._log.info("drill object patched", object=str(ref), operations=len(operations))

    def _labelled(self) -> list[tuple[str, str]]:
        found = []
        for kind in SWEEP_ORDER:
            listing = kubeapi.get_json(
                self._api, self._collection(kind, self._namespace), [("labelSelector", SELECTOR)]
            )
            found += [(kind, item["metadata"]["name"]) for item in listing.get("items") or []]
        return found

    def sweep(self) -> int:
        """Deletes every object labelled as a drill's (``SELECTOR``), in ``SWEEP_ORDER``; returns how many were
        deleted (an object already gone is no error). Raises ``ApiRefused`` (other than 404) or
        ``ApiUnavailable``.
        """
        deleted = 0
        for kind, name in self._labelled():
            try:
                query = [("propagationPolicy", "Background")]
                kubeapi.request_json(
                    self._api, "DELETE", f"{self._collection(kind, self._namespace)}/{name}", query=query
                )
                deleted += 1
            except ApiRefused as error:
                if error.status != 404:
                    raise
        if deleted:
            self._log.info("drill sandbox swept", deleted=deleted, namespace=self._namespace)
        return deleted

    def leftovers(self) -> int:
        """Labelled objects still there, the canary's pods included (they go after their Deployment)."""
        pods = kubeapi.get_json(self._api, f"/api/v1/namespaces/{self._namespace}/pods", [("labelSelector", SELECTOR)])
        return len(self._labelled()) + len(pods.get("items") or [])

    def killed(self) -> bool:
        """True when the sandbox namespace carries the kill switch (``KILL_SWITCH_LABEL`` set to
        ``KILL_SWITCH_OFF``). Raises ``ApiRefused`` or ``ApiUnavailable``.
        """
        query = [("fieldSelector", f"metadata.name={self._namespace}")]
        listing = kubeapi.get_json(self._api, "/api/v1/namespaces", query)
        for namespace in listing.get("items") or []:
            if (namespace["metadata"].get("labels") or {}).get(KILL_SWITCH_LABEL) == KILL_SWITCH_OFF:
                return True
        return False
