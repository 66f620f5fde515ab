"""Runs a probe plan as pods: one pod per batch, watched to the end, its report read, then deleted.

Implements ``auditor.ports.ProbeRunner``. A run:

1. sweeps orphans: pods labelled ``app.kubernetes.io/managed-by=mesh-auditor`` from other runs
   that have finished or are older than ``orphan_age_s`` (a crashed auditor leaves them);
2. creates every batch's pod (``podspec.probe_pod``), so the pods run in parallel;
3. watches them (list, then watch from its resourceVersion) until each has Succeeded or Failed
   or the run's deadline passes;
4. reads each termination message (``probes.wire.parse_result``) and rejects a report whose run
   id is not this run's;
5. always deletes every pod it created (``finally``), even when a step raised.

Whatever the cluster does becomes a ``BatchProblem``, never an exception: a refused create
(RBAC, probe-guard admission) or a pod still Pending at the deadline (no Auto Mode capacity,
image pull failure) is INCONCLUSIVE with the reason; a pod that ran but left no usable report
is ERROR. Secret header values never travel in a pod spec (``podspec.by_reference``: the kubelet
reads them from a Secret); a manifest that would still hold one is not created (ERROR). Nothing
here logs a plan.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from auditor.adapters.probepods.kube import ApiRefused, ApiUnavailable, PodApi
from auditor.adapters.probepods.podspec import (
    CONTAINER,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    RUN_ID_LABEL,
    PodOptions,
    SecretValueError,
    by_reference,
    probe_pod,
    secret_values,
    spec_strings,
)
from auditor.core.model import Status
from auditor.core.probing.probeplan import ProbeBatch, RunPlan
from auditor.core.probing.probereport import BatchProblem, BatchReport, RunReport, observations_from
from probes.wire import CompactRunResult, ResultError, parse_result

_TERMINAL = frozenset({"Succeeded", "Failed"})
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """Deadlines and housekeeping (``auditor.settings.ProbeSettings``)."""

    pod: PodOptions = field(default_factory=PodOptions)
    deadline_s: float = 300.0
    orphan_age_s: float = 900.0
    sweep_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Created:
    batch: ProbeBatch
    namespace: str
    name: str

    @property
    def ref(self) -> str:
        return f"Pod {self.namespace}/{self.name}"


STOP_CHECK_S = 3  # longest watch between two looks at the stop event (then it lists again)


class PodProbeRunner:
    """Probe batches as pods through one API client (see the module docstring)."""

    def __init__(
        self,
        pods: PodApi,
        options: RunnerOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        stop: threading.Event | None = None,
    ) -> None:
        # ``stop`` (the daemon's SIGTERM): create no more pods, stop waiting within a few
        # seconds, and delete what was created (the ``finally`` below), well inside the grace period.
        self._stop = stop or threading.Event()
        self._pods = pods
        self._options = options
        self._clock = clock
        self._now = now
        self._log = structlog.get_logger("auditor.probepods")

    def run(self, plan: RunPlan) -> RunReport:
        """The ``ProbeRunner`` port: sweep other runs' finished or orphaned probe pods, create one
        pod per batch, wait up to ``deadline_s`` seconds for their termination reports, delete the
        pods. Never raises for what the cluster does: refusals, capacity and deadlines are
        ``BatchProblem``s."""
        namespaces = {b.identity.namespace for b in plan.batches} | set(self._options.sweep_namespaces)
        self.sweep(sorted(namespaces), keep_run=plan.run_id)
        deadline = self._clock() + self._options.deadline_s
        created: list[_Created] = []
        try:
            reports: dict[str, BatchReport] = {}
            for batch in plan.batches:
                if self._stop.is_set():
                    break
                refused = self._create(batch, plan, created)
                if refused is not None:
                    reports[batch.key] = refused
            finals = self._await(created, plan.run_id, deadline)
            reports.update({c.batch.key: self._report(c, finals.get(c.name), plan.run_id) for c in created})
            stopped = "not run: the auditor was stopping"
            return RunReport(
                plan.run_id,
                tuple(reports.get(b.key) or _problem(b.key, "", Status.INCONCLUSIVE, stopped) for b in plan.batches),
            )
        finally:
            self._delete(created)

    # --- sweeping ---------------------------------------------------------------------------

    def sweep(self, namespaces: Sequence[str], *, keep_run: str = "") -> list[str]:
        """Delete other runs' pods that finished or outlived ``orphan_age_s``; return their refs."""
        swept: list[str] = []
        for namespace in namespaces:
            try:
                items = self._pods.list_pods(namespace, f"{MANAGED_SELECTOR},{RUN_ID_LABEL}").get("items") or []
                for pod in (p for p in items if self._is_orphan(p, keep_run)):
                    self._pods.delete(namespace, pod["metadata"]["name"])
                    swept.append(f"Pod {namespace}/{pod['metadata']['name']}")
            except (ApiRefused, ApiUnavailable) as error:
                self._log.warning("orphan sweep failed", namespace=namespace, error=str(error))
        if swept:
            self._log.info("swept orphan probe pods", pods=swept)
        return swept

    def _is_orphan(self, pod: dict[str, Any], keep_run: str) -> bool:
        if (pod["metadata"].get("labels") or {}).get(RUN_ID_LABEL) == keep_run:
            return False
        return _phase(pod) in _TERMINAL or self._age_s(pod) >= self._options.orphan_age_s

    def _age_s(self, pod: dict[str, Any]) -> float:
        created = pod["metadata"].get("creationTimestamp")
        if not created:
            return math.inf
        return (self._now() - dt.datetime.fromisoformat(created)).total_seconds()

    # --- creating and deleting --------------------------------------------------------------

    def _create(self, batch: ProbeBatch, plan: RunPlan, created: list[_Created]) -> BatchReport | None:
        """Create the batch's pod (recorded in ``created``), or report why it could not be."""
        namespace = batch.identity.namespace
        try:
            wire, secret_env = by_reference(batch, plan)
            manifest = probe_pod(batch, wire.model_dump_json(), plan.run_id, self._options.pod, secret_env=secret_env)
            _refuse_secret_values(batch, plan, manifest)
        except SecretValueError as error:
            reason = f"the probe pod was not created in namespace {namespace}: {error}"
            return BatchReport(batch.key, "(not created)", problem=BatchProblem(Status.ERROR, reason))
        try:
            pod = self._pods.create(namespace, manifest)
        except (ApiRefused, ApiUnavailable) as error:
            reason = f"the probe pod could not be created in namespace {namespace}: {error}{_hint(error)}"
            return BatchReport(batch.key, "(not created)", problem=BatchProblem(Status.INCONCLUSIVE, reason))
        created.append(_Created(batch, namespace, pod["metadata"]["name"]))
        self._log.info("probe pod created", pod=created[-1].ref, batch=batch.key, requests=len(batch.requests))
        return None

    def _delete(self, created: Iterable[_Created]) -> None:
        for pod in created:
            try:
                self._pods.delete(pod.namespace, pod.name)
            except (ApiRefused, ApiUnavailable) as error:
                # The next run's sweep removes it; never mask the run's own outcome.
                self._log.warning("probe pod not deleted", pod=pod.ref, error=str(error))

    # --- waiting ------------------------------------------------------------------------------

    def _await(self, created: list[_Created], run_id: str, deadline: float) -> dict[str, dict[str, Any] | None]:
        """The last state of every created pod: terminal, or whatever it was at the deadline."""
        finals: dict[str, dict[str, Any] | None] = {}
        for namespace in sorted({c.namespace for c in created}):
            names = {c.name for c in created if c.namespace == namespace}
            try:
                finals.update(self._watch_namespace(namespace, names, f"{RUN_ID_LABEL}={run_id}", deadline))
            except (ApiRefused, ApiUnavailable) as error:
                self._log.warning("lost track of probe pods", namespace=namespace, error=str(error))
                finals.update({name: {"lost": str(error)} for name in names})
        return finals

    def _watch_namespace(
        self, namespace: str, names: set[str], selector: str, deadline: float
    ) -> dict[str, dict[str, Any] | None]:
        latest: dict[str, dict[str, Any] | None] = {}
        while True:
            listing = self._pods.list_pods(namespace, selector)
            by_name = {p["metadata"]["name"]: p for p in listing.get("items") or []}
            latest = {name: by_name.get(name) for name in names}
            if _all_done(latest) or self._clock() >= deadline or self._stop.is_set():
                return latest
            remaining = min(STOP_CHECK_S, max(1, math.ceil(deadline - self._clock())))
            version = str(listing["metadata"].get("resourceVersion", ""))
            for event in self._pods.watch(namespace, selector, version, remaining):
                if event.get("type") == "ERROR":
                    break  # e.g. 410 Gone: the resourceVersion expired; list again
                pod = event["object"]
                if pod["metadata"]["name"] in names:
                    latest[pod["metadata"]["name"]] = None if event["type"] == "DELETED" else pod
                if _all_done(latest) or self._clock() >= deadline or self._stop.is_set():
                    return latest

    # --- reading reports ----------------------------------------------------------------------

    def _report(self, created: _Created, pod: dict[str, Any] | None, run_id: str) -> BatchReport:
        key, ref = created.batch.key, created.ref
        if pod is None:
            return _problem(key, ref, Status.ERROR, "the probe pod was deleted before it finished")
        if "lost" in pod:
            reason = f"the API server stopped answering while the pod ran: {pod['lost']}"
            return _problem(key, ref, Status.INCONCLUSIVE, reason)
        phase = _phase(pod)
        if phase == "Succeeded":
            return _read_report(created, _terminated(pod), run_id)
        if phase == "Failed":
            return _failed(key, ref, pod)
        reason = f"still {phase or 'Pending'} at the {self._options.deadline_s:g} s deadline: {_why_not_done(pod)}"
        return _problem(key, ref, Status.INCONCLUSIVE, reason)


