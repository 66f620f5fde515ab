"""Settings, built once in ``main()`` from the environment (``AUDITOR_*``), grouped and documented.

Nested groups use ``__``: ``AUDITOR_LOGGING__LEVEL=debug``; the daemon also reads a YAML file
named by ``AUDITOR_CONFIG_FILE`` (environment wins). Invalid values are input errors (exit 2)
that name their source: the variable, or the file and the field's YAML path. Every field
documents its unit and why its default; docs/settings.md is generated from these descriptions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from auditor import __version__
from auditor.adapters.yaml_io import MAX_FILE_CHARS, InputTooLargeError, YamlSyntaxError, check_size, load_documents
from auditor.core.drill import DRIFT_KINDS
from auditor.errors import InputError


class _Group(BaseModel):
    # An unknown key in a group (``daemon: {rulez: ...}`` in the file, ``AUDITOR_DAEMON__RULEZ``) is
    # a typo whose setting would silently keep its default: an error naming it instead.
    model_config = ConfigDict(extra="forbid")


class LoggingSettings(_Group):
    """How the auditor logs (always to stderr; stdout carries only reports)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning",
        description="Log level. warning keeps `auditor check` output clean; logs go to stderr.",
    )
    format: Literal["console", "json"] = Field(
        default="console",
        description="console for people, json for log pipelines (one object per line).",
    )


class ProbeSettings(_Group):
    """Active probes (``auditor check --active``): where probe pods run and how long they may take."""

    image: str = Field(
        default=f"ghcr.io/mesh-auditor/mesh-auditor:{__version__}",
        min_length=1,
        description="Probe pod image: the auditor's own image (it contains `python -m probes`).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"eks.amazonaws.com/compute-type": "auto"},
        description="Probe pods' nodeSelector (JSON object). EKS Auto Mode nodes carry this label "
        "(semantics §6); `{}` lets any node run them.",
    )
    in_mesh_namespace: str = Field(
        default="mesh-auditor-probes",
        description="Namespace of the in-mesh intruder pod (labelled ambient, deploy/namespaces.yaml).",
    )
    outside_namespace: str = Field(
        default="mesh-auditor-outside",
        description="Namespace of the out-of-mesh pod (not enrolled; the pod is also labelled dataplane-mode none).",
    )
    service_account: str = Field(
        default="mesh-auditor-probe",
        description="ServiceAccount of the intruder and outside pods (deploy/serviceaccounts.yaml).",
    )
    control_enabled: bool = Field(
        default=False,
        description="Allow positive-control pods, which run as an allowed ServiceAccount in a protected "
        "Service's namespace. Off by default: a rule's control.enabled needs this consent too.",
    )
    deadline_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds from the first pod's creation until every probe pod must have finished; "
        "a pod still Pending then is INCONCLUSIVE. Auto Mode may need minutes to add a node.",
    )
    active_deadline_s: int = Field(
        default=120,
        gt=0,
        description="Pod activeDeadlineSeconds: the kubelet kills a probe that runs longer (seconds).",
    )
    request_timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=300,
        description="Per-request timeout inside the probe (seconds; each of connect, read and write). "
        "Policy denials take milliseconds (semantics §1.1).",
    )
    orphan_age_s: float = Field(
        default=900.0,
        ge=0,
        description="Probe pods of other runs older than this (seconds) are deleted when a run starts; "
        "finished ones are deleted at once. Longer than any deadline, so concurrent runs are left alone.",
    )
    marker_header: str | None = Field(
        default=None,
        description="Response header an HTTPRoute on the waypoint adds (semantics §1.7a). When set, it "
        "alone proves the waypoint hop; else server: istio-envoy plus x-envoy-upstream-service-time do.",
    )
    run_as_user: int = Field(default=65532, gt=0, description="Non-root UID (and GID) of probe pods.")
    cluster_domain: str = Field(default="cluster.local", description="Cluster DNS domain of Service names.")
    endpoints_per_cycle: int = Field(
        default=16,
        ge=0,
        le=1000,
        description="Ready endpoints of protected Services probed by pod IP per cycle, over all Services (0: by "
        "Service name only). More than this rotate fairly: each is probed within ceil(endpoints / this) cycles.",
    )
    pod_ip_bypass_severity: Literal["critical", "high", "medium", "low"] = Field(
        default="low",
        description="Severity of waypoint-enrollment.pod-ip-bypass (advisory by default): an intruder reached a "
        "pod by its IP, around the Service's waypoint (semantics §4.6).",
    )
    url_overrides: dict[str, str] = Field(
        default_factory=dict,
        description='Base URL per Service (JSON: {"ns/svc": "http://host:port"}, or "role:ns/svc" with '
        'role outside, intruder or control), and per endpoint probed by pod IP ("endpoint:<ip>:<port>"). '
        "For test rigs and unusual networks; paths are kept.",
    )


