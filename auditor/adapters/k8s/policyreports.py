"""Writes the rendered PolicyReports (``auditor.render.policyreport``) with server-side apply.

One object per namespace named ``mesh-auditor``, replaced on every audit, so dashboards always
show the latest run. Every write also removes the auditor's reports that no longer apply: it
lists the reports named ``mesh-auditor`` with the label ``app.kubernetes.io/managed-by:
mesh-auditor`` (a ``metadata.name`` field selector, so RBAC can limit list and delete to that
name) and deletes those of namespaces without findings. Listing instead of remembering makes this
hold across restarts and leader changes: the reports a previous leader wrote are found too.

Reports are applied with ``fieldValidation=Strict``: a field the installed CRD does not define is
an error, not silently pruned. Each result's Service gets its ``uid`` (one list of Services per
namespace written). A missing PolicyReport CRD is reported once per write and skipped: the
reports are an extra view, the JSON archive stays the record.

RBAC (deploy/rbac.yaml, mesh-auditor-policyreports): get/create/patch/list/delete of
``policyreports`` and ``clusterpolicyreports`` with ``resourceNames: [mesh-auditor]``, plus the
reader's list of Services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.render.policyreport import MANAGED_BY, REPORT_NAME

GROUP_PATH = "/apis/wgpolicyk8s.io/v1alpha2"
_OWN = [("fieldSelector", f"metadata.name={REPORT_NAME}"), ("labelSelector", f"{MANAGED_BY[0]}={MANAGED_BY[1]}")]


class PolicyReportWriter:
    """The ``PolicyReportWriter`` port: server-side apply of wgpolicyk8s.io reports, and deletion
    of the auditor's stale ones."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._log = structlog.get_logger("auditor.policyreports")

    def write(self, reports: Sequence[Mapping[str, Any]]) -> int:
        """Apply every report, then delete the auditor's reports that are not among them.

        Returns how many were written; refusals are logged, never raised.
        """
        written = 0
        current = set()
        for report in reports:
            path = self._path(report)
            current.add(path)
            try:
                body = self._with_uids(report)
                query = [("fieldManager", "mesh-auditor"), ("force", "true"), ("fieldValidation", "Strict")]
                api_calls.request_json(
                    self._api, "PATCH", path, query=query, body=body, content_type="application/apply-patch+yaml"
                )
                written += 1
            except ApiRefused as error:
                self._log.warning("policy report not written", path=path, status=error.status, reason=error.message)
            except ApiUnavailable as error:
                self._log.warning("policy report not written", path=path, error=str(error))
        for stale in sorted(self._existing() - current):
            self._delete(stale)
        return written

    def _path(self, report: Mapping[str, Any]) -> str:
        name = report["metadata"]["name"]
        namespace = report["metadata"].get("namespace")
        if report["kind"] == "ClusterPolicyReport":
            return f"{GROUP_PATH}/clusterpolicyreports/{name}"
        return f"{GROUP_PATH}/namespaces/{namespace}/policyreports/{name}"

    def _existing(self) -> set[str]:
        """Paths of every report this auditor owns, wherever a previous leader wrote it."""
        found: set[str] = set()
        for plural in ("policyreports", "clusterpolicyreports"):
            try:
                listed = api_calls.get_json(self._api, f"{GROUP_PATH}/{plural}", query=list(_OWN))
            except (ApiRefused, ApiUnavailable) as error:
                self._log.warning("own policy reports not listed; stale ones stay", kind=plural, error=str(error))
                continue
            for item in listed.get("items") or []:
                metadata = item.get("metadata") or {}
                labels = metadata.get("labels") or {}
                if metadata.get("name") != REPORT_NAME or labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
                    continue  # not ours, whatever the server answered
                namespace = metadata.get("namespace")
                if plural == "policyreports" and namespace:
                    found.add(f"{GROUP_PATH}/namespaces/{namespace}/policyreports/{REPORT_NAME}")
                elif plural == "clusterpolicyreports":
                    found.add(f"{GROUP_PATH}/clusterpolicyreports/{REPORT_NAME}")
        return found

    def _delete(self, path: str) -> None:
        try:
            api_calls.request_json(self._api, "DELETE", path)
            self._log.info("stale policy report deleted", path=path)
        except ApiRefused as error:
            if error.status != 404:  # already gone is what we wanted
                self._log.warning("stale policy report not deleted", path=path, status=error.status)
        except ApiUnavailable as error:
            self._log.warning("stale policy report not deleted", path=path, error=str(error))

    def _with_uids(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """The report with each result's Service ``uid`` filled in (Services that are gone get none)."""
        namespace = report["metadata"].get("namespace")
        body = dict(report)
        if not namespace:
            return body
        uids: dict[str, str] | None = None
        results = []
        for result in report.get("results") or []:
            resources = result.get("resources")
            if not resources:
                results.append(result)
                continue
            if uids is None:
                uids = self._service_uids(namespace)
            known = uids
            resolved = [
                {**r, "uid": known[r["name"]]} if r.get("kind") == "Service" and r.get("name") in known else dict(r)
                for r in resources
            ]
            results.append({**result, "resources": resolved})
        body["results"] = results
        return body

    def _service_uids(self, namespace: str) -> dict[str, str]:
        try:
            listed = api_calls.get_json(self._api, f"/api/v1/namespaces/{namespace}/services")
        except (ApiRefused, ApiUnavailable) as error:
            self._log.warning("service uids not read", namespace=namespace, error=str(error))
            return {}
        return {
            str(item["metadata"]["name"]): str(item["metadata"]["uid"])
            for item in listed.get("items") or []
            if (item.get("metadata") or {}).get("uid")
        }
