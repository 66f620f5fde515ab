"""Nodes come and go (#13): a new node (EKS Auto Mode provisioning one) or a ztunnel pod that
was replaced or became Ready triggers a probe cycle, so the protected endpoints on that node are
probed at once (the cycle's own time), not at the next period.

Two threads of its own WATCH the Nodes and the ztunnel pods (label ``app=ztunnel``): each lists
(with its ``resourceVersion``), then watches from that version with bookmarks, resumes a watch
the server ends, relists on ``410 Gone`` (or an ERROR event: the version is too old), and retries
a server that stops answering with exponential backoff capped at ``bound_s`` seconds (the
setting ``daemon.node_check_s``): an event is acted on as it arrives, a missed one within that
bound after the server answers again (the relist compares states, so nothing is lost). RBAC: the
reader ClusterRole's ``list``/``watch`` on nodes and pods.

Every change of the listed state is compared with the previous one
(``core.enforcement.changed_nodes``); the first complete state (both kinds listed) is the
baseline. What triggered a cycle (the node and the ztunnel pod, by name) is logged and kept in
``changes`` (the newest ``_KEPT``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes import client

from auditor.adapters import kubeapi
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.core.enforcement import EnforcementPoints, changed_node_names, changed_nodes, enforcement_points

ZTUNNEL_SELECTOR = "app=ztunnel"  # Istio's ztunnel chart labels its pods app: ztunnel
_WATCH_S = 60  # a watch's timeoutSeconds: the server ends it, and it is resumed from its version
_BACKOFF_START_S = 0.5
_KEPT = 100


class _Gone(Exception):  # noqa: N818 - control flow inside the watch loop, never escapes it
    """The watch cannot continue from its resourceVersion: relist."""


class NodeTrigger:
    """Calls ``trigger(changes, nodes)`` (a probe cycle) when the enforcement points change: a node added or a
    ztunnel pod replaced or now Ready. ``changes`` names each change with its node and ztunnel pod
    (``core.enforcement.changed_nodes``), ``nodes`` are the node names concerned (their endpoints are probed first).
    Watches Nodes and ztunnel pods in two daemon threads until ``stop`` is set; ``bound_s`` (seconds) caps the
    retry backoff after an error. The first complete listing is the baseline.
    """

    def __init__(
        self,
        api: client.ApiClient,
        trigger: Callable[[tuple[str, ...], frozenset[str]], None],
        bound_s: float,
        stop: threading.Event,
    ) -> None:
        self._api = api
        self._trigger = trigger
        self._bound_s = max(bound_s, _BACKOFF_START_S)
        self._stop = stop
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Mapping[str, Any]] | None] = {"nodes": None, "ztunnels": None}
        self._last: EnforcementPoints | None = None
        self._threads = [
            threading.Thread(target=self._run, args=("nodes", "/api/v1/nodes", []), name="watch-nodes", daemon=True),
            threading.Thread(
                target=self._run,
                args=("ztunnels", "/api/v1/pods", [("labelSelector", ZTUNNEL_SELECTOR)]),
                name="watch-ztunnels",
                daemon=True,
            ),
        ]
        self._log = structlog.get_logger("auditor.nodes")
        self.changes: list[tuple[float, str]] = []  # (time.monotonic(), what changed), newest last

    def start(self) -> None:
        """Starts the two watch threads; returns at once."""
        for thread in self._threads:
            thread.start()

    def join(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` seconds for the threads to end (after ``stop`` is set). Never raises."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_baseline(self, timeout_s: float) -> bool:
        """True once both kinds are listed (the baseline is set), within ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._last is not None:
                    return True
            time.sleep(0.02)
        return False

    # --- one kind: list, then watch ---------------------------------------------------------------

    def _run(self, what: str, path: str, selector: list[tuple[str, str]]) -> None:
        delay = _BACKOFF_START_S
        while not self._stop.is_set():
            try:
                version = self._list(what, path, selector)
                delay = _BACKOFF_START_S
                self._watch(what, path, selector, version)
            except _Gone:
                continue
            except ApiRefused as error:
                if error.status == 410:
                    continue  # resourceVersion too old: relist at once
                self._log.warning("node trigger: watch refused", kind=what, error=str(error))
                self._stop.wait(delay)
                delay = min(delay * 2, self._bound_s)
            except (ApiUnavailable, KeyError, ValueError) as error:
                if self._stop.is_set():
                    return
                self._log.warning("node trigger: watch failed", kind=what, error=str(error))
                self._stop.wait(delay)
                delay = min(delay * 2, self._bound_s)

    def _list(self, what: str, path: str, selector: list[tuple[str, str]]) -> str:
        items: dict[str, Mapping[str, Any]] = {}
        token, version = "", ""
        while True:
            query = [*selector, ("limit", "500")] + ([("continue", token)] if token else [])
            page = kubeapi.get_json(self._api, path, query)
            for item in page.get("items") or []:
                items[_key(item)] = item
            metadata = page.get("metadata") or {}
            token, version = str(metadata.get("continue") or ""), str(metadata.get("resourceVersion") or "")
            if not token:
                break
        with self._lock:
            self._items[what] = items
        self._compare()
        return version

    def _watch(self, what: str, path: str, selector: list[tuple[str, str]], version: str) -> None:
        while not self._stop.is_set():
            query = [
                *selector,
                ("watch", "1"),
                ("allowWatchBookmarks", "true"),
                ("resourceVersion", version),
                ("timeoutSeconds", str(_WATCH_S)),
            ]
            for event in kubeapi.stream_lines(self._api, path, query, read_timeout=_WATCH_S + 10):
                if self._stop.is_set():
                    return
                version = self._apply(what, event) or version

    def _apply(self, what: str, event: Mapping[str, Any]) -> str | None:
        kind, item = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise _Gone(str(item.get("message", "watch error")))
        version = str((item.get("metadata") or {}).get("resourceVersion") or "") or None
        if kind == "BOOKMARK":
            return version
        with self._lock:
            items = self._items[what]
            if items is None:
                return version
            if kind == "DELETED":
                items.pop(_key(item), None)
            else:
                items[_key(item)] = item
        self._compare()
        return version

    def _compare(self) -> None:
        """Under no lock on entry: compares the current state with the previous one and triggers on a change."""
        with self._lock:
            nodes, pods = self._items["nodes"], self._items["ztunnels"]
            if nodes is None or pods is None:
                return
            current = enforcement_points(list(nodes.values()), list(pods.values()))
            changes: tuple[str, ...] = ()
            names: frozenset[str] = frozenset()
            if self._last is not None:
                changes, names = changed_nodes(self._last, current), changed_node_names(self._last, current)
            self._last = current
            now = time.monotonic()
            self.changes = (self.changes + [(now, change) for change in changes])[-_KEPT:]
        if changes:
            self._log.info("enforcement points changed: probing now", changes=list(changes))
            self._trigger(changes, names)


def _key(item: Mapping[str, Any]) -> str:
    metadata = item.get("metadata") or {}
    return f"{metadata.get('namespace') or ''}/{metadata['name']}"
