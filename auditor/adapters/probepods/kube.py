"""The four pod calls the runner makes (create, list, watch, delete), as raw JSON over the client.

Deliberately a small duplicate of ``auditor.adapters.k8s.client``'s request pattern (adapters
do not import each other): the kubernetes 37 client's ``param_serialize``/``call_api`` split,
plain dicts in and out, no generated models. Failures are typed like there: ``ApiUnavailable``
when the server does not answer, ``ApiRefused`` for an HTTP error status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds
_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


class ApiUnavailable(Exception):  # noqa: N818 - a condition, not a programming error
    """The API server did not answer (connection refused, reset, timeout)."""


@dataclass
class ApiRefused(Exception):  # noqa: N818 - mirrors the HTTP answer
    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


class PodApi:
    """Pods in one cluster, as JSON documents."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    def create(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", _pods(namespace), body=manifest)

    def list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        return self._json("GET", _pods(namespace), [("labelSelector", selector)])

    def delete(self, namespace: str, name: str) -> None:
        """Delete, treating "already gone" as done."""
        try:
            self._json("DELETE", f"{_pods(namespace)}/{name}")
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
        response = self._call("GET", _pods(namespace), query, None, (REQUEST_TIMEOUT[0], timeout_s + 10.0))
        if response.status >= 400:
            raise _refused(response.status, response.reason or "", response.read())
        raw = response.response
        try:
            buffer = b""
            for chunk in raw.stream(4096, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                yield from (json.loads(line) for line in lines if line.strip())
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiUnavailable(str(error)) from error
        finally:
            raw.release_conn()

    def _json(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = self._call(method, path, query or [], body, REQUEST_TIMEOUT)
        data = response.read()
        if response.status >= 400:
            raise _refused(response.status, response.reason or "", data)
        document: dict[str, Any] = json.loads(data)
        return document

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: dict[str, Any] | None,
        timeout: tuple[float, float],
    ) -> Any:
        method, url, headers, payload, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=dict(_JSON),
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self._api.call_api(method, url, header_params=headers, body=payload, _request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiUnavailable(str(error)) from error


def _pods(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def _refused(status: int, reason: str, body: bytes) -> ApiRefused:
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body[:200].decode("utf-8", "replace")
    return ApiRefused(status, reason, message)
