"""Static fixture cases: a base example plus an overlay, and the findings they must produce.

A case is a directory ``tests/fixtures/static/<name>/`` holding:

- ``case.yaml``: ``description``, optional ``base`` (default ``examples/retail-store``),
  optional ``remove`` (``Kind namespace/name`` entries dropped from the base), optional
  ``rules`` (default ``rules/retail-store.yaml``; a path relative to the case directory), optional
  ``env`` (variables for header values), and ``expect``: ``{target: {check id: status}}`` listing
  every finding that is not ``pass``. Every other finding must be ``pass``. Optional
  ``live_expect`` replaces ``expect`` for the live parity test where a live cluster knows more
  than manifests (the server stamps creationTimestamp, so creation order is no longer unknown).
- ``overlay.yaml`` (optional): documents that replace base objects of the same kind, namespace
  and name, or are added.
- ``raw.yaml`` (optional): documents appended to the merged manifests byte for byte, never parsed
  here, for cases about how the YAML itself is read (merge keys, YAML 1.1 scalars): the offline
  reader and kubectl each read the same text. Use ``remove`` to drop the base objects they replace.

``materialize`` writes the merged manifests to one file, so the offline audit and the live parity
test (kubectl apply into the real API server) read exactly the same objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auditor.core.model import Finding
from auditor.report import AuditReport, RunRecord

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "tests" / "fixtures" / "static"


@dataclass(frozen=True)
class Case:
    name: str
    directory: Path
    description: str
    base: Path
    remove: tuple[str, ...]
    rules: Path
    env: dict[str, str]
    expect: dict[str, dict[str, str]] = field(default_factory=dict)
    live_expect: dict[str, dict[str, str]] | None = None


def all_cases() -> list[Case]:
    return [load_case(d) for d in sorted(CASES_DIR.iterdir()) if (d / "case.yaml").is_file()]


def load_case(directory: Path) -> Case:
    spec: dict[str, Any] = yaml.safe_load((directory / "case.yaml").read_text(encoding="utf-8"))
    rules = spec.get("rules")
    return Case(
        name=directory.name,
        directory=directory,
        description=str(spec["description"]),
        base=ROOT / str(spec.get("base", "examples/retail-store")),
        remove=tuple(spec.get("remove", ())),
        rules=(directory / rules) if rules else ROOT / "rules" / "retail-store.yaml",
        env={str(k): str(v) for k, v in (spec.get("env") or {}).items()},
        expect=_expectations(spec.get("expect")),
        live_expect=_expectations(spec["live_expect"]) if "live_expect" in spec else None,
    )


def _expectations(raw: Any) -> dict[str, dict[str, str]]:
    return {str(t): {str(c): str(s) for c, s in checks.items()} for t, checks in (raw or {}).items()}


def _identity(document: dict[str, Any]) -> str:
    meta = document.get("metadata") or {}
    namespace = meta.get("namespace") or ("" if document["kind"] in {"Namespace", "GatewayClass"} else "default")
    return f"{document['kind']} {namespace}/{meta['name']}" if namespace else f"{document['kind']} {meta['name']}"


def merged_documents(case: Case) -> list[dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(case.base.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                documents[_identity(document)] = document
    for identity in case.remove:
        if documents.pop(identity, None) is None:
            raise KeyError(f"{case.name}: remove names {identity!r}, which the base does not have")
    overlay = case.directory / "overlay.yaml"
    if overlay.is_file():
        for document in yaml.safe_load_all(overlay.read_text(encoding="utf-8")):
            if document:
                documents[_identity(document)] = document
    return list(documents.values())


def materialize(case: Case, directory: Path) -> Path:
    target = directory / f"{case.name}.yaml"
    text = yaml.safe_dump_all(merged_documents(case), sort_keys=False)
    raw = case.directory / "raw.yaml"
    if raw.is_file():
        text += "---\n" + raw.read_text(encoding="utf-8")
    target.write_text(text, encoding="utf-8")
    return target


def outcome(document: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The non-pass findings of a JSON audit document, shaped like ``Case.expect``."""
    found: dict[str, dict[str, str]] = {}
    for finding in document["findings"]:
        if finding["status"] != "pass":
            found.setdefault(finding["target"], {})[finding["check"]] = finding["status"]
    return found


def run_report(
    findings: Sequence[Finding], *, run_id: str = "r1", at: dt.datetime | float = 0.0, kind: str = "static"
) -> AuditReport:
    """A daemon run's ``AuditReport`` for sink and PolicyReport tests: ``at`` is a UTC datetime or
    epoch seconds."""
    when = at if isinstance(at, dt.datetime) else dt.datetime.fromtimestamp(at, dt.UTC)
    return AuditReport(tuple(findings), {"mode": "daemon"}, RunRecord(run_id, kind, when, "test"))
