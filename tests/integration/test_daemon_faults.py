"""The daemon under faults, end to end: real API server, the Slack stand-in over HTTP, the daemon.

Each test asserts the exact Slack transcript (which messages, in which threads, each once):
- a corrupt state ConfigMap (issue #10.3) is set aside and the next drift still reaches Slack;
- a permanently refused ``chat.update`` (issue #10.2) does not stop the next drift;
- an alert that opens twice has two incidents, each resolved in its own thread (#18.1);
- two replicas while Slack answers 429 ``Retry-After: 5``: never two leaders, one message (#18.2);
- a reply Slack stored while the daemon died is not repeated by the next leader (#18.3);
- delivery retries on its own timer, not at the next audit (#18.6).
Figures are printed as ``FIGURE`` lines (the closing note's numbers).
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testrigs.devtools.controlplane import KubeAPI
from tests.integration.test_daemon import PERMISSIVE_ORDERS, _eventually, retail, running_daemon, slack
from tests.slack_server import SlackState

pytestmark = pytest.mark.kube
__all__ = ["retail", "slack"]  # fixtures used by name

PERMISSIVE_CHECKOUT = PERMISSIVE_ORDERS.replace("orders-debug", "checkout-debug").replace(
    "name: orders}", "name: checkout}"
)
ORDERS_DRIFT = "Drift: strict-mtls on default/orders"
ORDERS_RESOLVED = "Resolved: strict-mtls on default/orders"
CHECKOUT_DRIFT = "Drift: strict-mtls on default/checkout"


@pytest.fixture(autouse=True)
def _no_debug_policies_left(kube_api: KubeAPI) -> Iterator[None]:
    """The drifts these tests apply live in ``default``: a failing test must not leave them to the next."""
    yield
    for name in ("orders-debug", "checkout-debug"):
        kube_api.kubectl("delete", "peerauthentication", name, "--namespace=default", "--ignore-not-found")


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


CORRUPT = {
    "invalid gzip": b"this is not gzip at all",
    "gzip of invalid JSON": _gz(b'{"drift": {"version": 1, "alerts": ['),
    "wrong shape": _gz(json.dumps({"drift": ["an", "array"], "outbox": 7}).encode()),
    "unknown state version": _gz(json.dumps({"drift": {"version": 99, "alerts": []}}).encode()),
}


def _store_raw_state(kube: KubeAPI, namespace: str, raw: bytes) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "mesh-auditor-state", "namespace": namespace},
        "binaryData": {"state.json.gz": base64.b64encode(raw).decode("ascii")},
    }
    kube.apply_text(json.dumps(manifest))


def _json(kube: KubeAPI, *args: str) -> Any:
    return json.loads(kube.kubectl(*args, "-o", "json"))


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_state_is_set_aside_and_the_next_drift_still_reaches_slack(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path, kind: str
) -> None:
    base, state = slack
    _store_raw_state(retail, kube_namespace, CORRUPT[kind])
    with running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "reports") as daemon:
        _eventually(lambda: daemon.leading)
        ready, says = daemon.readiness()
        assert ready
        assert says.startswith("leader; state was reset at ")
        _eventually(lambda: len(state.top_level()) == 1)
        [(notice, [])] = state.transcript()
        assert notice.startswith(":warning: mesh-auditor lost its alert state and started from empty state")
        assert daemon.metrics.state_resets._value.get() == 1
        injected = time.monotonic()
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 2, timeout=10)  # well within one cycle (30 s here)
        print(f"\nFIGURE drift-to-slack after a corrupt state ({kind}): {time.monotonic() - injected:.2f} s")
        assert state.transcript() == [(notice, []), (ORDERS_DRIFT, [])]
    maps = _json(retail, "get", "configmaps", f"--namespace={kube_namespace}")["items"]
    [aside] = [m for m in maps if m["metadata"]["name"].startswith("mesh-auditor-state-corrupt-")]
    assert aside["binaryData"]["state.json.gz"] == base64.b64encode(CORRUPT[kind]).decode("ascii")
    assert aside["metadata"]["annotations"]["mesh-auditor.io/set-aside-reason"]
    assert aside["metadata"]["name"] in says
    events = _json(retail, "get", "events", f"--namespace={kube_namespace}")["items"]
    assert [(e["reason"], e["type"]) for e in events] == [("StateReset", "Warning")]


def test_a_permanently_refused_update_does_not_stop_the_next_drift(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    """Someone deleted the alert message: its resolution cannot update it (message_not_found) nor
    reply to it (thread_not_found): it is posted afresh; the next drift is posted within one cycle."""
    base, state = slack
    with running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "reports") as daemon:
        _eventually(lambda: daemon.leading and daemon.metrics.last_success.labels("static")._value.get() > 0)
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 1)
        state.delete(state.top_level()[0]["ts"])
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
        _eventually(lambda: len(state.top_level()) == 1)  # the fresh "Resolved" message
        injected = time.monotonic()
        retail.apply_text(PERMISSIVE_CHECKOUT)
        _eventually(lambda: len(state.top_level()) == 2, timeout=5)
        print(f"\nFIGURE drift-to-slack after a refused update: {time.monotonic() - injected:.2f} s")
        time.sleep(1.0)  # nothing else arrives
        fresh = state.top_level()[0]
        assert state.transcript() == [(ORDERS_RESOLVED, []), (CHECKOUT_DRIFT, [])]
        assert state.update_texts(fresh["ts"]) == [ORDERS_RESOLVED]  # re-rendered as the full alert
        retail.kubectl("delete", "peerauthentication", "checkout-debug", "--namespace=default")


def test_an_alert_that_opens_twice_has_two_incidents_each_resolved_in_its_own_thread(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    base, state = slack
    with running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "reports") as daemon:
        _eventually(lambda: daemon.leading and daemon.metrics.last_success.labels("static")._value.get() > 0)
        for round_ in (1, 2):
            retail.apply_text(PERMISSIVE_ORDERS)
            _eventually(functools.partial(_top_level_count, state, round_))
            assert daemon.metrics.alerts_open._value.get() == 1
            retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
            _eventually(lambda: len(state.replies(state.top_level()[-1]["ts"])) == 1)
            assert daemon.metrics.alerts_open._value.get() == 0
        time.sleep(1.0)
    assert state.transcript() == [(ORDERS_DRIFT, [ORDERS_RESOLVED]), (ORDERS_DRIFT, [ORDERS_RESOLVED])]
    for alert in state.top_level():
        assert state.update_texts(alert["ts"]) == [ORDERS_RESOLVED]


def test_two_replicas_through_429s_never_both_lead_and_post_once(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    """Slack answers 429 Retry-After 5 four times: renewal goes on, no second leader, one post."""
    base, state = slack
    with (
        running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "a") as a,
        running_daemon(retail, kube_namespace, "replica-b", base, tmp_path / "b") as b,
    ):
        _eventually(lambda: a.leading or b.leading)
        overlap = _Overlap(a, b)
        overlap.start()
        try:
            state.fail_next(4, 429, retry_after=5)
            retail.apply_text(PERMISSIVE_ORDERS)
            _eventually(lambda: len(state.top_level()) == 1, timeout=40)
            time.sleep(2.0)
            leader = a if a.leading else b
            took = _kill_and_time_takeover(leader, b if leader is a else a)
        finally:
            overlap.stop()
        print(f"\nFIGURE longest time two replicas both believed they led: {overlap.longest:.3f} s")
        print(f"FIGURE takeover after the leader died (Lease 2 s): {took:.2f} s")
        assert overlap.longest == 0.0
        assert state.transcript() == [(ORDERS_DRIFT, [])]
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")


def _top_level_count(state: SlackState, expected: int) -> bool:
    return len(state.top_level()) == expected


class _Overlap:
    """Samples both replicas' belief every 2 ms; ``longest``: the longest stretch both led."""

    def __init__(self, *replicas: Any) -> None:
        self._replicas, self._stop, self.longest = replicas, threading.Event(), 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        since: float | None = None
        while not self._stop.is_set():
            both = sum(1 for r in self._replicas if r.leading) > 1
            now = time.monotonic()
            if both and since is None:
                since = now
            if since is not None:
                self.longest = max(self.longest, now - since)
                since = since if both else None
            time.sleep(0.002)


