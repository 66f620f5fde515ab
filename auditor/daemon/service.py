"""The daemon's loop: APScheduler jobs around the watch-based snapshot, gated by the leader lease.

Jobs (one scheduler, thread pool of 4):
- ``leader``: every ``leader_tick_s``; acquires or renews the Lease. Only the leader evaluates,
  probes and alerts; a follower keeps its snapshot warm to take over at once.
- ``static-now``: a one-off job (re)scheduled ``static_debounce_s`` after each snapshot change,
  so a burst of edits is audited once, seconds after it settles; ``static`` re-audits everything
  every ``full_static_every_s`` anyway.
- ``probes``: every ``probe_every_s`` with jitter, never overlapping (``max_instances=1``); a run
  still going when the next is due is skipped and counted.
- ``report``: daily, the compliance report.
Every evaluation goes through one lock: drift state, outbox and sinks see one audit at a time.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from auditor.core.audit import run_static_audit
from auditor.core.drift import DriftBook, DriftPolicy, Phase
from auditor.core.model import Finding, Method
from auditor.core.outbox import Outbox
from auditor.core.posture import Posture
from auditor.core.snapshot import Snapshot
from auditor.daemon.metrics import DaemonMetrics
from auditor.render.slack import enqueue


class WatchedSnapshot(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = 2.0) -> None: ...
    def snapshot(self) -> Snapshot: ...
    def wait_synced(self, timeout: float) -> bool: ...


class Elector(Protocol):
    def try_acquire_or_renew(self) -> bool: ...
    def release(self) -> None: ...


class StateStore(Protocol):
    def load(self) -> dict[str, Any]: ...
    def save(self, document: dict[str, Any]) -> None: ...


class Notifier(Protocol):
    def flush(self, outbox: Outbox, save: Callable[[Outbox], None]) -> Outbox: ...


class ReportSink(Protocol):
    def publish(self, findings: Sequence[Finding], run: Mapping[str, Any]) -> None: ...


# (snapshot, posture, header values, static findings) -> findings including probe verdicts
ProbeCycle = Callable[
    [Snapshot, Posture, Mapping[tuple[str, str], str | None], tuple[Finding, ...]], tuple[Finding, ...]
]


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    identity: str
    static_debounce_s: float = 3.0
    full_static_every_s: float = 600.0
    probe_every_s: float = 300.0
    probe_jitter_s: float = 30.0
    leader_tick_s: float = 5.0
    report_cron: str = "0 6 * * *"
    digest_at: int = 10
    drift: DriftPolicy = field(default_factory=DriftPolicy)


@dataclass
class _Memory:
    """What the leader holds between jobs (persisted through the StateStore)."""

    book: DriftBook = field(default_factory=DriftBook)
    outbox: Outbox = field(default_factory=Outbox)
    static_findings: tuple[Finding, ...] = ()
    probe_findings: tuple[Finding, ...] = ()
    last_findings: tuple[Finding, ...] = ()


class Daemon:
    def __init__(
        self,
        *,
        config: DaemonConfig,
        snapshots: WatchedSnapshot,
        posture: Posture,
        header_values: Mapping[tuple[str, str], str | None],
        elector: Elector,
        state: StateStore,
        notifier: Notifier,
        sinks: Sequence[ReportSink] = (),
        probe_cycle: ProbeCycle | None = None,
        metrics: DaemonMetrics | None = None,
        extra_findings: Callable[[], tuple[Finding, ...]] = tuple,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.config, self._snapshots, self._posture, self._values = config, snapshots, posture, header_values
        self._elector, self._state, self._notifier, self._sinks = elector, state, notifier, tuple(sinks)
        self._probe_cycle, self.metrics, self._clock = probe_cycle, metrics or DaemonMetrics(), clock
        self._extra = extra_findings
        self._lock = threading.RLock()
        self._memory: _Memory | None = None  # None while not leading
        self._scheduler = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        self._log = structlog.get_logger("auditor.daemon").bind(replica=config.identity)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._snapshots.start()
        cfg = self.config
        self._scheduler.add_job(
            self.leader_tick, IntervalTrigger(seconds=cfg.leader_tick_s), id="leader", next_run_time=self._clock()
        )
        self._scheduler.add_job(self.static_audit, IntervalTrigger(seconds=cfg.full_static_every_s), id="static")
        if self._probe_cycle is not None:
            trigger = IntervalTrigger(seconds=cfg.probe_every_s, jitter=int(cfg.probe_jitter_s) or None)
            self._scheduler.add_job(self.probe_audit, trigger, id="probes")
        self._scheduler.add_job(
            self.daily_report, CronTrigger.from_crontab(cfg.report_cron, timezone="UTC"), id="report"
        )
        self._scheduler.start()

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM): running jobs finish, then the lease is released."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self._snapshots.stop()
        with self._lock:
            if self._memory is not None:
                self._elector.release()
                self._memory = None
        self.metrics.leader.set(0)

    def snapshot_changed(self) -> None:
        """Called by the watcher on every change: audit once the burst settles."""
        run_at = self._clock() + dt.timedelta(seconds=self.config.static_debounce_s)
        if self._scheduler.running:
            self._scheduler.add_job(self.static_audit, "date", run_date=run_at, id="static-now", replace_existing=True)

    def readiness(self) -> tuple[bool, str]:
        problems = self._snapshots.snapshot().problems
        if problems:
            return False, f"snapshot not in sync: {problems[0].resource}: {problems[0].message}"
        return True, "leader" if self._memory is not None else "standby"

    def replace_posture(self, posture: Posture, header_values: Mapping[tuple[str, str], str | None]) -> None:
        """New rules take effect at the next audit; callers validate them first (bad rules never land)."""
        with self._lock:
            self._posture, self._values = posture, header_values
        self.snapshot_changed()

    @property
    def leading(self) -> bool:
        return self._memory is not None

    # --- jobs ---------------------------------------------------------------------------------

    def leader_tick(self) -> None:
        leading = self._elector.try_acquire_or_renew()
        with self._lock:
            if leading and self._memory is None:
                self._memory = self._load()
                self._log.info("became leader")
                for sink in self._sinks:
                    # Sinks that cache what they wrote (Security Hub's first-seen times) reload it:
                    # another replica may have written since this one last led.
                    became_leader = getattr(sink, "became_leader", None)
                    if callable(became_leader):
                        became_leader()
                self.snapshot_changed()
            elif not leading and self._memory is not None:
                self._memory = None
                self._log.warning("lost the leader lease; standing by")
        self.metrics.leader.set(1 if leading else 0)

    def static_audit(self) -> None:
        started = time.monotonic()
        with self._lock:
            if self._memory is None:
                return
            static = run_static_audit(self._snapshots.snapshot(), self._posture, self._values) + self._extra()
            self._memory.static_findings = static
            # Only this job's findings advance the drift counters: re-counting the last probe
            # result at every static audit would open probe alerts on one failed cycle.
            self._evaluate(static, report=static + self._memory.probe_findings, kind="static")
        self._timed("static", started)

    def probe_audit(self) -> None:
        if self._probe_cycle is None or self._memory is None:
            return
        started = time.monotonic()
        snapshot = self._snapshots.snapshot()
        static = run_static_audit(snapshot, self._posture, self._values)
        with self._lock:
            posture, values = self._posture, self._values
        probe = tuple(f for f in self._probe_cycle(snapshot, posture, values, static) if f.method is Method.PROBE)
        with self._lock:
            if self._memory is None:
                return  # lost the lease while probing: the new leader will probe again
            self._memory.probe_findings = probe
            self._evaluate(probe, report=self._memory.static_findings + probe, kind="probe")
        self._timed("probe", started)

    def daily_report(self) -> None:
        with self._lock:
            if self._memory is None:
                return
            run = self._run_info("daily-report")
            for sink in self._sinks:
                sink.publish(self._memory.last_findings, run)

    # --- evaluation ---------------------------------------------------------------------------

    def _evaluate(self, findings: tuple[Finding, ...], *, report: tuple[Finding, ...], kind: str) -> None:
        memory = self._memory
        assert memory is not None  # noqa: S101 - callers hold the lock and checked leadership
        now = self._clock().timestamp()
        memory.book, transitions = memory.book.evaluate(findings, now, self.config.drift)
        memory.outbox = enqueue(memory.outbox, transitions, digest_at=self.config.digest_at)
        self._save(memory)
        memory.outbox = self._notifier.flush(memory.outbox, lambda outbox: self._save_outbox(memory, outbox))
        memory.last_findings = report
        self._save(memory)
        self.metrics.record_findings(report)
        self.metrics.alerts_open.set(sum(1 for a in memory.book.alerts.values() if a.phase is Phase.FIRING))
        run = self._run_info(kind)
        for sink in self._sinks:
            sink.publish(report, run)
        self._log.info("audit evaluated", kind=kind, findings=len(findings), transitions=len(transitions))

    def _save_outbox(self, memory: _Memory, outbox: Outbox) -> None:
        memory.outbox = outbox
        self._save(memory)

    def _save(self, memory: _Memory) -> None:
        self._state.save({"drift": memory.book.to_dict(), "outbox": memory.outbox.pruned().to_dict()})

    def _load(self) -> _Memory:
        stored = self._state.load()
        book = DriftBook.from_dict(stored["drift"]) if "drift" in stored else DriftBook()
        outbox = Outbox.from_dict(stored["outbox"]) if "outbox" in stored else Outbox()
        return _Memory(book=book, outbox=outbox)

    def _run_info(self, kind: str) -> dict[str, Any]:
        now = self._clock()
        return {
            "id": f"{now:%Y%m%dT%H%M%S%f}-{kind}",
            "kind": kind,
            "at": now.isoformat(),
            "replica": self.config.identity,
        }

    def _timed(self, kind: str, started: float) -> None:
        self.metrics.cycle_seconds.labels(kind).observe(time.monotonic() - started)
        self.metrics.last_success.labels(kind).set(self._clock().timestamp())

    def _skipped(self, event: JobExecutionEvent) -> None:
        self.metrics.cycles_skipped.labels(event.job_id).inc()
        self._log.warning("cycle skipped: the previous one is still running", job=event.job_id)
