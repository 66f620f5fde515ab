"""One-shot read of a live cluster into a ``Snapshot`` (``auditor check --kubeconfig``).

Every resource of ``SNAPSHOT_RESOURCES`` is listed cluster-wide with pagination and decoded by
``auditor.core.decode``. What cannot be read never becomes an empty list: a 403 becomes a
``ReadProblem`` naming the missing permission, a 404 names the missing CRD, and a server that
stops answering marks every resource not yet read. Checks that need an unreadable kind then
report ERROR (``auditor.core.audit``). A server that answers nothing at all (wrong address, VPN
down) raises ``ApiUnavailable`` instead: there is no audit to report.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.k8s.resources import SNAPSHOT_RESOURCES, Resource
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.core.decode import Decoded, DecodeError, build_snapshot, decode_object
from auditor.core.snapshot import ReadProblem, Snapshot

PAGE_SIZE = 500


class ClusterReader:
    """Lists the snapshot's resources from one API server."""

    def __init__(self, api: client.ApiClient, *, page_size: int = PAGE_SIZE) -> None:
        self._api = api
        self._page_size = page_size
        self._log = structlog.get_logger("auditor.k8s")

    def snapshot(self) -> Snapshot:
        """Every resource of ``SNAPSHOT_RESOURCES``, or ``ReadProblem`` entries for those not read.

        Raises ``ApiUnavailable`` when the first request gets no answer at all.
        """
        objects: list[Decoded] = []
        problems: list[ReadProblem] = []
        unavailable: str | None = None
        for resource in SNAPSHOT_RESOURCES:
            if unavailable is not None:
                problems.append(_problem(resource, f"not read: the API server stopped answering ({unavailable})"))
                continue
            try:
                objects += self._read(resource)
            except ApiUnavailable as error:
                if resource is SNAPSHOT_RESOURCES[0]:
                    raise  # the first request: the server never answered, nothing to audit
                unavailable = str(error)
                problems.append(_problem(resource, f"the API server did not answer: {error}"))
            except ApiRefused as error:
                problems.append(refused_problem(resource, error))
            except DecodeError as error:
                problems.append(_problem(resource, f"an object does not decode: {error}", permission=""))
        self._log.info("cluster read", objects=len(objects), problems=len(problems))
        return build_snapshot(objects, problems=problems, live=True)

    def _read(self, resource: Resource) -> list[Decoded]:
        decoded: list[Decoded] = []
        for item in self._pages(resource):
            decoded += decode_object(with_type(item, resource), source=f"cluster:{resource.qualified}")
        return decoded

    def _pages(self, resource: Resource) -> Iterator[Mapping[str, Any]]:
        token = ""
        while True:
            query = [("limit", str(self._page_size))] + ([("continue", token)] if token else [])
            page = api_calls.get_json(self._api, resource.list_path, query)
            yield from page.get("items") or []
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return


def with_type(item: Mapping[str, Any], resource: Resource) -> dict[str, Any]:
    """List items carry no apiVersion/kind; give them their resource's, as manifests have."""
    return {**item, "apiVersion": resource.api_version, "kind": resource.kind}


def refused_problem(resource: Resource, error: ApiRefused) -> ReadProblem:
    """The ``ReadProblem`` for a refused read: 403 forbidden (the permission it needs), 404 (the CRD
    or API that is not served), else the status and message."""
    if error.status == 403:
        return _problem(resource, f"forbidden: {error.message}")
    if error.status == 404:
        hint = "is the CRD installed?" if resource.crd else "is this API served?"
        needs = f"the {resource.qualified} CRD" if resource.crd else f"the {resource.api_version} API"
        return _problem(resource, f"{resource.qualified} not found on the server: {hint}", permission=needs)
    return _problem(resource, f"HTTP {error.status} {error.reason}: {error.message}")


def _problem(resource: Resource, message: str, *, permission: str | None = None) -> ReadProblem:
    return ReadProblem(
        kind=resource.kind,
        resource=f"{resource.api_version} {resource.plural}",
        message=message,
        permission=resource.permission() if permission is None else permission,
    )