def _kill_and_time_takeover(leader: Any, standby: Any) -> float:
    """The leader dies without releasing the Lease (its jobs stop, nothing is cleaned up)."""
    leader._scheduler.shutdown(wait=False)
    leader._stopping.set()
    return _eventually(lambda: standby.leading, timeout=15)


def test_a_reply_slack_stored_while_the_daemon_died_is_not_repeated(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    """Slack stores the Resolved reply; the daemon dies before the answer; the next leader finds the
    reply with conversations.replies and adopts it."""
    base, state = slack
    with running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "a") as a:
        _eventually(lambda: a.leading and a.metrics.last_success.labels("static")._value.get() > 0)
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 1)
        state.answer_delay_s = 3.0
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
        _eventually(lambda: len(state.replies(state.top_level()[0]["ts"])) == 1)
        _kill(a)  # dies while Slack's answer is on its way
        state.answer_delay_s = 0.0
        with running_daemon(retail, kube_namespace, "replica-b", base, tmp_path / "b") as b:
            _eventually(lambda: b.leading, timeout=15)
            _eventually(lambda: "conversations.replies" in state.requests)
            _eventually(lambda: len(state.updates) == 1)  # the update after the adopted reply
            time.sleep(1.0)
    assert state.transcript() == [(ORDERS_DRIFT, [ORDERS_RESOLVED])]


