"""The daemon's drill schedule (off by default: ``drill.every_s`` 0): on the leader only, one
chaos drill every ``every_s`` seconds (``auditor.app.run_drill``), its times as metrics and its
result as the report's Drills section (``<reports_dir>/drills/<UTC time>.md`` and ``.json``).

A thread of its own, not a job of the audit scheduler: a drill waits minutes on the cluster and
must never delay an audit cycle or a Slack delivery. It stops (and the drill reverts and sweeps)
when the daemon stops.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from auditor.core.drill import DRIFT_KINDS, DrillResult
from auditor.render.drill import render_drill_markdown

RunDrill = Callable[[threading.Event], DrillResult]


class DrillMetrics:
    """The drill series, in the daemon's registry; every drift kind present from the start."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.time_to_detect = Gauge(
            "mesh_auditor_drill_time_to_detect_seconds",
            "Seconds from injecting the drift to the audit failing its promise, last drill (-1: not detected)",
            ["kind"],
            registry=registry,
        )
        self.time_to_alert = Gauge(
            "mesh_auditor_drill_time_to_alert_seconds",
            "Seconds from injecting the drift to the drill alert accepted by Slack, last drill (-1: not alerted)",
            ["kind"],
            registry=registry,
        )
        self.proven = Gauge(
            "mesh_auditor_drill_proven",
            "1 when the last drill of this kind was detected, alerted and resolved",
            ["kind"],
            registry=registry,
        )
        self.runs = Counter("mesh_auditor_drill_runs_total", "Drills run, by result", ["result"], registry=registry)
        self.leftover = Gauge(
            "mesh_auditor_drill_leftover_objects",
            "Objects left in the sandbox after the last drill (-1: could not be listed)",
            registry=registry,
        )
        for kind in DRIFT_KINDS:
            self.time_to_detect.labels(kind.name).set(-1)
            self.time_to_alert.labels(kind.name).set(-1)
            self.proven.labels(kind.name).set(0)
        for result in ("proven", "not-proven", "aborted"):
            self.runs.labels(result)

    def record(self, result: DrillResult) -> None:
        for outcome in result.outcomes:
            self.time_to_detect.labels(outcome.kind).set(
                -1 if outcome.time_to_detect_s is None else outcome.time_to_detect_s
            )
            self.time_to_alert.labels(outcome.kind).set(
                -1 if outcome.time_to_alert_s is None else outcome.time_to_alert_s
            )
            self.proven.labels(outcome.kind).set(1 if outcome.detected and outcome.alerted and outcome.resolved else 0)
        self.leftover.set(result.leftover_objects)
        self.runs.labels("aborted" if result.aborted else "proven" if result.ok else "not-proven").inc()


class DrillSchedule:
    """Runs ``run`` every ``every_s`` seconds while ``leading()``; ``stop`` ends it."""

    def __init__(  # noqa: PLR0917 - the schedule's six collaborators, each named at the one call site
        self,
        run: RunDrill,
        every_s: float,
        leading: Callable[[], bool],
        metrics: DrillMetrics,
        reports_dir: Path,
        stop: threading.Event,
    ) -> None:
        self._run = run
        self._every_s = every_s
        self._leading = leading
        self._metrics = metrics
        self._reports = reports_dir / "drills"
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, name="drill-schedule", daemon=True)
        self._log = structlog.get_logger("auditor.drill")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            if not self._leading():
                continue
            try:
                result = self._run(self._stop)
            except Exception as error:  # noqa: BLE001 - a failed drill is logged and retried next period
                self._log.error("drill failed to start", error=f"{type(error).__name__}: {error}")
                self._metrics.runs.labels("aborted").inc()
                continue
            self._metrics.record(result)
            self._write(result)

    def _write(self, result: DrillResult) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        try:
            self._reports.mkdir(parents=True, exist_ok=True)
            (self._reports / f"{stamp}.json").write_text(json.dumps(result.as_dict()) + "\n", encoding="utf-8")
            (self._reports / f"{stamp}.md").write_text(render_drill_markdown(result), encoding="utf-8")
        except OSError as error:
            self._log.warning("drill report not written", error=str(error))
