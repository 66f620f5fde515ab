"""Writes the rendered PolicyReports (``auditor.render.policyreport``) with server-side apply.

One object per namespace named ``mesh-auditor``, replaced on every audit, so dashboards always
show the latest run; reports for namespaces that no longer have findings are emptied, not left
stale. A missing PolicyReport CRD is reported once and skipped: the reports are an extra view,
the JSON archive stays the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable

GROUP_PATH = "/apis/wgpolicyk8s.io/v1alpha2"


class PolicyReportWriter:
    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._written: set[str] = set()
        self._log = structlog.get_logger("auditor.policyreports")

    def write(self, reports: Sequence[Mapping[str, Any]]) -> int:
        """Apply every report; returns how many were written."""
        written = 0
        current = set()
        for report in reports:
            path = self._path(report)
            current.add(path)
            try:
                api_calls.apply_json(self._api, path, report)
                written += 1
            except ApiRefused as error:
                self._log.warning("policy report not written", path=path, status=error.status, reason=error.message)
            except ApiUnavailable as error:
                self._log.warning("policy report not written", path=path, error=str(error))
        for stale in self._written - current:
            self._empty(stale)
        self._written = current
        return written

    def _path(self, report: Mapping[str, Any]) -> str:
        name = report["metadata"]["name"]
        namespace = report["metadata"].get("namespace")
        if report["kind"] == "ClusterPolicyReport":
            return f"{GROUP_PATH}/clusterpolicyreports/{name}"
        return f"{GROUP_PATH}/namespaces/{namespace}/policyreports/{name}"

    def _empty(self, path: str) -> None:
        kind = "ClusterPolicyReport" if "/clusterpolicyreports/" in path else "PolicyReport"
        parts = path.split("/")
        metadata: dict[str, Any] = {"name": parts[-1]}
        if kind == "PolicyReport":
            metadata["namespace"] = parts[-3]
        empty = {
            "apiVersion": "wgpolicyk8s.io/v1alpha2",
            "kind": kind,
            "metadata": metadata,
            "summary": dict.fromkeys(("pass", "fail", "warn", "error", "skip"), 0),
            "results": [],
        }
        try:
            api_calls.apply_json(self._api, path, empty)
        except (ApiRefused, ApiUnavailable) as error:
            self._log.warning("stale policy report not emptied", path=path, error=str(error))
