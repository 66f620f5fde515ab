"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two replicas never both probe or alert.

The client-go algorithm, one step per call: create the Lease if absent; renew it if we hold it;
take it over if its holder has not renewed within ``leaseDurationSeconds``; otherwise follow.
Every write carries the resourceVersion it read, so of two replicas racing for an expired lease
exactly one wins (the other gets 409 and stays a follower). Time comes from an injected clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from kubernetes import client

from auditor.adapters import kubeapi as api_calls
from auditor.adapters.kubeapi import ApiRefused, ApiUnavailable

LEASE_NAME = "mesh-auditor-leader"
Clock = Callable[[], dt.datetime]


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


class LeaseElector:
    """The ``Elector`` port on a ``coordination.k8s.io`` Lease (get, create, update in ``namespace``)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        identity: str,
        *,
        duration_s: int = 15,
        clock: Clock = lambda: dt.datetime.now(dt.UTC),
        name: str = LEASE_NAME,
    ) -> None:
        self._api, self._namespace, self._identity = api, namespace, identity
        self._duration, self._clock, self._name = duration_s, clock, name
        self.last_error: str | None = None

    @property
    def duration_s(self) -> float:
        """The Lease duration in seconds (``leaseDurationSeconds``)."""
        return float(self._duration)

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases"

    def try_acquire_or_renew(self) -> bool:
        """One election step; True while this replica leads. API trouble means "not leader"."""
        try:
            leading = self._step()
        except (ApiRefused, ApiUnavailable) as error:
            self.last_error = f"the Lease cannot be read or written: {error}"
            return False
        self.last_error = None
        return leading

    def release(self) -> None:
        """On graceful shutdown: let a standby take over at once instead of after the duration."""
        try:
            lease = api_calls.get_json(self._api, f"{self._path}/{self._name}")
            if lease.get("spec", {}).get("holderIdentity") == self._identity:
                lease["spec"]["renewTime"] = _stamp(self._clock() - dt.timedelta(seconds=self._duration + 1))
                api_calls.send_json(self._api, "PUT", f"{self._path}/{self._name}", lease)
        except (ApiRefused, ApiUnavailable):
            return

    def _step(self) -> bool:
        now = self._clock()
        try:
            lease = api_calls.get_json(self._api, f"{self._path}/{self._name}")
        except ApiRefused as error:
            if error.status != 404:
                raise
            api_calls.send_json(self._api, "POST", self._path, self._new_lease(now))
            return True
        spec: dict[str, Any] = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        if holder == self._identity:
            spec["renewTime"] = _stamp(now)
        elif self._expired(spec, now):
            spec.update(self._taken_over(spec, now))
        else:
            return False
        api_calls.send_json(self._api, "PUT", f"{self._path}/{self._name}", lease)
        return True

    def _expired(self, spec: dict[str, Any], now: dt.datetime) -> bool:
        renewed = spec.get("renewTime") or spec.get("acquireTime")
        if not renewed or not spec.get("holderIdentity"):
            return True
        duration = int(spec.get("leaseDurationSeconds") or self._duration)
        return _parse(str(renewed)) + dt.timedelta(seconds=duration) < now

    def _taken_over(self, spec: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        return {
            "holderIdentity": self._identity,
            "leaseDurationSeconds": self._duration,
            "acquireTime": _stamp(now),
            "renewTime": _stamp(now),
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1,
        }

    def _new_lease(self, now: dt.datetime) -> dict[str, Any]:
        spec = self._taken_over({"leaseTransitions": -1}, now)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": spec,
        }
