"""Kubernetes API access shared by the adapters that talk to the API server (k8s, probepods):
building a client (kubeconfig, context or in-cluster) and raw JSON requests and watches.

Objects are read as raw JSON, not as generated models, so the live snapshot is decoded by the
same code, from the same shape, as manifest files. Failures are typed (``ApiUnavailable`` for a
server that does not answer, ``ApiRefused`` for an HTTP error status) so the reader can turn
them into findings that name the resource and the permission.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from auditor.errors import InputError

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds: a dead server is reported, never waited on forever


class ApiUnavailable(Exception):  # noqa: N818 - a condition, not a programming error
    """The API server did not answer (connection refused, reset, timeout).

    ``str()`` is the root cause in a few words (``connection refused``, ``timed out``, a TLS
    or DNS failure), not urllib3's nested retry message.
    """


@dataclass
class ApiRefused(Exception):  # noqa: N818 - mirrors the HTTP answer
    """The API server answered with an error status: ``status`` (HTTP code), ``reason`` (its
    reason phrase) and ``message`` (the Status object's message)."""

    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


def build_api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    """From a kubeconfig (and context), or the in-cluster ServiceAccount when none is given."""
    try:
        if kubeconfig is None and context is None:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        api: client.ApiClient = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, OSError, TypeError, ValueError) as error:
        source = kubeconfig or "in-cluster config"
        raise InputError(
            source,
            f"cannot build a Kubernetes client: {error}",
            field="--kubeconfig/--context",
            fix="point --kubeconfig at a valid kubeconfig and --context at one of its contexts",
        ) from error
    return api


def request_json(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: Mapping[str, Any] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One JSON request; HTTP errors raise ``ApiRefused`` (409: someone else changed it)."""
    payload = None if body is None else (dict(body) if content_type == "application/json" else json.dumps(body))
    response = _request(api, method, path, query=query or [], body=payload, content_type=content_type)
    data = response.read()
    if response.status >= 400:
        raise _refused(response.status, response.reason or "", data)
    document: dict[str, Any] = json.loads(data)
    return document


def get_json(api: client.ApiClient, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """GET ``path`` as JSON. Raises ``ApiRefused`` (an error status) or ``ApiUnavailable`` (no answer)."""
    return request_json(api, "GET", path, query=query)


def send_json(api: client.ApiClient, method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``method`` ``path`` with a JSON body. Raises ``ApiRefused`` or ``ApiUnavailable``."""
    return request_json(api, method, path, body=body)


def json_patch(api: client.ApiClient, path: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON Patch (RFC 6902) of one object. The client sends it only as a list (a string body
    would be re-labelled as a strategic merge patch), so it bypasses ``request_json``'s encoding."""
    response = _request(api, "PATCH", path, query=[], body=operations, content_type="application/json-patch+json")
    data = response.read()
    if response.status >= 400:
        raise _refused(response.status, response.reason or "", data)
    document: dict[str, Any] = json.loads(data)
    return document


def stream_lines(
    api: client.ApiClient, path: str, query: list[tuple[str, str]], read_timeout: float
) -> Iterator[dict[str, Any]]:
    """A watch: yields each JSON event line until the server ends the stream."""
    timeout = (REQUEST_TIMEOUT[0], read_timeout)
    response = _request(api, "GET", path, query=query, body=None, content_type="application/json", timeout=timeout)
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
        raise ApiUnavailable(root_cause(error)) from error
    finally:
        raw.release_conn()


def _request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]],
    body: Any,
    content_type: str,
    timeout: tuple[float, float] = REQUEST_TIMEOUT,
) -> Any:
    verb, url, headers, payload, _ = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query,
        body=body,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        auth_settings=["BearerToken"],
    )
    try:
        return api.call_api(verb, url, header_params=headers, body=payload, _request_timeout=timeout)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise ApiUnavailable(root_cause(error)) from error


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def root_cause(error: BaseException) -> str:
    """The innermost reason of a connection failure, e.g. ``connection refused``.

    urllib3 wraps it (MaxRetryError -> NewConnectionError -> OSError); its message repeats the
    pool and the URL, which the caller names anyway.
    """
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException) and reason is not error:
        return root_cause(reason)
    text = str(error)
    if isinstance(error, urllib3.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS handshake failed: {text[-160:]}"
    errno = _ERRNO.search(text)  # first: urllib3's NewConnectionError subclasses its timeout error
    if errno:
        return errno.group(1).strip().lower()
    if isinstance(error, (urllib3.exceptions.ConnectTimeoutError, TimeoutError)) or "timed out" in text:
        return f"no answer within {REQUEST_TIMEOUT[0]:g} s (connect) or {REQUEST_TIMEOUT[1]:g} s (read)"
    return text[:200]


def server_of(api: client.ApiClient) -> str:
    """The API server URL a client talks to (the kubeconfig's ``server``)."""
    return str(api.configuration.host)


def _refused(status: int, reason: str, body: bytes) -> ApiRefused:
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body[:200].decode("utf-8", "replace")
    return ApiRefused(status, reason, message)
