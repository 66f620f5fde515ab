"""The composition root, one for every entry point: builds adapters from settings and arguments,
injects them through the ports (``auditor.ports``) and runs the core.

- this module: ``auditor check`` (offline and live, ``--active``), logging, and the probing
  wiring both commands share (``active_audit``, ``plan_options``, ``runner_options``);
- ``auditor.app.daemon``: ``auditor daemon`` (it loads the SDKs only the daemon needs, so the
  CLI's start-up does not pay for them).

Nothing else wires dependencies; no module creates clients at import time.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules, resolve_header_values, unresolved_sources
from auditor.core.audit import run_static_audit
from auditor.core.istioversion import semantics_of
from auditor.core.model import Finding, Severity
from auditor.core.posture import Posture
from auditor.core.snapshot import Snapshot
from auditor.errors import ClusterUnreachableError, InputError
from auditor.render.escape import visible
from auditor.report import AuditReport

if TYPE_CHECKING:
    import structlog

    from auditor.adapters.probepods.runner import RunnerOptions
    from auditor.core.drill import DrillAlerter, DrillResult
    from auditor.core.probing.probeplan import PlanOptions
    from auditor.ports import ProbeRunner
    from auditor.settings import ProbeSettings, Settings


_DEFAULT_LEVEL = logging.WARNING
"""``LoggingSettings.level``'s default (tests/unit/test_startup.py keeps the two equal)."""


