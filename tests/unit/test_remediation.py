"""Every FAIL carries this finding's own fix: real names, no placeholder, valid YAML, a real change.

For the five planted drifts of examples/retail-store-drifted and every static fixture case, each
FAIL's ``remediation_yaml`` is parsed, its documents must name objects of the input (or create
one the input lacks), contain no ``<placeholder>``, and change the input: applied to the audited
manifests (``kubectl apply`` replaces the object, a strategic or merge patch merges into it,
``${VAR}`` filled in as envsubst would from the rules' header value), the audit of the result no
longer FAILs that check on that target. Findings without YAML say why (``remediation_note``).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.adapters.rules.loader import load_rules
from auditor.cli import main
from auditor.core.alerting.drift import DriftBook, DriftPolicy
from auditor.core.checks.fixes import header_variable
from auditor.render.document import findings_from_document
from auditor.render.html import render_html
from auditor.render.junit import render_junit
from auditor.render.slack import alert_message
from auditor.render.text import render_markdown, render_table
from auditor.report import AuditReport
from tests.cases import Case, all_cases, load_case, materialize, merged_documents

ROOT = Path(__file__).resolve().parents[2]
DRIFTED = load_case(ROOT / "tests" / "fixtures" / "static" / "capture-pod-opt-out")
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 _-]*>")
CASES = all_cases()
# What the controller reports (not Programmed, WaypointBound=False) is no YAML: those FAILs say so.
STATUS_ONLY = frozenset({"waypoint-status-bound-false", "waypoint-status-not-programmed"})


def _audit(manifests: Path, rules: Path) -> dict[str, Any]:
    out = io.StringIO()
    main(["check", "--manifests", str(manifests), "--rules", str(rules), "--output", "json"], stdout=out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def _key(document: dict[str, Any]) -> tuple[str, str, str]:
    meta = document.get("metadata") or {}
    namespace = meta.get("namespace") or ("" if document["kind"] in {"Namespace", "NodePool"} else "default")
    return str(document["kind"]), str(namespace), str(meta["name"])


def _steps(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(how, document) per YAML document; ``how`` is apply, strategic or merge (from its comment)."""
    steps = []
    for part in text.split("---\n"):
        head = part.splitlines()[0]
        how = "apply" if head.startswith("# kubectl apply") else head.rsplit("--type ", 1)[1].split()[0]
        steps.append((how, yaml.safe_load(part)))
    return steps


def _merge(target: Any, patch: Any, *, strategic: bool) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif strategic and key == "ports" and isinstance(value, list) and all("port" in v for v in value):
            # A Service's ports merge by their patchMergeKey, port (k8s.io/api core/v1 ServiceSpec).
            merged = {p["port"]: dict(p) for p in out.get(key, [])}
            for item in value:
                merged[item["port"]] = _merge(merged.get(item["port"]), item, strategic=True)
            out[key] = list(merged.values())
        elif strategic and key == "containers" and isinstance(value, list):
            deleted = {c["name"] for c in value if c.get("$patch") == "delete"}
            out[key] = [c for c in out.get(key, []) if c.get("name") not in deleted]
        else:
            out[key] = _merge(out.get(key), value, strategic=strategic)
    return out


def _header_values(case: Case, documents: list[dict[str, Any]]) -> dict[str, str]:
    """The value envsubst would fill in for each ``${VAR}`` a fix writes (from the rules)."""
    values = {}
    for protected in load_rules([str(case.rules)]).protected:
        for header in protected.required_headers:
            source = header.value
            value = source.literal or case.env.get(source.from_env or "")
            if source.secret_ref is not None:
                ref = source.secret_ref
                secret = next(
                    (d for d in documents if _key(d) == ("Secret", ref.namespace or protected.namespace, ref.name)),
                    None,
                )
                data = (secret or {}).get("data") or {}
                value = base64.b64decode(data[ref.key]).decode() if ref.key in data else None
            if value:
                values[header_variable(protected, header.name)] = value
    return values


def _applied(documents: list[dict[str, Any]], text: str, values: dict[str, str]) -> list[dict[str, Any]]:
    for name, value in values.items():
        text = text.replace(f"${{{name}}}", value)
    by_key = {_key(d): d for d in documents}
    for how, document in _steps(text):
        key = _key(document)
        if how == "apply":
            by_key[key] = document
        else:
            assert key in by_key, f"the patch names {key}, which the input does not hold"
            by_key[key] = _merge(by_key[key], document, strategic=how == "strategic")
    return list(by_key.values())


def _failures(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in document["findings"] if f["status"] == "fail"]


def _assert_fix_is_this_findings(
    case: Case,
    documents: list[dict[str, Any]],
    finding: dict[str, Any],
    tmp_path: Path,
    unparsed: frozenset[tuple[str, str, str]] = frozenset(),
) -> None:
    text = finding["remediation_yaml"]
    label = f"{case.name}: {finding['target']} {finding['check']}"
    if not text:
        assert case.name in STATUS_ONLY, f"{label}: no YAML ({finding['remediation_note']!r})"
        assert finding["remediation_note"].startswith("No YAML fix: "), label
        assert "status" in finding["remediation_note"] or "Istio skips it" in finding["remediation_note"], label
        return
    assert finding["remediation_note"], label
    assert not PLACEHOLDER.search(text), f"{label}: placeholder in\n{text}"
    values = _header_values(case, documents)
    substituted = text
    for name, value in values.items():
        substituted = substituted.replace(f"${{{name}}}", value)
    steps = _steps(substituted)
    held = {_key(d): d for d in documents}
    for how, document in steps:
        key = _key(document)
        assert key[2], label
        if key in unparsed:
            continue
        if how == "apply":
            assert held.get(key) != document, f"{label}: {key} is YAML the input already holds"
        else:
            assert key in held, f"{label}: patches {key}, which the input does not hold"
            before = held[key]
            assert _merge(before, document, strategic=how == "strategic") != before, f"{label}: {key} unchanged"
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(
        yaml.safe_dump_all(_applied(documents, text, values), sort_keys=False),
        encoding="utf-8",
    )
    after = _audit(fixed, case.rules)
    still = [
        f["message"] for f in _failures(after) if (f["target"], f["check"]) == (finding["target"], finding["check"])
    ]
    assert not still, f"{label}: still fails after the fix:\n{text}\n{still}"