class SlackSettings(_Group):
    """Where drift alerts go. Tokens are ``SecretStr``: never logged, never rendered."""

    mode: Literal["off", "bot", "webhook"] = Field(
        default="off", description="bot: threads and updates (needs chat:write); webhook: new messages only."
    )
    bot_token: SecretStr | None = Field(default=None, description="xoxb- token for bot mode.")
    channel: str = Field(default="", description="Channel id (C...) for bot mode.")
    webhook_url: SecretStr | None = Field(default=None, description="Incoming-webhook URL for webhook mode.")
    base_url: str | None = Field(default=None, description="Slack API base URL; only for tests and proxies.")
    digest_at: int = Field(default=10, ge=2, description="This many alerts opening at once send one digest first.")
    digest_threads: int = Field(
        default=5, ge=0, description="Of a digest's alerts, only the first N get their own message and thread."
    )
    pace_s: float = Field(
        default=1.0, ge=0, description="Seconds between Slack calls (Slack allows about 1 message/s per channel)."
    )
    outbox_max_unsent: int = Field(
        default=1000, ge=10, description="Unsent Slack messages kept; beyond it the oldest updates, then replies, drop."
    )


class AwsSettings(_Group):
    """Optional AWS evidence; every part is off until configured. Credentials come from the usual
    AWS chain (IRSA / EKS Pod Identity in-cluster), never from these settings."""

    region: str | None = Field(
        default=None, description="AWS region of the cluster and the sinks (named in every evidence record)."
    )
    cluster_name: str | None = Field(
        default=None, description="EKS cluster name (describe_cluster, finding ids, every evidence record)."
    )
    account_id: str | None = Field(
        default=None,
        description="Account id (Security Hub's ProductArn, every evidence record); S3 and Security Hub need it.",
    )
    s3_bucket: str | None = Field(default=None, description="Report archive bucket; unset = no archive.")
    s3_prefix: str = Field(
        default="mesh-auditor/reports",
        description="Key prefix of archived reports: <prefix>/<account>/<region>/<cluster>/YYYY/MM/DD/<run>.json.",
    )
    s3_retention_days: int = Field(default=365, ge=1, description="Object Lock retention of each record, in days.")
    security_hub: bool = Field(default=False, description="Import findings into Security Hub (ASFF).")
    cloudwatch: bool = Field(default=False, description="Put cycle metrics to CloudWatch (namespace MeshAuditor).")
    verify_auto_mode: bool = Field(default=False, description="Report whether the cluster is EKS Auto Mode.")
    endpoint_url: str | None = Field(default=None, description="AWS endpoint override; only for tests (moto).")