def configure_logging(settings: Settings | None) -> None:
    """structlog for our own lines, and every other logger through the same renderer: the
    standard library's (APScheduler, urllib3, kubernetes), ``warnings`` and uncaught exceptions
    in any thread, so a JSON log stream stays one JSON object per line (tracebacks included,
    as an ``exception`` field).

    ``None``: the settings were not built (an offline ``auditor check`` with no ``AUDITOR_*``
    variable, so every setting is its default). Records below the default level are dropped
    unseen; the first record, warning or uncaught exception at or above it builds the settings
    and this configuration before it is written. Start-up (#16): pydantic-settings and
    structlog are imported only then.
    """
    if settings is None:
        _configure_on_first_record()
        return
    import structlog  # noqa: PLC0415 - start-up (#16)

    level = getattr(logging, settings.logging.level.upper())
    json_out = settings.logging.format == "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_out else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    exceptions: list[structlog.types.Processor] = [structlog.processors.format_exc_info] if json_out else []
    # JSON escapes control characters itself; the console renderer prints strings raw.
    shown: list[structlog.types.Processor] = [] if json_out else [visible_log_strings]
    # Our own lines go through the same stdlib handler as everyone else's: one stream behind one
    # lock, so lines from different threads and loggers never interleave within a line.
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                *shown,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # APScheduler logs every job run at INFO ("Running job ..."): its warnings and errors matter.
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> JSON
    uncaught = structlog.get_logger("auditor.uncaught")

    def excepthook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        uncaught.error("uncaught exception", exc_info=(kind, error, trace))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        uncaught.error(
            "uncaught exception in a thread",
            thread=getattr(args.thread, "name", None),
            exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


class _FirstRecord(logging.Handler):
    """Until a record is written: configure logging from the settings, then write it."""

    def emit(self, record: logging.LogRecord) -> None:
        _configure_now()
        if record.levelno >= logging.getLogger().level:
            for handler in logging.getLogger().handlers:
                handler.handle(record)


def _configure_now() -> None:
    from auditor.settings import load_settings  # noqa: PLC0415 - start-up (#16)

    configure_logging(load_settings())


def _configure_on_first_record() -> None:
    root = logging.getLogger()
    root.handlers[:] = [_FirstRecord()]
    root.setLevel(_DEFAULT_LEVEL)
    logging.captureWarnings(True)

    def excepthook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        _configure_now()
        sys.excepthook(kind, error, trace)

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        _configure_now()
        threading.excepthook(args)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def visible_log_strings(_logger: object, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """Show control characters in every string of a log line as escapes (the console renderer
    prints strings raw; JSON escapes them itself): a logged name cannot forge or erase a line."""
    return {key: visible(value) if isinstance(value, str) else value for key, value in event.items()}


@dataclass(frozen=True, slots=True)
class AuditResult:
    """One ``auditor check``: its findings (sorted), the inputs they came from (shown in the JSON
    summary) and the problems to print beside them (read errors, unresolved header values)."""

    findings: tuple[Finding, ...]
    inputs: dict[str, object]
    problems: tuple[str, ...] = ()

    @property
    def report(self) -> AuditReport:
        """What the renderers take."""
        return AuditReport(self.findings, self.inputs)


def check_offline(
    manifests: Sequence[str], rules: Sequence[str], environ: Mapping[str, str], stdin: TextIO
) -> AuditResult:
    """``auditor check --manifests``: read everything first, so bad input changes nothing."""
    # The standard library's logger: it goes through the same handler and renderer as
    # structlog's (configure_logging), and needs no structlog at start-up (#16).
    log = logging.getLogger("auditor.check")
    with without_cycle_collection():
        posture = load_rules(rules)
        loaded = read_manifests(manifests, stdin)
        log.info(
            "inputs read",
            extra={"files": len(loaded.files), "services": len(loaded.snapshot.services), "rules": list(rules)},
        )

        def secret(namespace: str, name: str, key: str) -> str | None:
            return loaded.secrets.get((namespace, name), {}).get(key)

        values = resolve_header_values(posture, environ, secret)
        findings = run_static_audit(loaded.snapshot, posture, values)
    log.info("audit done", extra={"findings": len(findings)})
    inputs: dict[str, object] = {
        "mode": "offline",
        "manifests": list(manifests),
        "rules": list(rules),
        "posture": list(posture.names),
        "istio_semantics": semantics_of(loaded.snapshot).as_dict(),
    }
    return AuditResult(findings, inputs, unresolved_sources(posture, values))


def _run_id() -> str:
    """A short random id for one probe run or drill (12 hex digits)."""
    import uuid  # noqa: PLC0415 - start-up (#16): an offline check makes no run id

    return uuid.uuid4().hex[:12]


def _random_hex(size: int) -> str:
    """``size`` random bytes as hex, from ``secrets`` (a drill's throwaway header value)."""
    import secrets  # noqa: PLC0415 - start-up (#16): an offline check needs none

    return secrets.token_hex(size)


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a one-shot audit builds its objects.

    Reading and auditing make millions of objects that all live until the audit ends; the
    collector kept re-scanning them (a fifth of the CPU time of a 10,000-Service audit, #16) and
    found nothing: the memory is freed by reference counting either way. The CLI also renders
    an offline audit's report inside it (another 0.1-0.2 s of collections at 10,000 Services).
    Nested uses are fine: only the outermost one turns the collector back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_live(
    kubeconfig: str | None,
    context: str | None,
    rules: Sequence[str],
    environ: Mapping[str, str],
    *,
    probes: ProbeSettings | None = None,
) -> AuditResult:
    """``auditor check --kubeconfig``: the same audit over a snapshot read from the API server.

    Raises ``ClusterUnreachableError`` when the API server answers nothing at all.
    With ``probes`` (``--active``), probe pods then send real traffic and their verdicts join
    the static findings (``method: probe``).
    """
    # The cluster adapters (the kubernetes client: a third of an offline audit's start-up) are
    # imported only by the commands that talk to a cluster.
    from auditor.adapters.k8s.reader import ClusterReader  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.k8s.secrets import ClusterSecretReader  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.kubeapi import ApiUnavailable, build_api_client, server_of  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.probepods.kube import PodApi  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.probepods.runner import PodProbeRunner  # noqa: PLC0415 - start-up time (#16)

    posture = load_rules(rules)
    # One-shot: urllib3 logs every retry of a failed connection at WARNING, and this command
    # reports the final failure once, naming the server and the cause (``ClusterUnreachableError``).
    retries = logging.getLogger("urllib3.connectionpool")
    if retries.getEffectiveLevel() > logging.DEBUG:
        retries.setLevel(logging.ERROR)
    inputs: dict[str, object] = {
        "mode": "live",
        "kubeconfig": kubeconfig or "(in-cluster)",
        "context": context,
        "rules": list(rules),
        "posture": list(posture.names),
    }
    with closing(build_api_client(kubeconfig, context)) as api:
        try:
            snapshot = ClusterReader(api).snapshot()
        except ApiUnavailable as error:
            source = f"kubeconfig {kubeconfig or '(default)'}" if kubeconfig or context else "in-cluster config"
            source += f", context {context}" if context else ""
            raise ClusterUnreachableError(server_of(api), str(error), source) from error
        values = resolve_header_values(posture, environ, ClusterSecretReader(api).secret_value)
        findings = run_static_audit(snapshot, posture, values)
        inputs["istio_semantics"] = semantics_of(snapshot).as_dict()
        if probes is not None:
            runner = PodProbeRunner(PodApi(api), runner_options(probes))
            run_id = _run_id()
            findings = active_audit(
                snapshot,
                posture,
                values=values,
                static=findings,
                runner=runner,
                options=plan_options(probes),
                run_id=run_id,
            )
            inputs.update(active=True, probe_run=run_id)
    problems = tuple(f"{p.resource}: {p.message}" for p in snapshot.problems) + unresolved_sources(posture, values)
    return AuditResult(findings, inputs, problems)


def active_audit(
    snapshot: Snapshot,
    posture: Posture,
    *,
    values: Mapping[tuple[str, str], str | None],
    static: tuple[Finding, ...],
    runner: ProbeRunner,
    options: PlanOptions,
    run_id: str,
) -> tuple[Finding, ...]:
    """Static findings plus the verdicts of one probe run, sorted together."""
    import structlog  # noqa: PLC0415 - start-up time (#16)

    from auditor.core.probing.probeplan import plan_probes  # noqa: PLC0415 - start-up time (#16)
    from auditor.core.probing.verdict import probe_findings  # noqa: PLC0415 - start-up time (#16)

    log = structlog.get_logger("auditor.check")
    plan = plan_probes(posture, snapshot, values, run_id, options)
    log.info("probe run", run_id=run_id, pods=len(plan.batches), not_planned=len(plan.not_planned))
    report = runner.run(plan)
    return tuple(sorted(static + probe_findings(plan, report, static), key=Finding.sort_key))


def plan_options(settings: ProbeSettings) -> PlanOptions:
    from auditor.core.probing.probeplan import PlanOptions  # noqa: PLC0415 - start-up time (#16)

    return PlanOptions(
        in_mesh_namespace=settings.in_mesh_namespace,
        outside_namespace=settings.outside_namespace,
        service_account=settings.service_account,
        control_allowed=settings.control_enabled,
        cluster_domain=settings.cluster_domain,
        url_overrides=dict(settings.url_overrides),
        timeout_s=settings.request_timeout_s,
        marker_header=settings.marker_header,
        endpoint_budget=settings.endpoints_per_cycle,
        bypass_severity=Severity(settings.pod_ip_bypass_severity),
    )


def runner_options(settings: ProbeSettings) -> RunnerOptions:
    from auditor.adapters.probepods.podspec import PodOptions  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.probepods.runner import RunnerOptions  # noqa: PLC0415 - start-up time (#16)

    pod = PodOptions(
        image=settings.image,
        node_selector=dict(settings.node_selector),
        run_as_user=settings.run_as_user,
        active_deadline_s=settings.active_deadline_s,
    )
    sweep = (settings.in_mesh_namespace, settings.outside_namespace)
    return RunnerOptions(pod, settings.deadline_s, settings.orphan_age_s, sweep)


def run_drill(
    kubeconfig: str | None,
    context: str | None,
    rules: Sequence[str],
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    probes: ProbeSettings | None = None,
) -> DrillResult:
    """``auditor drill`` (and the daemon's drill schedule): one chaos drill in the sandbox
    namespace, judged by the static audit of the live snapshot (docs/drills.md). With ``probes``
    (``--active``, or the daemon's probes on) every audit also runs probe pods against the canary:
    the baseline needs passing probe verdicts and each drift must fail its promise's probe verdict
    (``detected_by`` in the result says which methods detected it).

    Raises ``InputError`` when the rules protect nothing a canary can mirror.
    """
    import structlog  # noqa: PLC0415 - start-up time (#16)

    from auditor.adapters.k8s.drill import KubeSandbox  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.k8s.reader import ClusterReader  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.kubeapi import build_api_client  # noqa: PLC0415 - start-up time (#16)
    from auditor.core.drill import (  # noqa: PLC0415 - start-up time (#16)
        CanaryError,
        CanaryOptions,
        applicable,
        build_canary,
        choose_source,
        drift_kind,
        drill_steps,
    )
    from auditor.daemon.drillrun import DrillRunner, RunOptions  # noqa: PLC0415 - start-up time (#16)

    posture = load_rules(rules)
    drill = settings.drill
    options = CanaryOptions(
        namespace=drill.namespace,
        image=drill.image,
        run_as_user=settings.probes.run_as_user,
        node_selector=dict(settings.probes.node_selector),
        header_value=f"mesh-auditor-drill-{_random_hex(8)}",  # never a real header value
    )
    try:
        source = choose_source(posture, drill.service)
        canary = build_canary(source, posture.mesh, options)
    except CanaryError as error:
        raise InputError(
            ", ".join(rules),
            str(error),
            field="AUDITOR_DRILL__SERVICE / AUDITOR_DRILL__NAMESPACE",
            fix="see docs/drills.md",
        ) from error
    kinds = [drift_kind(name) for name in drill.kinds]
    skipped = tuple((k.name, why) for k in kinds if (why := applicable(k, canary)) is not None)
    drill_id = _run_id()
    structlog.get_logger("auditor.drill").info(
        "drill starting", drill=drill_id, canary=canary.target, mirrors=source.target
    )
    with closing(build_api_client(kubeconfig, context)) as api:
        reader = ClusterReader(api)
        probe_runner: ProbeRunner | None = None
        if probes is not None:
            from auditor.adapters.probepods.kube import PodApi  # noqa: PLC0415 - start-up time (#16)
            from auditor.adapters.probepods.runner import PodProbeRunner  # noqa: PLC0415 - start-up time (#16)

            probe_runner = PodProbeRunner(PodApi(api), runner_options(probes))

        def audit() -> tuple[Finding, ...]:
            snapshot = reader.snapshot()
            static = run_static_audit(snapshot, canary.posture, canary.header_values())
            if probe_runner is None or probes is None:
                return static
            # The canary's positive control runs as the drill's own account in the sandbox
            # (build_canary): no real workload is impersonated, so it needs no second opt-in.
            options = dataclasses.replace(plan_options(probes), control_allowed=True)
            run_id = _run_id()
            return active_audit(
                snapshot,
                canary.posture,
                values=canary.header_values(),
                static=static,
                runner=probe_runner,
                options=options,
                run_id=run_id,
            )

        runner = DrillRunner(
            canary,
            KubeSandbox(api, drill.namespace),
            audit,
            drill_alerter(settings, drill_id),
            RunOptions(
                poll_s=drill.poll_s,
                timeout_s=drill.detect_timeout_s,
                kill_switch=drill.kill_switch,
                by_probes=probe_runner is not None,
            ),
            stop=stop,
        )
        result = runner.run(drill_steps(canary, kinds))
    return dataclasses.replace(result, skipped=skipped)


def drill_alerter(settings: Settings, drill_id: str) -> DrillAlerter:
    """Where drill alerts go: Slack's mode, the drill channel (default: the alerts' channel) and thread."""
    from slack_sdk.webhook import WebhookClient  # noqa: PLC0415 - start-up time (#16)

    from auditor.adapters.slack.drill import NoAlerter, SlackDrillAlerter, WebhookDrillAlerter  # noqa: PLC0415 - start-up time (#16)
    from auditor.adapters.slack.notifier import build_web_client  # noqa: PLC0415 - start-up time (#16)

    slack, drill = settings.slack, settings.drill
    if slack.mode == "bot" and slack.bot_token is not None and (drill.slack_channel or slack.channel):
        client = build_web_client(slack.bot_token.get_secret_value(), base_url=slack.base_url)
        return SlackDrillAlerter(client, drill.slack_channel or slack.channel, drill.slack_thread_ts, drill_id)
    if slack.mode == "webhook" and slack.webhook_url is not None:
        return WebhookDrillAlerter(WebhookClient(slack.webhook_url.get_secret_value()))
    return NoAlerter()
