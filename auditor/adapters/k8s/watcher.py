"""Keeps a live snapshot current with list + watch, for the daemon (issue: continuous audits).

One thread per resource: list (paginated), then watch from the list's resourceVersion with
bookmarks; a watch that ends is resumed, a ``410 Gone`` (or an ERROR event) relists, a full
relist happens every ``resync`` seconds anyway, and a server that stops answering is retried
with capped exponential backoff. Objects are decoded as events arrive, so ``snapshot()`` is
cheap. While a resource is not in sync (never listed, forbidden, server gone) the snapshot
carries a ``ReadProblem`` for it, so checks that need it report ERROR, never a stale pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.k8s.reader import PAGE_SIZE, refused_problem, with_type
from auditor.adapters.k8s.resources import SNAPSHOT_RESOURCES, Resource
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable
from auditor.core.decode import Decoded, DecodeError, build_snapshot, decode_object
from auditor.core.incremental import Change, ObjectKey
from auditor.core.snapshot import ReadProblem, Snapshot

Key = tuple[str, str]
MAX_PENDING_CHANGES = 10_000  # changes kept for an incremental audit; beyond, it re-audits everything


@dataclass(frozen=True, slots=True)
class Changes:
    """What the watches saw since a cursor (``SnapshotWatcher.changes_since``): the object
    changes in order, or ``changes is None`` when they cannot be told (a relist, a failed
    watch, too many changes) and ``objects`` is then everything watched. ``problems``: why the
    snapshot is not in sync, if it is not (then nothing may be audited)."""

    cursor: int
    changes: tuple[Change, ...] | None
    objects: dict[ObjectKey, tuple[Decoded, ...]] | None
    problems: tuple[ReadProblem, ...]


class _Relist(Exception):  # noqa: N818 - control flow inside the watch loop, never escapes it
    """The watch cannot continue from its resourceVersion (410 Gone, or an ERROR event)."""


@dataclass
class _Store:
    """What one resource's thread knows: decoded objects, and why it is not in sync (if so)."""

    objects: dict[Key, tuple[Decoded, ...]] = field(default_factory=dict)
    problem: ReadProblem | None = None
    synced: bool = False


@dataclass(frozen=True, slots=True)
class WatchTiming:
    """Watch timings in seconds: full relists every ``resync``; after an error, retries from
    ``backoff_start`` doubling up to ``backoff_max``."""

    resync: float = 300.0  # seconds between full relists: repairs anything a watch missed
    backoff_start: float = 0.5  # seconds before the first retry after an error
    backoff_max: float = 30.0  # cap, so a long outage is retried every 30 s


