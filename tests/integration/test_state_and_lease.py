"""Daemon state in a ConfigMap and leader election on a Lease, against the real API server."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest

from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.state import ConfigMapStateStore, StateConflict
from testrigs.devtools.controlplane import KubeAPI

pytestmark = pytest.mark.kube


class FakeClock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def test_state_round_trips_and_a_stale_writer_is_refused(kube_api: KubeAPI, kube_namespace: str) -> None:
    with kube_api.new_client() as api:
        leader, stale = ConfigMapStateStore(api, kube_namespace), ConfigMapStateStore(api, kube_namespace)
        assert leader.load() == {}
        assert stale.load() == {}
        leader.save({"drift": {"version": 1, "alerts": []}, "outbox": {"version": 1, "entries": [], "threads": {}}})
        leader.save({"drift": {"version": 1, "alerts": [{"fingerprint": "x"}]}})
        with pytest.raises(StateConflict):
            stale.save({"drift": {"version": 1, "alerts": []}})  # it read before the leader wrote
        assert ConfigMapStateStore(api, kube_namespace).load() == {
            "drift": {"version": 1, "alerts": [{"fingerprint": "x"}]}
        }


def test_oversized_state_is_refused_before_it_reaches_the_server(kube_api: KubeAPI, kube_namespace: str) -> None:
    with kube_api.new_client() as api:
        store = ConfigMapStateStore(api, kube_namespace)
        store.load()
        noise = secrets.token_hex(1_000_000)  # 2 MB of hex that gzip cannot shrink below ~1 MB
        with pytest.raises(ValueError, match="exceeds the ConfigMap budget"):
            store.save({"noise": noise})


def test_one_leader_at_a_time_and_takeover_after_expiry(kube_api: KubeAPI, kube_namespace: str) -> None:
    clock = FakeClock()
    with kube_api.new_client() as api:
        a = LeaseElector(api, kube_namespace, "replica-a", duration_s=15, clock=clock)
        b = LeaseElector(api, kube_namespace, "replica-b", duration_s=15, clock=clock)
        assert (a.try_acquire_or_renew(), b.try_acquire_or_renew()) == (True, False)
        clock.advance(10)
        assert (a.try_acquire_or_renew(), b.try_acquire_or_renew()) == (True, False)  # renewed in time
        clock.advance(16)  # a died: no renewal for longer than the lease
        assert b.try_acquire_or_renew() is True
        assert a.try_acquire_or_renew() is False  # a came back: b holds a fresh lease
        lease = kube_api.kubectl(
            "get",
            "lease",
            "mesh-auditor-leader",
            f"--namespace={kube_namespace}",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}",
        )
        assert lease == "replica-b 1"


def test_release_hands_over_at_once(kube_api: KubeAPI, kube_namespace: str) -> None:
    clock = FakeClock()
    with kube_api.new_client() as api:
        a = LeaseElector(api, kube_namespace, "replica-a", clock=clock)
        b = LeaseElector(api, kube_namespace, "replica-b", clock=clock)
        assert a.try_acquire_or_renew() is True
        a.release()
        assert b.try_acquire_or_renew() is True


def test_two_replicas_racing_for_a_fresh_lease_elect_exactly_one(kube_api: KubeAPI, kube_namespace: str) -> None:
    clock = FakeClock()
    with kube_api.new_client() as api:
        electors = [LeaseElector(api, kube_namespace, f"replica-{i}", clock=clock) for i in range(3)]
        results = [e.try_acquire_or_renew() for e in electors]
    assert results.count(True) == 1
