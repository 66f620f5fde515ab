"""The daemon's loop: APScheduler jobs around the watch-based snapshot, gated by the leader lease.

Jobs (one scheduler, thread pool of 6), none of which waits on another's I/O:
- ``leader``: every ``leader_tick_s``; acquires or renews the Lease and nothing else (no lock, no
  Slack, no audit), so a slow Slack or a long audit never lets the Lease lapse. This replica
  believes it leads only until ``lease_duration_s`` (less a safety margin) after the start of its
  last successful renewal: by then a standby may take over, so it stops acting first.
- ``takeover``: when the Lease is won, loads the state (a corrupt one is set aside, see
  ``_load``); when it cannot load the state it releases the Lease: never hold it while unable
  to work.
- ``static-now``: a one-off job ``static_debounce_s`` after each snapshot change, so a burst of
  edits is audited once; a change that arrives while an audit runs gets its own audit right
  after it. ``static`` re-audits everything every ``full_static_every_s`` anyway. No audit runs
  from a snapshot that is not in sync.
- ``probes``: every ``probe_every_s`` with jitter, never overlapping.
- ``deliver``: every ``delivery_tick_s``, at most one Slack call per ``slack_pace_s`` (Slack's
  rate for chat.postMessage is about one message a second per channel); failures back off per
  entry (``Outbox.due``), 429 pauses all sending for ``Retry-After``. Before each call the entry
  is stored as in-flight with a conditional write (resourceVersion) of the state ConfigMap, and
  leadership is checked again right before the call: a replica that lost the Lease, or whose
  state another replica has written since, sends nothing (fencing).
- ``operations``: every ``delivery_tick_s``, the "cannot audit" alert and its recovery (sent by
  the last leader after ``cannot_audit_after_s`` of trouble: the Lease, or a snapshot not in sync,
  which is watched leading or not, so "auditing again" waits for the watches to relist). Its own
  job: a hung API server blocks renewal and delivery for the client's timeouts, and a renewal
  unanswered for a Lease duration is itself a trouble.
- ``report``: daily, the compliance report.
Drift state and outbox change under one lock, held only for in-memory work and the state write:
never across a Slack call, a sink or the Lease renewal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from auditor.core.alerting.drift import DriftBook, DriftPolicy, Phase
from auditor.core.alerting.outbox import OUTBOX_FULL, Entry, EntryKind, EntryState, Outbox
from auditor.core.audit import run_static_audit
from auditor.core.incremental import IncrementalAudit
from auditor.core.model import Finding, Method
from auditor.core.posture import Posture
from auditor.core.snapshot import Snapshot
from auditor.daemon.delivery import DeliveryLoop
from auditor.daemon.metrics import DaemonMetrics
from auditor.ports import (
    CorruptState,
    Elector,
    ExtraFindings,
    Notifier,
    ProbeCycle,
    ReportSink,
    StateConflict,
    StateStore,
    WatchedSnapshot,
)
from auditor.render.escape import slack_text as _escape
from auditor.render.slack import enqueue
from auditor.report import AuditReport, RunRecord


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
    digest_threads: int = 5
    outbox_max_unsent: int = 1000
    slack_pace_s: float = 1.0
    delivery_tick_s: float = 0.25
    cannot_audit_after_s: float = 60.0
    drift: DriftPolicy = field(default_factory=DriftPolicy)


@dataclass
class _Memory:
    """What the leader holds between jobs (persisted through the StateStore)."""

    book: DriftBook = field(default_factory=DriftBook)
    outbox: Outbox = field(default_factory=Outbox)
    static_findings: tuple[Finding, ...] = ()
    probe_findings: tuple[Finding, ...] = ()
    last_findings: tuple[Finding, ...] = ()


STATE_RESET_KEY = "ops|state-reset"


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
        extra_findings: ExtraFindings = tuple,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        stopping: threading.Event | None = None,
    ) -> None:
        self.config, self._snapshots, self._posture, self._values = config, snapshots, posture, header_values
        self._elector, self._state, self._notifier, self._sinks = elector, state, notifier, tuple(sinks)
        self._probe_cycle, self.metrics, self._clock = probe_cycle, metrics or DaemonMetrics(), clock
        self._extra = extra_findings
        self._lock = threading.RLock()
        self._memory: _Memory | None = None  # None while not leading
        self._lease_until = 0.0  # monotonic: this replica may act as leader until then
        self._holds_lease = False
        self._load_backoff_until = 0.0
        self._changes = 0  # snapshot changes seen (an audit compares before and after)
        self._send_after = 0.0  # monotonic: pacing and 429 pauses
        self._stopping = stopping or threading.Event()  # shared with the probe runner: SIGTERM cuts probing
        self._busy = 0  # jobs running now (stop waits for them, bounded)
        self._busy_lock = threading.Lock()
        self._note = ""  # what readiness says besides leader/standby (a state reset, a load failure)
        # The operational "cannot audit" alert: sent by the last leader (nobody can take over
        # while the API is unreachable), outside the outbox (its ConfigMap is unreachable too).
        self._last_leader = False
        self._trouble_since: float | None = None
        self._troubles: dict[str, str] = {}  # source (lease, snapshot) -> what is wrong
        self._trouble_lock = threading.Lock()
        self._ops_ts: str | None = None
        self._ops_recovered_after: float | None = None
        self._ops_lock = threading.Lock()  # one "cannot audit" call at a time (deliver and operations jobs)
        self._renewing_since: float | None = None  # monotonic start of the Lease call under way
        # The incremental audit (#16): re-evaluates what the watches' changes reach. Its state
        # is rebuilt from scratch by every periodic full audit, a relist, or new rules.
        self._incremental: IncrementalAudit | None = None
        self._incremental_for: tuple[Posture, Mapping[tuple[str, str], str | None]] | None = None
        self._incremental_cursor = 0
        self._incremental_lock = threading.Lock()  # "static" and "static-now" may run at once
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            executors={"default": ThreadPoolExecutor(6)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        self._log = structlog.get_logger("auditor.daemon").bind(replica=config.identity)
        self._delivery = DeliveryLoop(
            notifier,
            log=self._log,
            on_attempt=lambda e, d: self.metrics.slack_delivery(e.kind.value, d.action, d.error),
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._snapshots.start()
        cfg = self.config
        self._scheduler.add_job(
            self.leader_tick, IntervalTrigger(seconds=cfg.leader_tick_s), id="leader", next_run_time=self._clock()
        )
        self._scheduler.add_job(
            self._job(self.full_static_audit), IntervalTrigger(seconds=cfg.full_static_every_s), id="static"
        )
        self._scheduler.add_job(self._job(self.deliver), IntervalTrigger(seconds=cfg.delivery_tick_s), id="deliver")
        self._scheduler.add_job(
            self._job(self.watch_operations), IntervalTrigger(seconds=cfg.delivery_tick_s), id="operations"
        )
        if self._probe_cycle is not None:
            trigger = IntervalTrigger(seconds=cfg.probe_every_s, jitter=int(cfg.probe_jitter_s) or None)
            self._scheduler.add_job(self._job(self.probe_audit), trigger, id="probes")
        self._scheduler.add_job(
            self._job(self.daily_report), CronTrigger.from_crontab(cfg.report_cron, timezone="UTC"), id="report"
        )
        self._scheduler.start()

    def stop(self, grace_s: float = 10.0) -> bool:
        """Graceful shutdown (SIGTERM): start no new work; running jobs stop at their next safe
        point (an audit before evaluating, delivery before the next Slack call, a probe cycle within
        a few seconds, deleting its pods); wait for them up to ``grace_s``; release the Lease (the
        outbox is persisted after every step already). False when a job was still running at the
        end of the grace (a Slack call that does not answer): the caller exits anyway; that entry
        stays in-flight and the next leader looks it up before sending it."""
        self._stopping.set()
        started = time.monotonic()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        while self._busy and time.monotonic() - started < grace_s:
            time.sleep(0.02)
        clean = not self._busy
        self._snapshots.stop(timeout=0.2)  # daemon threads blocked in a watch read: no need to wait
        leading = self._holds_lease
        self._memory, self._lease_until, self._holds_lease = None, 0.0, False
        if leading:
            self._elector.release()
        self.metrics.leader.set(0)
        self._log.info(
            "stopped", seconds=round(time.monotonic() - started, 3), released_lease=leading, jobs_cut=not clean
        )
        return clean

    def _job(self, job: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if self._stopping.is_set():
                return
            with self._busy_lock:
                self._busy += 1
            try:
                job()
            finally:
                with self._busy_lock:
                    self._busy -= 1

        return run

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    def snapshot_changed(self) -> None:
        """Called by the watcher on every change: audit once the burst settles."""
        self._changes += 1
        self._request_audit(self.config.static_debounce_s)

    def probe_soon(self) -> None:
        """Run a probe cycle now: a node appeared or its ztunnel changed (``auditor.adapters.k8s.nodes``, #13).
        Moves the periodic probe job's next run (so never two cycles at once); no-op without probes."""
        if self._probe_cycle is not None and self._scheduler.running and not self._stopping.is_set():
            with contextlib.suppress(JobLookupError):
                self._scheduler.modify_job("probes", next_run_time=self._clock())

    def _request_audit(self, delay_s: float) -> None:
        run_at = self._clock() + dt.timedelta(seconds=delay_s)
        if self._scheduler.running and not self._stopping.is_set():
            self._scheduler.add_job(
                self._job(self.static_audit), "date", run_date=run_at, id="static-now", replace_existing=True
            )

    def readiness(self) -> tuple[bool, str]:
        problems = self._snapshots.snapshot().problems
        if problems:
            return False, f"snapshot not in sync: {problems[0].resource}: {problems[0].message}"
        role = "leader" if self.leading else "standby"
        return True, (f"{role}; {self._note}" if self._note else role)

    def replace_posture(self, posture: Posture, header_values: Mapping[tuple[str, str], str | None]) -> None:
        """New rules take effect at the next audit; callers validate them first (bad rules never land)."""
        with self._lock:
            self._posture, self._values = posture, header_values
        self.snapshot_changed()

    @property
    def leading(self) -> bool:
        return self._memory is not None and self._may_act()

    def _may_act(self) -> bool:
        return not self._stopping.is_set() and time.monotonic() < self._lease_until

    # --- jobs ---------------------------------------------------------------------------------

    def leader_tick(self) -> None:
        """Acquire or renew the Lease. Takes no lock and sends nothing: it never waits on work."""
        if self._stopping.is_set() or time.monotonic() < self._load_backoff_until:
            return
        started = self._renewing_since = time.monotonic()
        try:
            leading = self._elector.try_acquire_or_renew()
        finally:
            self._renewing_since = None
        if self._stopping.is_set():
            return
        self._holds_lease = leading
        self._note_trouble("lease", self._elector.last_error)
        # The snapshot's trouble is tracked here too, leading or not: when the API returns, the
        # Lease comes back before the watches have relisted, and "auditing again" must wait for
        # them (else it is said too early, and a second "cannot audit" alert follows).
        self._note_trouble("snapshot", _not_in_sync(self._snapshots.snapshot()))
        if leading:
            # Stop acting a margin before the Lease could lapse (clock skew, a slow last call).
            duration = self._elector.duration_s
            self._lease_until = started + duration - min(2.0, duration * 0.2)
            if self._memory is None:
                if self._scheduler.running:  # loading the state is API work: not on the renewal's thread
                    self._scheduler.add_job(self._job(self._take_over), id="takeover", replace_existing=True)
                else:
                    self._take_over()
        else:
            self._lease_until = 0.0
            if self._elector.last_error is None:
                self._last_leader = False  # someone else holds the Lease: theirs to say
            if self._memory is not None:
                self._memory = None
                self._log.warning("lost the leader lease; standing by", error=self._elector.last_error)
        self.metrics.leader.set(1 if leading and self._memory is not None else 0)

    def _take_over(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a job still finishes with the old memory; the next tick takes over
        try:
            if self._memory is not None or not self._may_act():
                return
            self._note = ""
            try:
                memory = self._load()
            except Exception as error:  # noqa: BLE001 - any failure to load means "cannot work": give the Lease up
                self._give_up_lease(f"cannot load the state: {type(error).__name__}: {error}")
                return
            self._memory = memory
            self._last_leader = True
        finally:
            self._lock.release()
        self._log.info("became leader")
        self.metrics.leader.set(1)
        for sink in self._sinks:
            # Sinks that cache what they wrote (Security Hub's first-seen times) reload it: another
            # replica may have written since this one last led.
            became_leader = getattr(sink, "became_leader", None)
            if callable(became_leader):
                became_leader()
        self._request_audit(0.0)

    def _give_up_lease(self, why: str) -> None:
        self._note = f"not leading: {why}"
        self._log.error("releasing the leader lease: unable to work", reason=why)
        self._memory, self._lease_until, self._holds_lease = None, 0.0, False
        self._load_backoff_until = time.monotonic() + self._elector.duration_s
        self._elector.release()
        self.metrics.leader.set(0)

    def full_static_audit(self) -> None:
        """The periodic audit: everything re-evaluated from scratch, whatever the watches said."""
        with self._incremental_lock:
            self._incremental = None
        self.static_audit()

    def _static_findings(
        self, snapshot: Snapshot, posture: Posture, values: Mapping[tuple[str, str], str | None]
    ) -> tuple[Finding, ...]:
        """The static findings of the watched cluster: re-evaluated from the changes the watches
        saw since the last audit when the snapshot source tells them (``changes_since``), else a
        full audit of ``snapshot``. Equal either way (auditor.core.incremental)."""
        changes_since = getattr(self._snapshots, "changes_since", None)
        if changes_since is None:
            return run_static_audit(snapshot, posture, values)
        with self._incremental_lock:
            started = time.process_time()
            delta = changes_since(self._incremental_cursor if self._incremental is not None else 0)
            if delta.problems:
                self._incremental = None  # out of sync since the snapshot was taken: audit that one
                return run_static_audit(snapshot, posture, values)
            audit = self._incremental
            if audit is None or delta.changes is None or not self._same_rules(posture, values):
                if delta.changes is not None:
                    delta = changes_since(0)  # the objects themselves are needed
                    if delta.problems:
                        self._incremental = None
                        return run_static_audit(snapshot, posture, values)
                assert delta.objects is not None  # noqa: S101 - changes_since(0) returns the objects
                audit = IncrementalAudit(delta.objects, posture, values, live=snapshot.live)
                self._incremental, self._incremental_for = audit, (posture, values)
                self._incremental_cursor = delta.cursor
                self._log.info("static audit", mode="full", cpu_s=round(time.process_time() - started, 4))
                return audit.findings
            update = audit.apply(delta.changes)
            self._incremental_cursor = delta.cursor
            self._log.info(
                "static audit",
                mode="full" if update.everything else "incremental",
                changes=len(delta.changes),
                namespaces=len(update.namespaces),
                protected=len(update.targets),
                cpu_s=round(time.process_time() - started, 4),
            )
            return update.findings

    def _same_rules(self, posture: Posture, values: Mapping[tuple[str, str], str | None]) -> bool:
        held = self._incremental_for
        return held is not None and held[0] is posture and held[1] is values

    def static_audit(self) -> None:
        if self._stopping.is_set() or not self.leading:
            return
        started = time.monotonic()
        snapshot = self._snapshots.snapshot()
        self._note_trouble("snapshot", _not_in_sync(snapshot))
        if snapshot.problems:
            # Never audit from a snapshot that is not in sync: it would "find" what is merely unread.
            self.metrics.cycles_skipped.labels("static-not-in-sync").inc()
            return
        changes = self._changes
        with self._lock:
            posture, values = self._posture, self._values
        static = self._static_findings(snapshot, posture, values) + self._extra()
        with self._lock:
            memory = self._memory
            if memory is None or not self._may_act():
                return
            memory.static_findings = static
            # Only this job's findings advance the drift counters: re-counting the last probe
            # result at every static audit would open probe alerts on one failed cycle.
            published = self._evaluate(memory, static, report=static + memory.probe_findings, kind="static")
        self._publish(*published, started=started)
        self._timed("static", started)
        if self._changes != changes:
            self._request_audit(0.0)  # changed while this audit ran: audit again right away

    def probe_audit(self) -> None:
        if self._probe_cycle is None or self._stopping.is_set() or not self.leading:
            return
        started = time.monotonic()
        snapshot = self._snapshots.snapshot()
        with self._lock:
            posture, values = self._posture, self._values
        static = run_static_audit(snapshot, posture, values)
        probe = tuple(f for f in self._probe_cycle(snapshot, posture, values, static) if f.method is Method.PROBE)
        with self._lock:
            memory = self._memory
            if memory is None or not self._may_act():
                return  # lost the lease (or stopping) while probing: the next leader probes again
            memory.probe_findings = probe
            published = self._evaluate(memory, probe, report=memory.static_findings + probe, kind="probe")
        self._publish(*published, started=started)
        self._timed("probe", started)

    def daily_report(self) -> None:
        memory = self._memory
        if memory is None or not self.leading:
            return
        self._publish(memory.last_findings, self._run_info("daily-report"))

    def _note_trouble(self, source: str, trouble: str | None) -> None:
        with self._trouble_lock:  # the leader tick and audits both report
            self._note_trouble_locked(source, trouble)

    def _note_trouble_locked(self, source: str, trouble: str | None) -> None:
        if trouble is not None:
            if not self._troubles:
                self._trouble_since = time.monotonic()
                self._log.error("cannot audit", reason=trouble)
            self._troubles[source] = trouble
            return
        if self._troubles.pop(source, None) is None or self._troubles or self._trouble_since is None:
            return
        self._log.info("auditing again", after_s=round(time.monotonic() - self._trouble_since, 1))
        if self._ops_ts is not None:
            self._ops_recovered_after = time.monotonic() - self._trouble_since
        self._trouble_since = None

    def watch_operations(self) -> None:
        """Own job, so that a hung API server cannot hold the "cannot audit" alert back: its calls
        wait for the API client's timeouts (30 s read, retried), blocking the renewal and
        delivery jobs meanwhile. A renewal unanswered for a Lease duration is a trouble."""
        since = self._renewing_since
        if since is not None and time.monotonic() - since > self._elector.duration_s:
            waited = time.monotonic() - since
            self._note_trouble("lease", f"the API server has not answered the Lease renewal for {waited:.0f} s")
        if self._stopping.is_set() or time.monotonic() < self._send_after:
            return
        if self._operational_alert():
            self._send_after = time.monotonic() + self.config.slack_pace_s

    def _operational_alert(self) -> bool:
        """Send the "cannot audit" alert once the trouble lasted ``cannot_audit_after_s`` (and its
        recovery in its thread); True when a Slack call was made."""
        if not self._ops_lock.acquire(blocking=False):
            return False  # the other job is sending it
        try:
            return self._operational_alert_locked()
        finally:
            self._ops_lock.release()

    def _operational_alert_locked(self) -> bool:
        if self._ops_recovered_after is not None and self._ops_ts is not None:
            text = (
                ":white_check_mark: mesh-auditor is auditing again "
                f"(it could not for {self._ops_recovered_after:.0f} s)."
            )
            entry = Entry(
                f"ops|cannot-audit|{self._ops_ts}|resolved", "ops|cannot-audit", EntryKind.REPLY, _plain(text)
            )
            delivery = self._notifier.deliver(entry, {"ops|cannot-audit": self._ops_ts})
            if delivery.action in {"sent", "drop"}:
                self._ops_ts, self._ops_recovered_after = None, None
            return True
        since = self._trouble_since
        if since is None or self._ops_ts is not None or not self._last_leader:
            return False
        if time.monotonic() - since < self.config.cannot_audit_after_s:
            return False
        text = (
            f":rotating_light: mesh-auditor cannot audit (for {time.monotonic() - since:.0f} s): "
            f"{_escape('; '.join(self._troubles.values())[:500])}. Drift is not being detected until this clears."
        )
        entry = Entry(f"ops|cannot-audit|{since}", "ops|cannot-audit", EntryKind.POST, _plain(text))
        delivery = self._notifier.deliver(entry, {})
        self.metrics.slack_delivery("post", delivery.action, delivery.error)
        if delivery.action == "sent":
            self._ops_ts = delivery.ts
        return True

    def deliver(self) -> bool:
        """Send the next due outbox entry, if pacing allows; True when one was attempted."""
        if self._stopping.is_set() or time.monotonic() < self._send_after:
            return False
        if self._operational_alert():
            self._send_after = time.monotonic() + self.config.slack_pace_s
            return True
        with self._lock:
            memory = self._memory
            if memory is None or not self._may_act():
                return False
            taken = self._delivery.take(memory.outbox, self._clock().timestamp())
            if taken is None:
                return False
            memory.outbox, entry = taken
            if not self._save(memory):
                return False  # fenced: unsaved in-flight state is never sent
            threads = dict(memory.outbox.threads)
        if not self._may_act():
            return False  # leadership lapsed while saving: the next leader looks the entry up
        delivery = self._delivery.send(entry, threads)
        self._send_after = time.monotonic() + self.config.slack_pace_s
        with self._lock:
            if self._memory is not memory:
                return True  # lost leadership meanwhile; the entry stays in-flight for the next leader
            now = self._clock().timestamp()
            memory.outbox, wait = self._delivery.record(memory.outbox, entry, delivery, now)
            if delivery.retry_after or delivery.config:
                self._send_after = time.monotonic() + wait  # Slack limits the app, not one message
            self._save(memory)
        return True

    def drain(self, limit: int = 10_000) -> int:
        """Deliver every due entry now, ignoring pacing (tests and one-shot runs); returns the count."""
        sent = 0
        while sent < limit:
            self._send_after = 0.0
            if not self.deliver():
                break
            sent += 1
        return sent

    # --- evaluation ---------------------------------------------------------------------------

    def _evaluate(
        self, memory: _Memory, findings: tuple[Finding, ...], *, report: tuple[Finding, ...], kind: str
    ) -> tuple[tuple[Finding, ...], RunRecord]:
        now = self._clock().timestamp()
        memory.book, transitions = memory.book.evaluate(findings, now, self.config.drift)
        # Alerts the audit no longer reports at all (target deleted, check gone) are closed with
        # the reason; for probes only when the target is gone from the static audit too.
        if kind == "static":
            memory.book, closed = memory.book.close_unreported(findings, Method.STATIC, now)
            transitions += closed
        elif memory.static_findings:
            memory.book, closed = memory.book.close_unreported(report, Method.PROBE, now, only_gone=True)
            transitions += closed
        before = {e.id for e in memory.outbox.entries if e.state is EntryState.DROPPED}
        memory.outbox = enqueue(
            memory.outbox,
            transitions,
            digest_at=self.config.digest_at,
            digest_threads=self.config.digest_threads,
            max_unsent=self.config.outbox_max_unsent,
        )
        full = [e for e in memory.outbox.entries if e.error == OUTBOX_FULL and e.id not in before]
        if full:
            self.metrics.outbox_dropped.labels(OUTBOX_FULL).inc(len(full))
            self._log.error(
                "slack outbox full; dropped the oldest unsent messages",
                dropped=len(full),
                kinds=sorted({e.kind.value for e in full}),
                limit=self.config.outbox_max_unsent,
                first=full[0].id,
            )
        memory.last_findings = report
        self._save(memory)
        self.metrics.record_findings(report)
        self.metrics.alerts_open.set(sum(1 for a in memory.book.alerts.values() if a.phase is Phase.FIRING))
        self.metrics.outbox_unsent.set(len(memory.outbox.unsent))
        self._log.info("audit evaluated", kind=kind, findings=len(findings), transitions=len(transitions))
        return report, self._run_info(kind)

    def _publish(self, report: tuple[Finding, ...], run: RunRecord, *, started: float | None = None) -> None:
        """``started``: ``time.monotonic()`` at the start of the audit cycle; the run then carries
        ``duration_s``, seconds from there to the evaluated audit (CloudWatch ``CycleDuration``)."""
        if started is not None:
            run = replace(run, duration_s=round(time.monotonic() - started, 3))
        audit = AuditReport(report, {"mode": "daemon"}, run)
        for sink in self._sinks:  # outside the lock: a slow sink holds up nobody's Slack message
            try:
                sink.publish(audit)
            except Exception as error:  # noqa: BLE001 - one failing sink must not stop the others
                self._log.error(
                    "report sink failed", sink=type(sink).__name__, error=f"{type(error).__name__}: {error}"
                )

    def _save(self, memory: _Memory) -> bool:
        """Persist; False when it could not be (a conflicting writer fences this replica off)."""
        document = {"drift": memory.book.to_dict(), "outbox": memory.outbox.pruned().to_dict()}
        try:
            self._state.save(document)
        except Exception as error:  # noqa: BLE001 - classified below; nothing may be sent unsaved
            if isinstance(error, StateConflict):
                self._log.warning("another replica wrote the state; standing by until re-elected")
                if self._memory is memory:
                    self._memory = None  # the next leader tick reloads it if the Lease is still ours
                return False
            self._log.error("cannot save the state", error=f"{type(error).__name__}: {error}")
            return False
        return True

    def _load(self) -> _Memory:
        """The stored state; a corrupt one is set aside and replaced by empty state, said loudly
        (log, Event, metric, Slack notice, readiness). Raises when it cannot be read or set aside."""
        now = self._clock()
        try:
            stored = self._state.load()
            book = DriftBook.from_dict(stored["drift"]) if "drift" in stored else DriftBook()
            outbox = Outbox.from_dict(stored["outbox"]) if "outbox" in stored else Outbox()
        except Exception as error:  # sorted into corrupt (set aside) vs unreadable (re-raised) below
            if not _corrupt(error):
                raise
            reason = f"{type(error).__name__}: {error}"
            aside = self._state.set_aside(reason, now)
            self.metrics.state_resets.inc()
            self._note = f"state was reset at {now:%Y-%m-%dT%H:%M:%SZ} ({reason}); the bad copy is in ConfigMap {aside}"
            self._log.error(
                "STATE CORRUPT: set aside, starting from empty state; every drift found is alerted again",
                reason=reason,
                set_aside_as=aside,
            )
            memory = _Memory(outbox=Outbox().with_enqueued(_state_reset_notice(reason, aside, now)))
            if not self._save(memory):
                raise RuntimeError("cannot write the empty state") from error
            return memory
        return _Memory(book=book, outbox=outbox)

    def _run_info(self, kind: str) -> RunRecord:
        now = self._clock()
        return RunRecord(id=f"{now:%Y%m%dT%H%M%S%f}-{kind}", kind=kind, at=now, replica=self.config.identity)

    def _timed(self, kind: str, started: float) -> None:
        self.metrics.cycle_seconds.labels(kind).observe(time.monotonic() - started)
        self.metrics.last_success.labels(kind).set(self._clock().timestamp())

    def _skipped(self, event: JobExecutionEvent) -> None:
        self.metrics.cycles_skipped.labels(event.job_id).inc()
        if event.job_id == "static-now":
            self._request_audit(self.config.static_debounce_s)  # the change still gets its audit
        self._log.warning("cycle skipped: the previous one is still running", job=event.job_id)


def _not_in_sync(snapshot: Snapshot) -> str | None:
    """Why the snapshot cannot be audited (its first read problem), or None when it is in sync."""
    if not snapshot.problems:
        return None
    return f"snapshot not in sync: {snapshot.problems[0].resource}: {snapshot.problems[0].message}"


def _corrupt(error: Exception) -> bool:
    """A stored document that cannot be understood (as opposed to one that cannot be read)."""
    return isinstance(error, CorruptState | ValueError | KeyError | TypeError | AttributeError)


def _plain(text: str) -> dict[str, Any]:
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def _state_reset_notice(reason: str, aside: str, now: dt.datetime) -> Entry:
    text = (
        ":warning: mesh-auditor lost its alert state and started from empty state: every drift it still "
        f"finds is alerted again, in new threads. Reason: {_escape(reason[:500])}. "
        f"The unreadable state is kept in ConfigMap `{_escape(aside)}`."
    )
    key = f"{STATE_RESET_KEY}#{int(now.timestamp())}"
    return Entry(
        f"{key}|post",
        key,
        EntryKind.POST,
        {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]},
    )
