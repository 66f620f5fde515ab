"""The composition root: builds adapters from settings and arguments and runs the core.

Nothing else wires dependencies; no module creates clients at import time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TextIO

import structlog

from auditor.adapters.k8s.client import build_api_client
from auditor.adapters.k8s.reader import ClusterReader
from auditor.adapters.k8s.secrets import ClusterSecretReader
from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules, resolve_header_values
from auditor.core.audit import run_static_audit
from auditor.core.model import Finding
from auditor.settings import Settings


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.logging.level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.logging.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


@dataclass(frozen=True, slots=True)
class AuditResult:
    findings: tuple[Finding, ...]
    inputs: dict[str, object]
    problems: tuple[str, ...] = ()


def check_offline(
    manifests: Sequence[str], rules: Sequence[str], environ: Mapping[str, str], stdin: TextIO
) -> AuditResult:
    """``auditor check --manifests``: read everything first, so bad input changes nothing."""
    log = structlog.get_logger("auditor.check")
    posture = load_rules(rules)
    loaded = read_manifests(manifests, stdin)
    log.info("inputs read", files=len(loaded.files), services=len(loaded.snapshot.services), rules=list(rules))

    def secret(namespace: str, name: str, key: str) -> str | None:
        return loaded.secrets.get((namespace, name), {}).get(key)

    values = resolve_header_values(posture, environ, secret)
    findings = run_static_audit(loaded.snapshot, posture, values)
    log.info("audit done", findings=len(findings))
    inputs: dict[str, object] = {
        "mode": "offline",
        "manifests": list(manifests),
        "rules": list(rules),
        "posture": list(posture.names),
    }
    return AuditResult(findings, inputs)


def check_live(
    kubeconfig: str | None, context: str | None, rules: Sequence[str], environ: Mapping[str, str]
) -> AuditResult:
    """``auditor check --kubeconfig``: the same audit over a snapshot read from the API server."""
    posture = load_rules(rules)
    with closing(build_api_client(kubeconfig, context)) as api:
        snapshot = ClusterReader(api).snapshot()
        values = resolve_header_values(posture, environ, ClusterSecretReader(api).secret_value)
    findings = run_static_audit(snapshot, posture, values)
    inputs: dict[str, object] = {
        "mode": "live",
        "kubeconfig": kubeconfig or "(in-cluster)",
        "context": context,
        "rules": list(rules),
        "posture": list(posture.names),
    }
    return AuditResult(findings, inputs, tuple(f"{p.resource}: {p.message}" for p in snapshot.problems))