def _all_done(latest: dict[str, dict[str, Any] | None]) -> bool:
    return all(pod is None or _phase(pod) in _TERMINAL for pod in latest.values())


def _phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER), {})


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return dict((_container_status(pod).get("state") or {}).get("terminated") or {})


def _problem(key: str, ref: str, status: Status, reason: str) -> BatchReport:
    return BatchReport(key, ref, problem=BatchProblem(status, reason))


def _refuse_secret_values(batch: ProbeBatch, plan: RunPlan, manifest: dict[str, Any]) -> None:
    """Last check before a pod spec leaves the auditor: no secret header value anywhere in it."""
    # Containment, not equality: a value derived from a secret (the secret plus a suffix) or a
    # secret inside a longer string (the plan JSON) leaks it just the same.
    strings = spec_strings(manifest)
    leaked = {value for value in secret_values(plan) if any(value in string for string in strings)}
    if leaked:
        raise SecretValueError(f"the spec of batch {batch.key} would hold {len(leaked)} secret header value(s)")


def _hint(error: ApiRefused | ApiUnavailable) -> str:
    if isinstance(error, ApiRefused) and error.status == 403:
        return " (grant the auditor the probe-pod Role there: deploy/rbac.yaml, deploy/control-probes-default.yaml)"
    return ""


