"""The CLI contract: exit codes, output formats and error messages for bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.cli import main, schema_text
from auditor.core.checks.catalog import ALL, AUTO_MODE, SNAPSHOT_READ, WAYPOINT_BYPASS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "retail-store")
DRIFTED = str(ROOT / "examples" / "retail-store-drifted")
RULES = str(ROOT / "rules" / "retail-store.yaml")


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def audit_json(*argv: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
    code, text = run("check", *argv, "--output", "json", stdin=stdin)
    return code, json.loads(text)


def test_compliant_example_passes_all_four_properties_for_catalog() -> None:
    """The walkthrough's final state: exit 0, four properties pass for catalog, strict-mtls for the rest."""
    code, document = audit_json("--manifests", EXAMPLE, "--rules", RULES)
    by_target = document["summary"]["by_target"]
    assert code == 0
    assert by_target["default/catalog"] == {
        "principal-allowlist": "pass",
        "required-headers": "pass",
        "strict-mtls": "pass",
        "waypoint-enrollment": "pass",
    }
    for name in ("ui", "cart-carts", "checkout", "orders"):
        assert by_target[f"default/{name}"] == {"strict-mtls": "pass"}


def test_drifted_example_names_each_drift_on_its_property() -> None:
    """Each planted drift (examples/retail-store-drifted/README.md) fails exactly its check."""
    code, document = audit_json("--manifests", DRIFTED, "--rules", RULES)
    failing = {(f["target"], f["property"], f["check"]) for f in document["findings"] if f["status"] == "fail"}
    assert code == 1
    assert failing == {
        ("default/orders", "strict-mtls", "strict-mtls.peer-authentication"),
        ("default/checkout", "strict-mtls", "strict-mtls.captured"),
        ("default/cart-carts", "strict-mtls", "strict-mtls.peer-authentication"),
        ("default/catalog", "principal-allowlist", "principal-allowlist.intruders-refused"),
        ("default/catalog", "required-headers", "required-headers.enforced"),
    }


def test_json_findings_carry_the_contract_fields() -> None:
    """Every finding has property, status, target, check, method, message, remediation, evidence."""
    _, document = audit_json("--manifests", DRIFTED, "--rules", RULES)
    for finding in document["findings"]:
        assert {
            "property",
            "status",
            "target",
            "check",
            "method",
            "message",
            "remediation",
            "evidence",
        } <= finding.keys()
        assert finding["method"] == "static"
        assert finding["evidence"], finding["check"]


def test_manifests_from_stdin_audit_like_files() -> None:
    """`--manifests -` reads a multi-document stream from stdin."""
    text = "\n---\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(EXAMPLE).glob("*.yaml")))
    code, document = audit_json("--manifests", "-", "--rules", RULES, stdin=text)
    assert code == 0
    assert document["summary"]["targets"] == 5


def test_list_kind_is_flattened(tmp_path: Path) -> None:
    """A kind: List document contributes its items (what `kubectl get -o yaml` prints)."""
    items = [d for p in sorted(Path(EXAMPLE).glob("*.yaml")) for d in yaml.safe_load_all(p.read_text(encoding="utf-8"))]
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}), encoding="utf-8")
    code, _ = audit_json("--manifests", str(listing), "--rules", RULES)
    assert code == 0


