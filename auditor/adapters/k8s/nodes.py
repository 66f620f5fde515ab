"""Nodes come and go (#13): a new node (EKS Auto Mode provisioning one) or a ztunnel pod that
was replaced or became Ready triggers a probe cycle, so the protected endpoints on that node are
probed within ``probes.node_check_s`` seconds plus the cycle's own time, not at the next period.

A thread of its own that lists Nodes and the ztunnel pods (label ``app=ztunnel``) every
``node_check_s`` seconds (two list calls; RBAC: the reader ClusterRole's nodes and pods) and
compares them with the previous listing (``core.enforcement.changed_nodes``). The first listing
only sets the baseline. Evidence of what triggered the cycle is logged with the node and the
ztunnel pod.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from kubernetes import client

from auditor.adapters import kubeapi
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.core.enforcement import EnforcementPoints, changed_nodes, enforcement_points


class NodeTrigger:
    """Calls ``trigger`` (a probe cycle) when the enforcement points change: a node added or a ztunnel pod replaced
    or now Ready (``core.enforcement.changed_nodes``). Lists Nodes and ztunnel pods every ``every_s`` seconds
    in a daemon thread until ``stop`` is set; the first listing is the baseline.
    """

    def __init__(
        self, api: client.ApiClient, trigger: Callable[[], None], every_s: float, stop: threading.Event
    ) -> None:
        self._api = api
        self._trigger = trigger
        self._every_s = every_s
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, name="node-trigger", daemon=True)
        self._log = structlog.get_logger("auditor.nodes")
        self._last: EnforcementPoints | None = None

    def start(self) -> None:
        """Starts the listing thread; returns at once."""
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` seconds for the thread to end (after ``stop`` is set). Never raises."""
        self._thread.join(timeout_s)

    def check(self) -> tuple[str, ...]:
        """One comparison: the changes seen (and a probe cycle triggered when there are any)."""
        try:
            nodes = kubeapi.get_json(self._api, "/api/v1/nodes").get("items") or []
            pods = kubeapi.get_json(self._api, "/api/v1/pods", [("labelSelector", "app=ztunnel")]).get("items") or []
        except (ApiRefused, ApiUnavailable) as error:
            self._log.warning("nodes not listed", error=str(error))
            return ()
        current = enforcement_points(nodes, pods)
        changes = () if self._last is None else changed_nodes(self._last, current)
        self._last = current
        if changes:
            self._log.info("enforcement points changed: probing now", changes=list(changes))
            self._trigger()
        return changes

    def _loop(self) -> None:
        self.check()
        while not self._stop.wait(self._every_s):
            self.check()