def _why_not_done(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if scheduled is not None and scheduled.get("status") == "False":
        return f"not scheduled ({scheduled.get('reason', '')}: {scheduled.get('message', '')})"
    waiting = (_container_status(pod).get("state") or {}).get("waiting")
    if waiting:
        return f"container waiting ({waiting.get('reason', '')}: {waiting.get('message', '')})"
    if not (pod.get("spec") or {}).get("nodeName"):
        return "not scheduled yet (no node has taken it: Auto Mode may still be adding capacity)"
    return "the probe had not finished"


def _failed(key: str, ref: str, pod: dict[str, Any]) -> BatchReport:
    status = pod.get("status") or {}
    if status.get("reason") == "DeadlineExceeded":
        reason = f"the pod ran past activeDeadlineSeconds: {status.get('message', '')}"
        return _problem(key, ref, Status.INCONCLUSIVE, reason)
    terminated = _terminated(pod)
    code, why = terminated.get("exitCode"), terminated.get("reason", "")
    reason = f"the probe container failed (exit code {code}, {why}); exit code 2 means it refused its plan"
    return _problem(key, ref, Status.ERROR, reason)


def _read_report(created: _Created, terminated: dict[str, Any], run_id: str) -> BatchReport:
    key, ref = created.batch.key, created.ref
    message = terminated.get("message") or ""
    if not message:
        return _problem(key, ref, Status.ERROR, "the probe left no termination message")
    try:
        result = parse_result(message)
    except ResultError as error:
        return _problem(key, ref, Status.ERROR, f"the termination message is not a probe result: {error}")
    if result.run_id != run_id:
        reason = f"the report belongs to run {result.run_id!r}, not {run_id!r}: rejected"
        return _problem(key, ref, Status.ERROR, reason)
    planned = {r.id for r in created.batch.requests}
    observations = {k: v for k, v in observations_from(result).items() if k in planned}
    incomplete = isinstance(result, CompactRunResult) and not result.complete
    return BatchReport(key, ref, observations, incomplete=incomplete)