def test_nothing_in_scope_is_never_exit_zero(tmp_path: Path) -> None:
    """Manifests without the rules' Services give ERROR findings and exit 3, not a vacuous pass."""
    empty = tmp_path / "ns.yaml"
    empty.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n", encoding="utf-8")
    code, document = audit_json("--manifests", str(empty), "--rules", RULES)
    statuses = {(f["target"], f["check"]): f["status"] for f in document["findings"]}
    assert code == 3
    assert statuses[("default/*", "audit.target-exists")] == "error"
    assert statuses[("default/catalog", "audit.target-exists")] == "error"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("kind: Service\nmetadata: {name: x}\n", "(document 1): apiVersion: is missing"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: 80\n",
            "spec.ports: expected a list",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\n- a\n- b\n",
            "(document 2): a document must be a Kubernetes object",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: [x}\n", "invalid YAML at line 3"),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: STRICTLY}\n",
            "spec.mtls.mode: unknown mode 'STRICTLY'",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n",
            "defined twice",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  mtls: {mode: strict}\n",
            "(document 1): spec.mtls.mode: unknown mode 'strict' (the API server refuses it)",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: x, labels: {port: 0x10}}\n",
            "(document 1): metadata.labels.port: label and annotation values must be strings, got int",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
            "spec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/a/sa/b, 0x10]}\n",
            "(document 1): spec.rules[0].from[0].source.principals[1]: expected a string, got int",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: allow}\n",
            "spec.action: unknown action 'allow' (the API server refuses it)",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: .inf}\n", "metadata.name: .inf and .nan have no JSON form"),
    ],
)
def test_malformed_manifest_exits_2_naming_file_document_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    """Bad manifests are refused with the file, the document index, the field and a fix."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(content, encoding="utf-8")
    code, out = run("check", "--manifests", str(bad), "--rules", RULES)
    err = capsys.readouterr().err
    assert code == 2
    assert out == ""
    assert str(bad) in err
    assert expected in err
    assert "fix:" in err


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        (
            "apiVersion: v1\nkind: MeshPosture\nmetadata: {name: a}\nspec: {}\n",
            "apiVersion",
            "Input should be 'mesh-auditor.dev/v1alpha1'",
        ),
        (
            "apiVersion: mesh-auditor.dev/v1alpha1\nkind: MeshPosture\nmetadata: {name: a}\nspec:\n  protectedServices:\n  - name: catalog\n    allowedPrincipals: [ui]\n",
            "spec.protectedServices[0].allowedPrincipals",
            "'ui' is not <trust-domain>/ns/<namespace>/sa/<service-account>",
        ),
        (
            "apiVersion: mesh-auditor.dev/v1alpha1\nkind: MeshPosture\nmetadata: {name: a}\nspec:\n  scope:\n  - namespace: default\n    excludeService: [x]\n",
            "spec.scope[0].excludeService",
            "unknown field 'excludeService'; did you mean 'excludeServices'?",
        ),
        (
            "apiVersion: mesh-auditor.dev/v1alpha1\nkind: MeshPosture\nmetadata: {name: a}\nspec:\n  protectedServices:\n  - name: catalog\n    allowedPrincipals: [cluster.local/ns/default/sa/ui]\n    requiredHeaders:\n    - name: x-auth-token\n      value: {literal: t}\n",
            "spec.protectedServices[0]",
            "requiredHeaders need a waypoint",
        ),
        (
            "apiVersion: mesh-auditor.dev/v1alpha1\nkind: MeshPosture\nmetadata: {name: a}\nspec:\n  protectedServices:\n  - name: catalog\n    allowedPrincipals: [cluster.local/ns/default/sa/ui]\n    waypoint: {name: w}\n    requiredHeaders:\n    - name: x-auth-token\n      value: {literal: t, fromEnv: T}\n",
            "spec.protectedServices[0].requiredHeaders[0].value",
            "give exactly one of literal, fromEnv, secretRef",
        ),
    ],
)
def test_invalid_rules_exit_2_naming_field_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, field: str, problem: str
) -> None:
    """Rules that do not validate are refused with the file, the YAML field path and the problem."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(content, encoding="utf-8")
    code, _ = run("check", "--manifests", EXAMPLE, "--rules", str(rules))
    err = capsys.readouterr().err
    assert code == 2
    assert f"{rules} (document 1): {field}: " in err
    assert problem in err
    assert "fix:" in err


def test_two_rules_files_protecting_the_same_service_conflict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same protected Service in two files is an input error, not a silent override."""
    code, _ = run("check", "--manifests", EXAMPLE, "--rules", RULES, "--rules", RULES)
    assert code == 2
    assert "protected service default/catalog is also in" in capsys.readouterr().err


def test_missing_manifest_path_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("check", "--manifests", "/nonexistent/x", "--rules", RULES)
    assert code == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_invalid_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDITOR_LOGGING__LEVEL", "loud")
    code, _ = run("check", "--manifests", EXAMPLE, "--rules", RULES)
    assert code == 2
    assert "AUDITOR_LOGGING__LEVEL" in capsys.readouterr().err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Neither manifests nor a cluster, or an unknown flag: usage errors, exit 2."""
    assert main(["check", "--rules", RULES]) == 2
    assert "give either --manifests or a cluster" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--rules", RULES, "--bogus"])
    assert exit_info.value.code == 2