class SnapshotWatcher:
    """The ``WatchedSnapshot`` port: a snapshot that stays current; ``on_change`` is called after every change."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        timing: WatchTiming | None = None,
        on_change: Callable[[], None] | None = None,
        resources: tuple[Resource, ...] = SNAPSHOT_RESOURCES,
    ) -> None:
        self._api = api
        self._timing = timing or WatchTiming()
        self._on_change = on_change or (lambda: None)
        self._resources = resources
        self._stores = {r.kind: _Store(problem=_not_synced(r)) for r in resources}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._log = structlog.get_logger("auditor.k8s.watch")
        # Object changes for the daemon's incremental audit: _pending holds those after
        # _pending_from; _reset_at is the last event that cannot be told as a change.
        self._version = 0
        self._pending: list[Change] = []
        self._pending_from = 0
        self._reset_at = 0

    def start(self) -> None:
        """Start one watch thread per resource kind (list, then watch; relist on error or 410)."""
        for resource in self._resources:
            thread = threading.Thread(target=self._run, args=(resource,), name=f"watch-{resource.plural}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching. Threads blocked in a watch read end when it does (daemon threads);
        nothing they do after this call is visible, as ``snapshot()`` is no longer asked."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_synced(self, timeout: float) -> bool:
        """True once every kind has been listed, within ``timeout`` seconds; False otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(store.synced for store in self._stores.values()):
                    return True
            time.sleep(0.05)
        return False

    def changes_since(self, cursor: int) -> Changes:
        """The changes after ``cursor`` (0: none seen yet, everything is returned), atomically
        with the objects they lead to and the read problems of that moment."""
        with self._lock:
            problems = tuple(store.problem for store in self._stores.values() if store.problem is not None)
            if cursor == self._version:
                return Changes(cursor, (), None, problems)
            if cursor <= 0 or cursor < self._reset_at or cursor < self._pending_from:
                objects = {
                    (kind, *key): group for kind, store in self._stores.items() for key, group in store.objects.items()
                }
                return Changes(self._version, None, objects, problems)
            changes = tuple(self._pending[cursor - self._pending_from :])
            # What every reader has seen can go: one daemon reads, so what it asked for is seen.
            self._pending = list(changes)
            self._pending_from = cursor
            return Changes(self._version, changes, None, problems)

    def _record(self, change: Change | None) -> None:
        """Under the lock: one more event; None when it cannot be told as one object's change."""
        self._version += 1
        if change is None or len(self._pending) >= MAX_PENDING_CHANGES:
            self._reset_at, self._pending, self._pending_from = self._version, [], self._version
            return
        self._pending.append(change)

    def snapshot(self) -> Snapshot:
        """The current snapshot, at once; a kind not in sync is a ``ReadProblem`` in it."""
        with self._lock:
            objects = [obj for store in self._stores.values() for group in store.objects.values() for obj in group]
            problems = [store.problem for store in self._stores.values() if store.problem is not None]
        return build_snapshot(objects, problems=problems, live=True)

    # --- one resource -----------------------------------------------------------------------

    def _run(self, resource: Resource) -> None:
        delay = self._timing.backoff_start
        while not self._stop.is_set():
            try:
                version = self._list(resource)
                delay = self._timing.backoff_start
                self._watch_until_resync(resource, version)
            except _Relist:
                continue
            except ApiRefused as error:
                if error.status == 410:  # resourceVersion too old: relist at once
                    continue
                self._fail(resource, error)
                self._stop.wait(delay)
                delay = min(delay * 2, self._timing.backoff_max)
            except (ApiUnavailable, DecodeError) as error:
                self._fail(resource, error)
                self._stop.wait(delay)
                delay = min(delay * 2, self._timing.backoff_max)

    def _list(self, resource: Resource) -> str:
        objects: dict[Key, tuple[Decoded, ...]] = {}
        token, version = "", ""
        while True:
            query = [("limit", str(PAGE_SIZE))] + ([("continue", token)] if token else [])
            page = api_calls.get_json(self._api, resource.list_path, query)
            for item in page.get("items") or []:
                objects[_key(item)] = _decode(item, resource)
            metadata = page.get("metadata") or {}
            token, version = str(metadata.get("continue") or ""), str(metadata.get("resourceVersion") or "")
            if not token:
                break
        with self._lock:
            self._stores[resource.kind] = _Store(objects=objects, synced=True)
            self._record(None)
        self._on_change()
        return version

    def _watch_until_resync(self, resource: Resource, version: str) -> None:
        deadline = time.monotonic() + self._timing.resync
        while not self._stop.is_set() and time.monotonic() < deadline:
            seconds = max(1, int(deadline - time.monotonic()))
            query = [
                ("watch", "1"),
                ("allowWatchBookmarks", "true"),
                ("resourceVersion", version),
                ("timeoutSeconds", str(seconds)),
            ]
            for event in api_calls.stream_lines(self._api, resource.list_path, query, read_timeout=seconds + 10):
                version = self._apply(resource, event) or version
                if self._stop.is_set():
                    return

    def _apply(self, resource: Resource, event: Mapping[str, Any]) -> str | None:
        kind, item = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise _Relist(str(item.get("message", "watch error")))
        version = str((item.get("metadata") or {}).get("resourceVersion") or "") or None
        if kind == "BOOKMARK":
            return version
        key = _key(item)
        with self._lock:
            store = self._stores[resource.kind]
            before = store.objects.get(key, ())
            if kind == "DELETED":
                store.objects.pop(key, None)
                after: tuple[Decoded, ...] = ()
            else:
                after = store.objects[key] = _decode(item, resource)
            self._record(Change((resource.kind, *key), before, after))
        self._on_change()
        return version

    def _fail(self, resource: Resource, error: Exception) -> None:
        if self._stop.is_set():
            return  # stopping closes the connections under the watches: not a failure to report
        if isinstance(error, ApiRefused):
            problem = refused_problem(resource, error)
        else:
            problem = ReadProblem(
                resource.kind,
                f"{resource.api_version} {resource.plural}",
                f"not in sync: {error}",
                resource.permission(),
            )
        with self._lock:
            store = self._stores[resource.kind]
            store.synced, store.problem = False, problem
            self._record(None)
        self._log.warning("watch failed", resource=resource.qualified, error=str(error))
        self._on_change()


def _key(item: Mapping[str, Any]) -> Key:
    metadata = item.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _decode(item: Mapping[str, Any], resource: Resource) -> tuple[Decoded, ...]:
    return decode_object(with_type(item, resource), source=f"cluster:{resource.qualified}")


def _not_synced(resource: Resource) -> ReadProblem:
    return ReadProblem(
        resource.kind, f"{resource.api_version} {resource.plural}", "not listed yet", resource.permission()
    )
