"""The watch-based snapshot follows the real API server: changes, reconnection, relists."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.k8s.watcher import SnapshotWatcher, WatchTiming
from auditor.adapters.kubeapi import ApiUnavailable
from auditor.adapters.rules.loader import load_rules
from auditor.core.audit import run_static_audit
from auditor.core.decode import Decoded, build_snapshot
from auditor.core.incremental import IncrementalAudit
from auditor.core.model import Status
from auditor.core.snapshot import Snapshot
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT, Case, materialize
from tests.integration.live import AppliedCase

pytestmark = pytest.mark.kube
RULES = ROOT / "rules" / "retail-store.yaml"
FAST = WatchTiming(resync=30.0, backoff_start=0.1, backoff_max=0.5)


def _statuses(snapshot: Snapshot) -> dict[tuple[str, str], Status]:
    posture = load_rules([str(RULES)])
    values = {("default/catalog", "x-auth-token"): "internal-retail-token"}
    return {(f.target, f.check.id): f.status for f in run_static_audit(snapshot, posture, values)}


def _eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail("the watcher never showed the change")


@pytest.fixture
def retail(kube_api: KubeAPI, tmp_path: Path) -> Iterator[KubeAPI]:
    example = ROOT / "examples" / "retail-store"
    case = Case(name="retail", directory=example, description="", base=example, remove=(), rules=RULES, env={})
    with AppliedCase(kube_api, materialize(case, tmp_path), tmp_path):
        yield kube_api


@pytest.fixture
def watcher(retail: KubeAPI) -> Iterator[SnapshotWatcher]:
    with retail.new_client() as api:
        watching = SnapshotWatcher(api, timing=FAST)
        watching.start()
        try:
            assert watching.wait_synced(45), "the watcher never listed every resource"
            yield watching
        finally:
            watching.stop()


def test_synced_snapshot_audits_like_a_one_shot_read(watcher: SnapshotWatcher) -> None:
    """Once synced: no read problems, and the retail example passes everything."""
    snapshot = watcher.snapshot()
    assert snapshot.problems == ()
    assert set(_statuses(snapshot).values()) == {Status.PASS}


def test_a_config_change_is_seen_within_seconds(retail: KubeAPI, watcher: SnapshotWatcher) -> None:
    """A waypoint label typo and a deleted PeerAuthentication reach the snapshot by watch events."""
    retail.kubectl("label", "service", "catalog", "istio.io/use-waypoint=catalog-waypiont", "--overwrite")
    try:
        _eventually(
            lambda: _statuses(watcher.snapshot())[("default/catalog", "waypoint-enrollment.bound")] is Status.FAIL
        )
    finally:
        retail.kubectl("label", "service", "catalog", "istio.io/use-waypoint=catalog-waypoint", "--overwrite")
    _eventually(lambda: _statuses(watcher.snapshot())[("default/catalog", "waypoint-enrollment.bound")] is Status.PASS)
    retail.kubectl("delete", "peerauthentication", "default", "--namespace=istio-system")
    _eventually(lambda: _statuses(watcher.snapshot())[("default/ui", "strict-mtls.peer-authentication")] is Status.FAIL)


def test_watch_reconnects_after_the_stream_breaks(retail: KubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken watch marks the resource out of sync (ERROR, never stale PASS), then recovers."""
    real = api_calls.stream_lines
    broken: dict[str, int] = {}

    def flaky(api: Any, path: str, query: list[tuple[str, str]], read_timeout: float) -> Iterator[dict[str, Any]]:
        if path.endswith("/services") and broken.get(path, 0) < 2:
            broken[path] = broken.get(path, 0) + 1
            raise ApiUnavailable("injected: connection reset")
        return real(api, path, query, read_timeout)

    monkeypatch.setattr(api_calls, "stream_lines", flaky)
    with retail.new_client() as api:
        watching = SnapshotWatcher(api, timing=FAST)
        watching.start()
        try:
            _eventually(lambda: broken.get("/api/v1/services", 0) == 2)
            assert watching.wait_synced(45)
            retail.kubectl("label", "service", "orders", "mesh-auditor-test=seen", "--overwrite")
            _eventually(
                lambda: any(s.meta.labels.get("mesh-auditor-test") == "seen" for s in watching.snapshot().services)
            )
        finally:
            watching.stop()
            retail.kubectl("label", "service", "orders", "mesh-auditor-test-")


