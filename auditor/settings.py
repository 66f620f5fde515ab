"""Settings, built once in ``main()`` from the environment (``AUDITOR_*``), grouped and documented.

Nested groups use ``__``: ``AUDITOR_LOGGING__LEVEL=debug``. Invalid values are input errors (exit
2) that name the variable. The daemon's groups (schedule, Slack, AWS) join here later.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from auditor import __version__
from auditor.errors import InputError


class LoggingSettings(BaseModel):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning",
        description="Log level. warning keeps `auditor check` output clean; logs go to stderr.",
    )
    format: Literal["console", "json"] = Field(
        default="console",
        description="console for people, json for log pipelines (one object per line).",
    )


class ProbeSettings(BaseModel):
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
    url_overrides: dict[str, str] = Field(
        default_factory=dict,
        description='Base URL per Service (JSON: {"ns/svc": "http://host:port"}, or "role:ns/svc" with '
        "role outside, intruder or control). For test rigs and unusual networks; paths are kept.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITOR_", env_nested_delimiter="__", extra="ignore")

    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        variable = "AUDITOR_" + "__".join(str(p) for p in first["loc"]).upper()
        raise InputError(
            "environment",
            first["msg"],
            field=variable,
            fix="see docs/settings.md for allowed values",
        ) from error
