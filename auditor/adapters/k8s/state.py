"""Daemon state (drift book + Slack outbox) persisted in one ConfigMap, with optimistic locking.

Why a ConfigMap, not a CRD: nothing extra to install, RBAC can name exactly this one object
(``resourceNames``), and ``kubectl get cm mesh-auditor-state -o yaml`` shows it. The 1 MiB object
limit is handled by gzip (``binaryData``) and by the outbox pruning sent entries. Every write
carries the resourceVersion it read: a 409 means another writer (a replica that still thinks it
leads) changed it, and the caller must stop, not overwrite.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.kubeapi import ApiRefused

STATE_NAME = "mesh-auditor-state"
_KEY = "state.json.gz"
MAX_BYTES = 900 * 1024  # below the 1 MiB object limit, leaving room for metadata


class StateConflict(Exception):  # noqa: N818 - a condition to act on (stop writing), not a bug
    """Someone else wrote the state since we read it."""


@dataclass
class StoredState:
    data: dict[str, Any]
    resource_version: str | None


class ConfigMapStateStore:
    def __init__(self, api: client.ApiClient, namespace: str, name: str = STATE_NAME) -> None:
        self._api = api
        self._namespace = namespace
        self._name = name
        self._version: str | None = None

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self._namespace}/configmaps"

    def load(self) -> dict[str, Any]:
        """The stored document, or ``{}`` when there is none yet."""
        try:
            found = api_calls.get_json(self._api, f"{self._path}/{self._name}")
        except ApiRefused as error:
            if error.status == 404:
                self._version = None
                return {}
            raise
        self._version = str(found["metadata"]["resourceVersion"])
        encoded = (found.get("binaryData") or {}).get(_KEY)
        if encoded is None:
            return {}
        loaded: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(encoded)))
        return loaded

    def save(self, document: dict[str, Any]) -> None:
        packed = gzip.compress(json.dumps(document, sort_keys=True).encode("utf-8"))
        if len(packed) > MAX_BYTES:
            raise ValueError(f"state of {len(packed)} bytes exceeds the ConfigMap budget of {MAX_BYTES}")
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self._name,
                "namespace": self._namespace,
                "labels": {"app.kubernetes.io/managed-by": "mesh-auditor"},
            },
            "binaryData": {_KEY: base64.b64encode(packed).decode("ascii")},
        }
        try:
            if self._version is None:
                saved = api_calls.send_json(self._api, "POST", self._path, body)
            else:
                body["metadata"]["resourceVersion"] = self._version
                saved = api_calls.send_json(self._api, "PUT", f"{self._path}/{self._name}", body)
        except ApiRefused as error:
            if error.status == 409:
                raise StateConflict(error.message) from error
            raise
        self._version = str(saved["metadata"]["resourceVersion"])
