"""Daemon state (drift book + Slack outbox) persisted in one ConfigMap, with optimistic locking.

Why a ConfigMap, not a CRD: nothing extra to install, RBAC can name exactly this one object
(``resourceNames``), and ``kubectl get cm mesh-auditor-state -o yaml`` shows it. The 1 MiB object
limit is handled by gzip (``binaryData``) and by the outbox pruning sent entries. Every write
carries the resourceVersion it read: a 409 means another writer (a replica that still thinks it
leads) changed it, and the caller must stop, not overwrite.

A stored state that cannot be decoded (not base64, not gzip, not JSON, not an object) raises
``CorruptState``; the daemon then calls ``set_aside``: the raw bytes are copied to a ConfigMap
of their own (``mesh-auditor-state-corrupt-<epoch>``, with the reason in an annotation) and a
Warning Event names it, before the daemon starts from empty state.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import gzip
import json
import zlib
from typing import Any

from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.ports import CorruptState, StateConflict

__all__ = ["STATE_NAME", "ConfigMapStateStore", "CorruptState", "StateConflict"]

STATE_NAME = "mesh-auditor-state"
_KEY = "state.json.gz"
MAX_BYTES = 900 * 1024  # below the 1 MiB object limit, leaving room for metadata


class ConfigMapStateStore:
    """The ``StateStore`` port on a ConfigMap (gzip, base64 JSON, at most ``MAX_BYTES``), written
    conditionally on its resourceVersion."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str = STATE_NAME) -> None:
        self._api = api
        self._namespace = namespace
        self._name = name
        self._version: str | None = None
        self._raw: str | None = None  # the stored binaryData value of the last load, as read

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
        self._raw = None if encoded is None else str(encoded)
        if encoded is None:
            return {}
        try:
            packed = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise CorruptState(f"{_KEY} is not base64: {error}") from error
        try:
            text = gzip.decompress(packed)
        except (OSError, EOFError, zlib.error) as error:
            raise CorruptState(f"{_KEY} is not gzip: {error}") from error
        try:
            loaded = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptState(f"{_KEY} holds no valid JSON: {error}") from error
        if not isinstance(loaded, dict):
            raise CorruptState(f"{_KEY} holds a JSON {type(loaded).__name__}, not an object")
        return loaded

    def set_aside(self, reason: str, now: dt.datetime) -> str:
        """Copy the state as last loaded to a ConfigMap of its own, with ``reason``, and record a
        Warning Event on the state ConfigMap. Returns the copy's name; raises ``ApiRefused`` /
        ``ApiUnavailable`` when the copy cannot be made (the caller must not lead then)."""
        name = f"{self._name}-corrupt-{int(now.timestamp())}"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self._namespace,
                "labels": {"app.kubernetes.io/managed-by": "mesh-auditor"},
                "annotations": {"mesh-auditor.io/set-aside-reason": reason[:1000], "mesh-auditor.io/from": self._name},
            },
            "binaryData": {} if self._raw is None else {_KEY: self._raw},
        }
        try:
            api_calls.send_json(self._api, "POST", self._path, body)
        except ApiRefused as error:
            if error.status != 409:  # already set aside this second
                raise
        self._event(
            f"The daemon state could not be read ({reason[:500]}); set aside as ConfigMap {name}; "
            "starting from empty state: every drift still found is alerted again.",
            now,
        )
        return name

    def _event(self, message: str, now: dt.datetime) -> None:
        stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self._name}.", "namespace": self._namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": self._name,
                "namespace": self._namespace,
            },
            "reason": "StateReset",
            "message": message,
            "type": "Warning",
            "source": {"component": "mesh-auditor"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            api_calls.send_json(self._api, "POST", f"/api/v1/namespaces/{self._namespace}/events", event)
        except (ApiRefused, ApiUnavailable):
            return  # the log line and the metric still say it; an Event is a courtesy

    def save(self, document: dict[str, Any]) -> None:
        """Store ``document`` (gzip JSON) if nobody wrote since our last load or save. Raises
        ``StateConflict`` when someone did, ``ValueError`` over ``MAX_BYTES`` bytes compressed,
        ``ApiRefused``/``ApiUnavailable`` when the API refuses or does not answer."""
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