def test_watch_error_event_triggers_a_relist(retail: KubeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ERROR event (e.g. 410 Gone: resourceVersion too old) makes the watcher relist, not stop."""
    real_stream, real_get = api_calls.stream_lines, api_calls.get_json
    lists: dict[str, int] = {}

    def counting_get(api: Any, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        lists[path] = lists.get(path, 0) + 1
        return real_get(api, path, query)

    def gone_once(api: Any, path: str, query: list[tuple[str, str]], read_timeout: float) -> Iterator[dict[str, Any]]:
        if path.endswith("/gateways") and lists.get(path, 0) == 1:
            return iter([{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}])
        return real_stream(api, path, query, read_timeout)

    monkeypatch.setattr(api_calls, "get_json", counting_get)
    monkeypatch.setattr(api_calls, "stream_lines", gone_once)
    with retail.new_client() as api:
        watching = SnapshotWatcher(api, timing=FAST)
        watching.start()
        try:
            _eventually(lambda: lists.get("/apis/gateway.networking.k8s.io/v1/gateways", 0) >= 2)
            assert watching.wait_synced(45)
            assert [g.meta.name for g in watching.snapshot().gateways] == ["catalog-waypoint"]
        finally:
            watching.stop()


def test_incremental_audit_from_watch_events_equals_a_full_audit(retail: KubeAPI, watcher: SnapshotWatcher) -> None:
    """The daemon's incremental audit (#16), fed by the watches' object changes, gives after each
    real change exactly the full audit of the snapshot of the same moment."""
    posture = load_rules([str(RULES)])
    values = {("default/catalog", "x-auth-token"): "internal-retail-token"}
    start = watcher.changes_since(0)
    assert start.changes is None
    assert start.objects is not None
    assert start.problems == ()
    audit = IncrementalAudit(start.objects, posture, values, live=True)
    cursor = start.cursor
    assert audit.findings == run_static_audit(watcher.snapshot(), posture, values)
    edits = [
        ("label", "service", "catalog", "istio.io/use-waypoint=catalog-waypiont", "--overwrite"),
        ("label", "service", "catalog", "istio.io/use-waypoint=catalog-waypoint", "--overwrite"),
        ("label", "namespace", "default", "mesh-auditor-test=seen", "--overwrite"),
        ("delete", "peerauthentication", "default", "--namespace=istio-system"),
    ]
    for edit in edits:
        retail.kubectl(*edit)
        _eventually(functools.partial(_moved_on, watcher, cursor))
        time.sleep(0.5)  # let the burst (a label is one event; a relist could add more) arrive
        delta = watcher.changes_since(cursor)
        assert delta.problems == ()
        if delta.changes is None:
            assert delta.objects is not None
            audit = IncrementalAudit(delta.objects, posture, values, live=True)
        else:
            audit.apply(delta.changes)
        cursor = delta.cursor
        expected = run_static_audit(
            build_snapshot([o for g in _objects(watcher) for o in g], live=True), posture, values
        )
        assert audit.findings == expected, f"after kubectl {' '.join(edit)}"
    retail.kubectl("label", "namespace", "default", "mesh-auditor-test-")


def _moved_on(watcher: SnapshotWatcher, cursor: int) -> bool:
    return watcher.changes_since(cursor).cursor != cursor


def _objects(watcher: SnapshotWatcher) -> list[tuple[Decoded, ...]]:
    """What the watcher holds at the cursor just read (nothing changes meanwhile in this test)."""
    everything = watcher.changes_since(0).objects
    assert everything is not None
    return list(everything.values())