class DaemonSettings(_Group):
    """``auditor daemon``: what it audits, how often, and where it keeps its state."""

    rules: list[str] = Field(default_factory=lambda: ["/etc/mesh-auditor/rules.yaml"], description="Rules files.")
    namespace: str = Field(default="mesh-auditor", description="Namespace of its state ConfigMap and Lease.")
    identity: str = Field(default="", description="This replica's name in the Lease (default: the hostname).")
    kubeconfig: str | None = Field(default=None, description="Out of cluster only; in-cluster config otherwise.")
    context: str | None = Field(default=None, description="kubeconfig context, with kubeconfig.")
    static_debounce_s: float = Field(default=3.0, gt=0, description="Seconds a burst of config changes must settle.")
    full_static_every_s: float = Field(default=600.0, gt=0, description="Full static re-audit period, seconds.")
    probes_enabled: bool = Field(default=False, description="Run active probe cycles (needs the probe RBAC).")
    probe_every_s: float = Field(default=300.0, gt=0, description="Probe cycle period, seconds (a few minutes).")
    probe_jitter_s: float = Field(default=30.0, ge=0, description="Random delay added to each probe cycle.")
    node_check_s: float = Field(
        default=15.0,
        ge=0,
        description="With probes: Nodes and ztunnel pods are watched; a new node, or a ztunnel pod replaced or "
        "Ready again, starts a probe cycle at once. After a watch error the trigger retries with backoff capped at "
        "this many seconds, which bounds the delay to probe a new node once the API server answers. 0 = off.",
    )
    lease_duration_s: int = Field(default=15, ge=2, description="Leader lease duration; standby takes over after it.")
    report_cron: str = Field(default="0 6 * * *", description="Daily compliance report (cron, UTC).")
    reports_dir: str = Field(default="/var/lib/mesh-auditor/reports", description="Local JSON report archive.")
    policy_reports: bool = Field(default=True, description="Write PolicyReports (needs the wgpolicyk8s.io CRDs).")
    health_port: int = Field(default=8080, ge=0, le=65535, description="/metrics, /healthz, /readyz (0 = any).")
    health_host: str = Field(default="0.0.0.0", description="Address the health server binds.")  # noqa: S104 - a pod serves its probes on its own IP
    fails_to_open_static: int = Field(
        default=1, ge=1, description="Consecutive failing static audits to open an alert."
    )
    fails_to_open_probe: int = Field(default=2, ge=1, description="Consecutive failing probe cycles to open an alert.")
    cannot_audit_after_s: float = Field(
        default=60.0, gt=0, description="API unreachable or snapshot out of sync this long: one Slack alert."
    )
    shutdown_grace_s: float = Field(
        default=10.0, gt=0, description="On SIGTERM, seconds running work gets to reach a safe point."
    )
    rules_reload_s: float = Field(
        default=60.0, gt=0, description="Re-read rules this often; bad rules keep the last good ones."
    )