def test_the_five_planted_drifts_get_their_own_filled_in_fix(tmp_path: Path) -> None:
    """examples/retail-store-drifted: each drift's fix names its real object and changes it."""
    case = Case(
        name="retail-store-drifted",
        directory=DRIFTED.directory,
        description="the five planted drifts",
        base=ROOT / "examples" / "retail-store-drifted",
        remove=(),
        rules=ROOT / "rules" / "retail-store.yaml",
        env={},
    )
    documents = [d for p in sorted(case.base.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    report = _audit(case.base, case.rules)
    fixes = {(f["target"], f["check"]): f["remediation_yaml"] for f in _failures(report)}
    assert len(fixes) == 5
    orders = yaml.safe_load(fixes[("default/orders", "strict-mtls.peer-authentication")].split("\n", 1)[1])
    assert orders["metadata"] == {"name": "orders-debug", "namespace": "default"}
    assert orders["spec"]["mtls"] == {"mode": "STRICT"}
    carts = yaml.safe_load(fixes[("default/cart-carts", "strict-mtls.peer-authentication")].split("\n", 1)[1])
    assert carts["metadata"]["name"] == "carts-migration"
    assert carts["spec"]["portLevelMtls"] == {8080: {"mode": "STRICT"}}
    checkout = fixes[("default/checkout", "strict-mtls.captured")]
    assert checkout.startswith("# kubectl patch deployment checkout -n default --type strategic")
    assert yaml.safe_load(checkout)["spec"]["template"]["metadata"]["labels"] == {"istio.io/dataplane-mode": "ambient"}
    catalog = yaml.safe_load(fixes[("default/catalog", "principal-allowlist.intruders-refused")])
    assert catalog["metadata"]["name"] == "catalog"
    assert catalog["spec"]["rules"][0]["from"] == [{"source": {"principals": ["cluster.local/ns/default/sa/ui"]}}]
    headers = yaml.safe_load(fixes[("default/catalog", "required-headers.enforced")])
    assert headers["spec"]["rules"][0]["when"] == [
        {"key": "request.headers[x-auth-token]", "values": ["${X_AUTH_TOKEN}"]}
    ]
    assert "internal-retail-token" not in json.dumps(report)  # header values are never printed
    for finding in _failures(report):
        _assert_fix_is_this_findings(case, documents, finding, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_fail_of_every_fixture_has_a_fix_that_resolves_it(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    report = _audit(materialize(case, tmp_path), case.rules)
    documents = merged_documents(case)
    raw = case.directory / "raw.yaml"
    unparsed: frozenset[tuple[str, str, str]] = frozenset()
    if raw.is_file():
        # Appended byte for byte; PyYAML reads its merge keys otherwise than the audit's reader
        # (that is the case's point), so only applying the fix, not comparing with it, uses them.
        extra = [d for d in yaml.safe_load_all(raw.read_text(encoding="utf-8")) if d]
        documents += extra
        unparsed = frozenset(_key(d) for d in extra)
    for finding in _failures(report):
        _assert_fix_is_this_findings(case, documents, finding, tmp_path, unparsed)
    for finding in report["findings"]:
        if finding["status"] in {"error", "inconclusive"}:
            assert finding["remediation_note"].startswith("No YAML fix: "), finding
            assert not finding["remediation_yaml"]


def test_every_output_shows_the_findings_own_fix() -> None:
    """The table (at -v), JSON, Markdown, HTML, JUnit and Slack all carry orders-debug's STRICT fix."""
    document = _audit(ROOT / "examples" / "retail-store-drifted", ROOT / "rules" / "retail-store.yaml")
    findings = findings_from_document(document)
    orders = next(
        f for f in findings if (f.target, f.check.id) == ("default/orders", "strict-mtls.peer-authentication")
    )
    wanted = (
        "  name: orders-debug\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n"
        "      app.kubernetes.io/name: orders\n  mtls:\n    mode: STRICT"
    )
    assert wanted in orders.fix.yaml
    table = render_table(AuditReport((orders,)), verbose=True)
    assert "name: orders-debug" in table
    assert "this finding: Apply (kubectl apply -f): default/orders-debug with mode STRICT" in " ".join(table.split())
    assert "(the YAML fix, 12 lines: -v)" in render_table(AuditReport((orders,)))
    assert wanted in render_markdown(AuditReport((orders,)))
    assert wanted in render_html(AuditReport((orders,)))
    assert wanted in render_junit(AuditReport((orders,)))
    transition = DriftBook().evaluate([orders], now=0.0, policy=DriftPolicy())[1][0]
    assert wanted in json.dumps(alert_message(transition)).replace("\\n", "\n")