def _kill(daemon: Any) -> None:
    """As kill -9: no job finishes its bookkeeping, the Lease is not released."""
    daemon._stopping.set()
    daemon._memory = None
    daemon._scheduler.shutdown(wait=False)


def test_delivery_retries_on_its_own_timer(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    """Slack down for 3 calls: the alert arrives after the backoff (1 + 2 + 4 s), not at the next
    full audit (30 s here, 10 minutes by default)."""
    base, state = slack
    with running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "reports") as daemon:
        _eventually(lambda: daemon.leading and daemon.metrics.last_success.labels("static")._value.get() > 0)
        state.fail_next(3, 503)
        injected = time.monotonic()
        retail.apply_text(PERMISSIVE_ORDERS)
        took = _eventually(lambda: len(state.top_level()) == 1, timeout=20)
        print(f"\nFIGURE drift-to-slack through 3x503 (backoff 1+2+4 s): {time.monotonic() - injected:.2f} s")
        assert took < 15
        assert state.transcript() == [(ORDERS_DRIFT, [])]
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")


def test_an_alert_whose_service_is_deleted_is_closed_in_its_thread(
    retail: KubeAPI, kube_namespace: str, slack: tuple[str, SlackState], tmp_path: Path
) -> None:
    """#18.4: the drifting Service is deleted: its alert is closed with the reason, in its thread,
    re-rendered as closed, and no longer counted as open."""
    base, state = slack
    with running_daemon(retail, kube_namespace, "replica-a", base, tmp_path / "reports") as daemon:
        _eventually(lambda: daemon.leading and daemon.metrics.last_success.labels("static")._value.get() > 0)
        retail.apply_text(PERMISSIVE_ORDERS)
        _eventually(lambda: len(state.top_level()) == 1)
        retail.kubectl("delete", "service", "orders", "--namespace=default")
        _eventually(lambda: len(state.replies(state.top_level()[0]["ts"])) == 1)
        time.sleep(1.0)
        closing = state.replies(state.top_level()[0]["ts"])[0]["blocks"][0]["text"]["text"]
        assert "default/orders no longer exists (its Service or namespace was deleted)" in closing
        assert state.transcript() == [(ORDERS_DRIFT, ["Closed: strict-mtls on default/orders"])]
        assert state.update_texts(state.top_level()[0]["ts"]) == ["Closed: strict-mtls on default/orders"]
        assert daemon.metrics.alerts_open._value.get() == 0
        retail.kubectl("delete", "peerauthentication", "orders-debug", "--namespace=default")