class DrillSettings(_Group):
    """Chaos drills (``auditor drill``, and the daemon's schedule): a canary in a sandbox namespace
    the auditor owns, drifted one kind at a time to prove detection and alerting (docs/drills.md)."""

    namespace: str = Field(
        default="mesh-auditor-drill",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="The sandbox namespace (the chart's drill.namespace, labelled ambient). A drill writes "
        "nothing outside it; RBAC and the drill-guard admission policy confine it there too.",
    )
    service: str | None = Field(
        default=None,
        description="The protected Service (ns/name) whose protection the canary mirrors; default: the first "
        "with a waypoint and required headers.",
    )
    kinds: list[str] = Field(
        default_factory=lambda: [
            "permissive-peer-authentication",
            "use-waypoint-removed",
            "principals-widened",
            "header-condition-removed",
            "pod-opted-out",
        ],
        description="Drift kinds to inject, one at a time, in this order.",
    )
    image: str = Field(
        default=f"ghcr.io/mesh-auditor/mesh-auditor-probe:{__version__}",
        min_length=1,
        description="Canary image: the probe image serves HTTP with `python -m http.server`.",
    )
    poll_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds between audits of the canary while awaiting a state."
    )
    detect_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="Seconds a drift (or the baseline, or the resolution) may take to show before the step "
        "counts as not detected (not resolved). Waypoints and pods on a new Auto Mode node take minutes.",
    )
    every_s: float = Field(
        default=0.0,
        ge=0,
        description="Daemon: run a drill this often (seconds); 0 = never (drills are off by default).",
    )
    kill_switch: bool = Field(
        default=False,
        description="true: no drill starts, a running one reverts and cleans up. The sandbox namespace's label "
        "mesh-auditor.dev/drills=off does the same without a restart.",
    )
    probes: bool = Field(
        default=False,
        description="Daemon with probes on: judge drills by probe verdicts too (each drift must fail its promise's "
        "probe verdict; drills[].detected_by). Needs the sandbox namespace in the chart's control.namespaces, for "
        "the canary's control probe. `auditor drill --active` does the same for one drill.",
    )
    slack_channel: str = Field(
        default="", description="Channel id for drill alerts (bot mode); empty: the alerts' channel (slack.channel)."
    )
    slack_thread_ts: str = Field(
        default="", description="Post drill alerts as replies in this thread (bot mode; ts of its first message)."
    )

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        known = [k.name for k in DRIFT_KINDS]
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise ValueError(f"unknown drift kind(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return kinds


class Settings(BaseSettings):
    """Environment (``AUDITOR_*``, ``__`` between groups) over an optional YAML file
    (``AUDITOR_CONFIG_FILE``, e.g. a mounted ConfigMap)."""

    model_config = SettingsConfigDict(env_prefix="AUDITOR_", env_nested_delimiter="__", extra="ignore")

    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    drill: DrillSettings = Field(default_factory=DrillSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get("AUDITOR_CONFIG_FILE")
        if not config_file:
            return (init_settings, env_settings)
        if not Path(config_file).is_file():
            raise InputError(
                config_file,
                "the settings file does not exist",
                field="AUDITOR_CONFIG_FILE",
                fix="mount it or unset the variable",
            )
        return (init_settings, env_settings, _BoundedYamlSource(settings_cls, yaml_file=config_file))


class _BoundedYamlSource(YamlConfigSettingsSource):
    """The settings file read by the shared bounded reader (auditor/adapters/yaml_io.py), not
    ``yaml.safe_load``: an alias bomb or an oversized file is an input error naming the file."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        name = str(file_path)
        try:
            with file_path.open(encoding="utf-8") as handle:
                text = handle.read(MAX_FILE_CHARS + 1)
            check_size(text)
            documents = list(load_documents(text))
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(name, f"cannot read: {error}", fix="check the file's permissions and encoding") from error
        except InputTooLargeError as error:
            raise InputError(name, str(error), fix="see Input limits in docs/cli.md") from error
        except YamlSyntaxError as problem:
            raise InputError(name, problem.message, document=problem.document, fix=problem.fix) from problem
        if len(documents) > 1 or (documents and not isinstance(documents[0][1], dict)):
            raise InputError(name, "the settings file must hold one mapping", fix="see docs/settings.md")
        return documents[0][1] if documents else {}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment and the optional file; ``InputError`` naming where a bad value is.

    A value is blamed on the environment variable that set it (``AUDITOR_DAEMON__RULES``, or the
    group's JSON variable ``AUDITOR_DAEMON``), else on the ``AUDITOR_CONFIG_FILE`` file with the
    field's YAML path (``daemon.rules[0]``); every invalid field is listed, the first one leads.
    ``environ`` is only read to attribute errors (pydantic-settings reads ``os.environ``).
    """
    try:
        return Settings()
    except ValidationError as error:
        raise _settings_error(error, os.environ if environ is None else environ) from error


def _settings_error(error: ValidationError, environ: Mapping[str, str]) -> InputError:
    blamed = [(*_source_of(tuple(e["loc"]), environ), e["msg"]) for e in error.errors()]
    (source, field, problem), rest = blamed[0], blamed[1:]
    if rest:
        problem += "; also " + "; ".join(f"{f} ({s}): {m}" for s, f, m in rest)
    return InputError(source, problem, field=field, fix="see docs/settings.md for allowed values")


def _source_of(loc: tuple[str | int, ...], environ: Mapping[str, str]) -> tuple[str, str]:
    """(source, field): the variable that set ``loc`` if one did, else the settings file's YAML path."""
    names = {name.upper() for name in environ}
    keys = [str(part) for part in loc if isinstance(part, str)]
    for depth in range(len(keys), 0, -1):
        variable = "AUDITOR_" + "__".join(keys[:depth]).upper()
        if variable in names:
            return "environment", variable
    config_file = environ.get("AUDITOR_CONFIG_FILE")
    if config_file:
        return config_file, _yaml_path(loc)
    return "environment", "AUDITOR_" + "__".join(keys).upper()


def _yaml_path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def settings_markdown() -> str:
    """docs/settings.md: every setting, its variable, default and why (from the field descriptions)."""
    lines = [
        "# Settings",
        "",
        "Generated by `auditor settings` from `auditor/settings.py`. Environment variables win over",
        "the YAML file named by `AUDITOR_CONFIG_FILE` (keys nest like the variables: `daemon: {rules: [...]}`).",
        "Invalid values exit 2 naming the variable, or the file and the field (`daemon.rules[0]`).",
        "Secrets (`SecretStr`) are never logged or rendered.",
        "",
    ]
    for group_name, group_field in Settings.model_fields.items():
        model = group_field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        lines += [f"## `{group_name}`", "", " ".join((model.__doc__ or "").split()).replace("``", "`"), ""]
        lines += ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            default = (
                "(secret)"
                if "Secret" in str(field.annotation)
                else _default_text(field.get_default(call_default_factory=True))
            )
            variable = f"AUDITOR_{group_name.upper()}__{name.upper()}"
            lines.append(f"| `{variable}` | `{default}` | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)


def _default_text(value: object) -> str:
    return "unset" if value is None else str(value).replace("|", "\\|")
