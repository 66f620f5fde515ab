"""The composition root's daemon half (``auditor daemon``): settings in, a running daemon until SIGTERM.

Every port of ``auditor.ports`` the daemon loop (``auditor.daemon.service``) needs is built here
from ``Settings`` and injected, typed by its port; the probing helpers are the CLI's own
(``auditor.app``), so ``auditor check --active`` and the daemon plan and judge probes alike.
Nothing else creates clients. Bad
rules at start exit 2; bad rules later (a ConfigMap edit) are logged and the daemon keeps
auditing with its last good rules.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3
import structlog
from kubernetes.client import ApiClient
from slack_sdk.webhook import WebhookClient
from structlog.typing import FilteringBoundLogger

from auditor.adapters.aws.archive import ArchiveOptions, S3Archive
from auditor.adapters.aws.eks import AutoModeCheck
from auditor.adapters.aws.metrics import CloudWatchMetrics
from auditor.adapters.aws.securityhub import HubOptions, SecurityHubSink
from auditor.adapters.k8s.lease import LeaseElector
from auditor.adapters.k8s.nodepools import read_node_pools
from auditor.adapters.k8s.nodes import NodeTrigger
from auditor.adapters.k8s.policyreports import PolicyReportWriter
from auditor.adapters.k8s.secrets import ClusterSecretReader
from auditor.adapters.k8s.state import ConfigMapStateStore
from auditor.adapters.k8s.watcher import SnapshotWatcher
from auditor.adapters.kubeapi import build_api_client
from auditor.adapters.probepods.kube import PodApi
from auditor.adapters.probepods.runner import PodProbeRunner
from auditor.adapters.rules.loader import load_rules, resolve_header_values
from auditor.adapters.slack.notifier import SlackNotifier, WebhookNotifier, build_web_client
from auditor.app import active_audit, plan_options, run_drill, runner_options
from auditor.core.alerting.drift import DriftPolicy
from auditor.core.alerting.outbox import Delivery, Entry
from auditor.core.drill import DrillResult
from auditor.core.model import Finding, Method
from auditor.core.posture import Posture
from auditor.core.probing.probeplan import RunPlan
from auditor.core.probing.probereport import RunReport
from auditor.core.snapshot import Snapshot
from auditor.daemon.drills import DrillMetrics, DrillSchedule
from auditor.daemon.health import HealthServer
from auditor.daemon.metrics import DaemonMetrics
from auditor.daemon.service import Daemon, DaemonConfig
from auditor.daemon.sinks import AwsSink, CountingNotifier, DirectorySink, OnFailure, PolicyReportSink
from auditor.errors import InputError
from auditor.ports import ExtraFindings, Notifier, ProbeCycle, ProbeRunner, ReportSink
from auditor.settings import AwsSettings, Settings, SlackSettings


class _Silent:
    """Slack off: transitions are still tracked and reported, just not sent."""

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        return Delivery("sent", ts="off")


def run_daemon(settings: Settings, *, stop: threading.Event | None = None) -> int:
    log = structlog.get_logger("auditor.daemon")
    cfg = settings.daemon
    own_signals = stop is None
    stop = stop or _stop_on_signals()
    posture = load_rules(cfg.rules)
    with closing(build_api_client(cfg.kubeconfig, cfg.context)) as api:
        secrets = ClusterSecretReader(api)
        values = resolve_header_values(posture, os.environ, secrets.secret_value)
        metrics = DaemonMetrics()
        holder: list[Daemon] = []
        focus = _Focus()  # what the node trigger saw, for the probe cycle it triggers
        halt = threading.Event()  # set by Daemon.stop: probe cycles stop and delete their pods
        watcher = SnapshotWatcher(api, on_change=lambda: holder[0].snapshot_changed() if holder else None)
        identity = cfg.identity or socket.gethostname()
        daemon = Daemon(
            config=_config(settings, identity),
            snapshots=watcher,
            posture=posture,
            header_values=values,
            elector=LeaseElector(api, cfg.namespace, identity, duration_s=cfg.lease_duration_s),
            state=ConfigMapStateStore(api, cfg.namespace),
            notifier=_counted_notifier(_notifier(settings.slack), metrics),
            sinks=_sinks(
                settings,
                api,
                metrics_alerts=lambda: int(metrics.alerts_open._value.get()),
                on_failure=metrics.sink_write_failed,
            ),
            probe_cycle=_probe_cycle(settings, api, halt, metrics, focus) if cfg.probes_enabled else None,
            metrics=metrics,
            extra_findings=_auto_mode(settings.aws, api),
            stopping=halt,
        )
        holder.append(daemon)
        health = HealthServer(cfg.health_host, cfg.health_port, metrics.exposition, daemon.readiness)
        health.start()
        daemon.start()
        drills = _drill_schedule(settings, daemon, metrics, stop)
        nodes = None
        if cfg.probes_enabled and cfg.node_check_s:

            def probe_nodes(changes: tuple[str, ...], names: frozenset[str]) -> None:
                focus.add(changes, names)
                daemon.probe_soon()

            nodes = NodeTrigger(api, probe_nodes, cfg.node_check_s, stop)
            nodes.start()
        log.info("daemon started", identity=identity, health_port=health.port)
        current = [posture]
        try:
            while not stop.wait(cfg.rules_reload_s):
                _reload_rules(daemon, cfg.rules, current, secrets, log)
        finally:
            clean = daemon.stop(grace_s=cfg.shutdown_grace_s)
            if drills is not None:
                drills.join(cfg.shutdown_grace_s)  # the drill reverts and sweeps on stop
            if nodes is not None:
                nodes.join(1.0)
            health.stop()
    log.info("daemon stopped", clean=clean)
    if not clean and own_signals:
        # A job is stuck in a call past the grace period (its state is saved, the Lease released):
        # exit now rather than wait for its thread and be killed by the kubelet.
        os._exit(0)
    return 0


def _drill_schedule(
    settings: Settings, daemon: Daemon, metrics: DaemonMetrics, stop: threading.Event
) -> DrillSchedule | None:
    """The drill schedule (docs/drills.md), or None while ``drill.every_s`` is 0 (the default)."""
    if not settings.drill.every_s:
        return None
    cfg = settings.daemon

    def run(stopping: threading.Event) -> DrillResult:
        # With the daemon's probes on and drill.probes, drills are judged by probe verdicts too (docs/drills.md).
        probes = settings.probes if cfg.probes_enabled and settings.drill.probes else None
        return run_drill(cfg.kubeconfig, cfg.context, cfg.rules, settings, stop=stopping, probes=probes)

    schedule = DrillSchedule(
        run, settings.drill.every_s, lambda: daemon.leading, DrillMetrics(metrics.registry), Path(cfg.reports_dir), stop
    )
    schedule.start()
    return schedule


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _reload_rules(
    daemon: Daemon, paths: list[str], current: list[Posture], secrets: ClusterSecretReader, log: FilteringBoundLogger
) -> None:
    """Re-read the rules; valid and changed ones replace ``current[0]``, invalid ones are refused."""
    try:
        posture = load_rules(paths)
    except InputError as error:
        log.warning("rules invalid; keeping the last good rules", error=error.render())
        return
    if posture != current[0]:
        daemon.replace_posture(posture, resolve_header_values(posture, os.environ, secrets.secret_value))
        current[0] = posture
        log.info("rules reloaded")


def _config(settings: Settings, identity: str) -> DaemonConfig:
    cfg = settings.daemon
    policy = DriftPolicy(fails_to_open={Method.STATIC: cfg.fails_to_open_static, Method.PROBE: cfg.fails_to_open_probe})
    return DaemonConfig(
        identity=identity,
        static_debounce_s=cfg.static_debounce_s,
        full_static_every_s=cfg.full_static_every_s,
        probe_every_s=cfg.probe_every_s,
        probe_jitter_s=cfg.probe_jitter_s,
        report_cron=cfg.report_cron,
        leader_tick_s=max(0.2, min(5.0, cfg.lease_duration_s / 3)),
        digest_at=settings.slack.digest_at,
        digest_threads=settings.slack.digest_threads,
        outbox_max_unsent=settings.slack.outbox_max_unsent,
        slack_pace_s=settings.slack.pace_s,
        cannot_audit_after_s=cfg.cannot_audit_after_s,
        drift=policy,
    )


def _notifier(slack: SlackSettings) -> Notifier:
    if slack.mode == "bot":
        if slack.bot_token is None or not slack.channel:
            raise InputError(
                "settings",
                "Slack bot mode needs a token and a channel",
                field="AUDITOR_SLACK__BOT_TOKEN / AUDITOR_SLACK__CHANNEL",
                fix="set both, or AUDITOR_SLACK__MODE=off",
            )
        return SlackNotifier(
            build_web_client(slack.bot_token.get_secret_value(), base_url=slack.base_url), slack.channel
        )
    if slack.mode == "webhook":
        if slack.webhook_url is None:
            raise InputError(
                "settings",
                "Slack webhook mode needs a webhook URL",
                field="AUDITOR_SLACK__WEBHOOK_URL",
                fix="set it, or AUDITOR_SLACK__MODE=off",
            )
        return WebhookNotifier(WebhookClient(slack.webhook_url.get_secret_value()))
    return _Silent()


def _counted_notifier(notifier: Notifier, metrics: DaemonMetrics) -> Notifier:
    # With Slack off the outbox is kept, never sent: that is not a failed write.
    return notifier if isinstance(notifier, _Silent) else CountingNotifier(notifier, metrics.sink_write_failed)


def _sinks(
    settings: Settings, api: ApiClient, metrics_alerts: Callable[[], int], on_failure: OnFailure
) -> list[ReportSink]:
    sinks: list[ReportSink] = [DirectorySink(Path(settings.daemon.reports_dir))]
    if settings.daemon.policy_reports:
        sinks.append(PolicyReportSink(PolicyReportWriter(api), on_failure=on_failure))
    aws = settings.aws
    if aws.s3_bucket or aws.security_hub or aws.cloudwatch:
        sinks.append(_aws_sink(aws, metrics_alerts, on_failure))
    return sinks


def _aws_client(aws: AwsSettings, service: str) -> Any:  # boto3's clients are untyped (no stubs installed)
    return boto3.session.Session(region_name=aws.region).client(service, endpoint_url=aws.endpoint_url)


def _aws_sink(aws: AwsSettings, alerts_open: Callable[[], int], on_failure: OnFailure) -> AwsSink:
    archive = hub = cloudwatch = None
    if (aws.s3_bucket or aws.security_hub) and not (aws.account_id and aws.region and aws.cluster_name):
        # Every evidence record names its cluster, account and region, so a fleet can share one
        # bucket and one Security Hub aggregator (docs/aws.md).
        raise InputError(
            "settings",
            "the S3 archive and Security Hub need account id, region and cluster name",
            field="AUDITOR_AWS__ACCOUNT_ID / REGION / CLUSTER_NAME",
            fix="set them (infra/ does), or unset AUDITOR_AWS__S3_BUCKET and AUDITOR_AWS__SECURITY_HUB=false",
        )
    if aws.s3_bucket:
        archive = S3Archive(
            _aws_client(aws, "s3"),
            ArchiveOptions(
                bucket=aws.s3_bucket,
                cluster=aws.cluster_name or "",
                account_id=aws.account_id or "",
                region=aws.region or "",
                prefix=aws.s3_prefix,
                retention_days=aws.s3_retention_days,
            ),
        )
    if aws.security_hub:
        hub = SecurityHubSink(
            _aws_client(aws, "securityhub"), HubOptions(aws.account_id or "", aws.region or "", aws.cluster_name or "")
        )
    if aws.cloudwatch:
        cloudwatch = CloudWatchMetrics(_aws_client(aws, "cloudwatch"), aws.cluster_name or "cluster")
    return AwsSink(archive=archive, hub=hub, metrics=cloudwatch, alerts_open=alerts_open, on_failure=on_failure)


def _auto_mode(aws: AwsSettings, api: ApiClient) -> ExtraFindings:
    if not (aws.verify_auto_mode and aws.cluster_name):
        return tuple
    return AutoModeCheck(_aws_client(aws, "eks"), aws.cluster_name, lambda: read_node_pools(api))


class _CountedRunner:
    """A probe runner whose every result is counted in ``mesh_auditor_probe_outcomes_total``."""

    def __init__(self, runner: ProbeRunner, metrics: DaemonMetrics) -> None:
        self._runner, self._metrics = runner, metrics

    def run(self, plan: RunPlan) -> RunReport:
        report = self._runner.run(plan)
        self._metrics.record_probe_report(plan, report)
        return report


class _Focus:
    """The node trigger's changes not yet probed (thread-safe): the next probe cycle takes them and
    probes the endpoints on those nodes first, naming the change in its evidence (#13)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: list[str] = []
        self._nodes: set[str] = set()

    def add(self, changes: tuple[str, ...], nodes: frozenset[str]) -> None:
        with self._lock:
            self._changes += [c for c in changes if c not in self._changes]
            self._nodes |= nodes

    def take(self) -> tuple[str, frozenset[str]]:
        with self._lock:
            taken = ("; ".join(self._changes), frozenset(self._nodes))
            self._changes, self._nodes = [], set()
        return taken


def _probe_cycle(
    settings: Settings, api: ApiClient, halt: threading.Event, metrics: DaemonMetrics, focus: _Focus | None = None
) -> ProbeCycle:
    runner = _CountedRunner(PodProbeRunner(PodApi(api), runner_options(settings.probes), stop=halt), metrics)
    options = plan_options(settings.probes)
    cycles = itertools.count()  # rotates the endpoints probed by pod IP when over budget (#13)
    focus = focus or _Focus()

    def cycle(
        snapshot: Snapshot, posture: Posture, values: Mapping[tuple[str, str], str | None], static: tuple[Finding, ...]
    ) -> tuple[Finding, ...]:
        run_id = uuid.uuid4().hex[:12]
        reason, nodes = focus.take()
        if nodes:
            structlog.get_logger("auditor.daemon").info("probe cycle for changed nodes", run_id=run_id, changes=reason)
        rotated = dataclasses.replace(options, rotation=next(cycles), focus_nodes=nodes, focus_reason=reason)
        return active_audit(
            snapshot, posture, values=values, static=static, runner=runner, options=rotated, run_id=run_id
        )

    return cycle


__all__ = ["run_daemon"]