def test_table_fits_80_columns_and_groups_by_target() -> None:
    """Every table line fits an 80-column terminal; targets are headings in order."""
    code, text = run("check", "--manifests", DRIFTED, "--rules", RULES)
    lines = text.splitlines()
    assert code == 1
    assert max(len(line) for line in lines) <= 80
    headings = [line for line in lines if line.startswith("default/")]
    assert headings == [
        "default/cart-carts",
        "default/catalog",
        "default/checkout",
        "default/orders",
        "default/ui",
    ]


def test_markdown_lists_remediation_yaml_for_failures() -> None:
    code, text = run("check", "--manifests", DRIFTED, "--rules", RULES, "--output", "markdown")
    assert code == 1
    assert "## Remediation" in text
    assert "kind: PeerAuthentication" in text


def test_published_schema_matches_the_models() -> None:
    """rules/schema.json is what `auditor rules schema` generates (regenerate it when models change)."""
    assert (ROOT / "rules" / "schema.json").read_text(encoding="utf-8") == schema_text()


def test_rules_validate_reports_ok() -> None:
    code, out = run("rules", "validate", RULES)
    assert code == 0
    assert out.startswith("ok: 1 file(s)")


def test_console_script_runs_as_a_process() -> None:
    """The installed entry point works end to end (exit code through the process boundary)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "auditor",
            "check",
            "--manifests",
            DRIFTED,
            "--rules",
            RULES,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["summary"]["exit_code"] == 1


def test_checks_reference_is_generated_from_the_catalog() -> None:
    """docs/checks.md is `auditor checks --markdown` (regenerate it when the catalog changes)."""
    _, text = run("checks", "--markdown")
    assert (ROOT / "docs" / "checks.md").read_text(encoding="utf-8") == text


def test_every_check_has_complete_metadata() -> None:
    """Ids are unique and dotted by property; every check tells what it protects and how to fix it."""
    assert len({meta.id for meta in ALL}) == len(ALL)
    for meta in ALL:
        assert meta.id.split(".")[0] in {meta.property.value, "audit"}
        assert meta.title
        assert meta.protects
        assert meta.remediation
        assert meta.references
        # Static checks name the kinds they read; reporting read problems, or traffic, needs none.
        probe_only = meta.id.endswith(".probe") or meta is WAYPOINT_BYPASS  # traffic, not config
        assert meta.reads or meta in {SNAPSHOT_READ, AUTO_MODE} or probe_only, meta.id


def test_junit_output_and_report_round_trip(tmp_path: Path) -> None:
    """`--output junit` and `auditor report RUN.json --output junit` agree: the stored run is self-describing."""
    code, direct = run("check", "--manifests", DRIFTED, "--rules", RULES, "--output", "junit")
    _, stored = run("check", "--manifests", DRIFTED, "--rules", RULES, "--output", "json")
    run_file = tmp_path / "run.json"
    run_file.write_text(stored, encoding="utf-8")
    report_code, rendered = run("report", str(run_file), "--output", "junit")
    assert code == 1
    assert report_code == 0
    assert rendered == direct
    assert 'failures="5"' in direct


def test_report_renders_html_with_history(tmp_path: Path) -> None:
    _, stored = run("check", "--manifests", DRIFTED, "--rules", RULES, "--output", "json")
    history = tmp_path / "history"
    history.mkdir()
    for day in range(3):
        (history / f"2026-11-2{day}.json").write_text(stored, encoding="utf-8")
    (tmp_path / "run.json").write_text(stored, encoding="utf-8")
    code, html = run("report", str(tmp_path / "run.json"), "--history", str(history))
    assert code == 0
    assert html.count("aria-label='history of default/orders strict-mtls'") == 1


def test_report_of_a_foreign_document_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "run.json"
    bogus.write_text('{"schema_version": 99}', encoding="utf-8")
    assert run("report", str(bogus))[0] == 2
    assert "schema_version 99" in capsys.readouterr().err


def test_settings_reference_is_generated_from_the_models() -> None:
    """docs/settings.md is `auditor settings` (regenerate it when a setting changes)."""
    _, text = run("settings")
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == text
    assert "`AUDITOR_SLACK__BOT_TOKEN` | `(secret)`" in text
