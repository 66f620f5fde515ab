"""The four pod calls the runner makes (create, list, watch, delete), as raw JSON.

Built on ``auditor.adapters.kubeapi`` (shared by every adapter that talks to the API server):
plain dicts in and out, no generated models; ``ApiUnavailable`` when the server does not
answer, ``ApiRefused`` for an HTTP error status.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kubernetes import client

from auditor.adapters import kubeapi
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable

__all__ = ["ApiRefused", "ApiUnavailable", "PodApi"]


class PodApi:
    """Pods in one cluster, as JSON documents."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a pod; returns the API's Pod. Raises ``ApiRefused`` or ``ApiUnavailable``."""
        return kubeapi.request_json(self._api, "POST", _pods(namespace), body=manifest)

    def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        """The PodList of ``namespace`` matching label ``selector``. Raises ``ApiRefused`` or ``ApiUnavailable``."""
        return kubeapi.request_json(self._api, "GET", _pods(namespace), query=[("labelSelector", selector)])

    def delete(self, namespace: str, name: str) -> None:
        """Delete, treating "already gone" as done."""
        try:
            kubeapi.request_json(self._api, "DELETE", f"{_pods(namespace)}/{name}")
        except ApiRefused as error:
            if error.status != 404:
                raise

    def watch(self, namespace: str, selector: str, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        """Watch events after ``resource_version`` until the server closes the stream (``timeout_s``)."""
        query = [
            ("watch", "1"),
            ("labelSelector", selector),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_s)),
        ]
        return kubeapi.stream_lines(self._api, _pods(namespace), query, read_timeout=timeout_s + 10.0)


def _pods(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"
