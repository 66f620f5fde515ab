"""What a newcomer sees when something is wrong (issue #17, "A newcomer's day"): one clear
message naming what failed and what to check, and the documented exit code."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.core.checks.catalog import SNAPSHOT_READ
from auditor.core.model import Evidence, Finding, Status
from auditor.render.document import audit_document, findings_from_document
from auditor.render.text import render_markdown, render_table
from auditor.report import AuditReport

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "retail-store")
RULES = str(ROOT / "rules" / "retail-store.yaml")


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def closed_port() -> int:
    """A loopback port nobody listens on: bound, then released (nothing re-binds it this fast)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_unreachable_api_server_is_one_line_naming_server_and_cause_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kubeconfig whose server is a closed loopback port: no findings, no RBAC advice, exit 3."""
    server = f"https://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        f"clusters: [{{name: lab, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: me, user: {token: t}}]\n"
        "contexts: [{name: lab, context: {cluster: lab, user: me}}]\n",
        encoding="utf-8",
    )
    code, out = run("check", "--kubeconfig", str(kubeconfig), "--rules", RULES)
    err = capsys.readouterr().err
    assert code == 3
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert server in lines[0]
    assert str(kubeconfig) in lines[0]
    assert "connection refused" in lines[0]
    assert "VPN" in lines[0]
    assert "RBAC" not in err
    assert "permission" not in err


DRIFTED = str(ROOT / "examples" / "retail-store-drifted")


def test_table_wrapping_never_splits_an_identifier() -> None:
    """Drifted example at -v: identifiers with hyphens (label keys, namespaces, check ids) stay whole."""
    code, out = run("check", "--manifests", DRIFTED, "--rules", RULES, "-v")
    assert code == 1
    assert not [line for line in out.splitlines() if line.endswith("-")]
    words = out.split()
    assert "labels.istio.io/dataplane-mode=ambient" in words
    for word in words:
        if "istio.io/dataplane" in word:
            assert "istio.io/dataplane-mode" in word, word


TYPO_RULES = """\
apiVersion: mesh-auditor.dev/v1alpha1
kind: MeshPosture
metadata: {name: typo}
spec:
  scope:
    - namespace: default
      requireStrictMtl: true
  protectedServices:
    - name: catalog
      allowedPrincipal: [cluster.local/ns/default/sa/ui]
      probe: {port: 0}
"""


def test_rules_typo_names_the_unknown_field_first_with_the_close_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`allowedPrincipal:` is reported as itself with "did you mean", not as "allowedPrincipals: Field required"."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(TYPO_RULES, encoding="utf-8")
    code, out = run("check", "--manifests", EXAMPLE, "--rules", str(rules))
    err = capsys.readouterr().err
    assert (code, out) == (2, "")
    first = err.splitlines()[0]
    assert (
        "spec.scope[0].requireStrictMtl: unknown field 'requireStrictMtl'; did you mean 'requireStrictMtls'?" in first
    )
    assert "fix: rename it to requireStrictMtls" in err
    assert f"(and 2 more problem(s); auditor rules validate {rules} lists them all)" in err
    assert "Field required" not in err


def test_rules_validate_lists_every_problem_of_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(TYPO_RULES, encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text(TYPO_RULES.replace("allowedPrincipal:", "allowedPrincipals:"), encoding="utf-8")
    code, out = run("rules", "validate", str(rules), str(other))
    err = capsys.readouterr().err
    assert (code, out) == (2, "")
    assert f"{rules} (document 1): spec.protectedServices[0].allowedPrincipal: unknown field" in err
    assert "did you mean 'allowedPrincipals'?" in err
    assert (
        f"{rules} (document 1): spec.protectedServices[0].probe.port: Input should be greater than or equal to 1" in err
    )
    assert f"{other} (document 1): spec.scope[0].requireStrictMtl: unknown field" in err
    assert f"{other} (document 1): spec.protectedServices[0].probe.port" in err
    assert "auditor: 5 problem(s) in 2 file(s)" in err
    assert "Field required" not in err


def test_an_unknown_field_with_no_close_match_says_remove_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(TYPO_RULES.replace("requireStrictMtl:", "colour:"), encoding="utf-8")
    code, _ = run("rules", "validate", str(rules))
    err = capsys.readouterr().err
    assert code == 2
    assert "spec.scope[0].colour: unknown field 'colour' (the document starts at line 1)\n" in err
    assert "fix: remove it (the known fields are in rules/schema.json)" in err


def test_unset_from_env_header_value_names_the_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    text = (ROOT / "rules" / "retail-store.yaml").read_text(encoding="utf-8")
    rules.write_text(text.replace("literal: internal-retail-token", "fromEnv: NEWCOMER_UNSET_TOKEN"), encoding="utf-8")
    code, _ = run("check", "--manifests", EXAMPLE, "--rules", str(rules))
    err = capsys.readouterr().err
    assert code == 3
    assert (
        "auditor: warning: default/catalog header x-auth-token: environment variable NEWCOMER_UNSET_TOKEN "
        "(value.fromEnv) is unset or empty" in err
    )


@pytest.mark.parametrize("kind", ["empty file", "comments only", "empty directory", "empty stdin"])
def test_nothing_to_audit_exits_2_naming_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """An empty file, directory or stdin is one behaviour: exit 2 naming it (docs/cli.md)."""
    stdin = ""
    if kind == "empty stdin":
        path, shown = "-", "<stdin>"
    elif kind == "empty directory":
        path = shown = str(tmp_path / "manifests")
        (tmp_path / "manifests").mkdir()
        (tmp_path / "manifests" / "empty.yaml").write_text("", encoding="utf-8")
    else:
        path = shown = str(tmp_path / "m.yaml")
        Path(path).write_text("" if kind == "empty file" else "# nothing yet\n---\n", encoding="utf-8")
    code, out = run("check", "--manifests", path, "--rules", RULES, stdin=stdin)
    err = capsys.readouterr().err
    assert (code, out) == (2, "")
    assert f"auditor: error: {shown}: holds no Kubernetes object" in err


def test_manifest_error_names_the_line_its_document_starts_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n# the second\nkind: Service\nmetadata: {name: b}\n",
        encoding="utf-8",
    )
    code, _ = run("check", "--manifests", str(manifest), "--rules", RULES)
    err = capsys.readouterr().err
    assert code == 2
    assert f"{manifest} (document 2): apiVersion: is missing (the document starts at line 4)" in err


def test_verbose_evidence_separates_object_field_and_note() -> None:
    """-v: "- <object>: <field>=<value>", the note on its own indented line."""
    finding = Finding(
        SNAPSHOT_READ,
        "default/carts",
        Status.FAIL,
        "accepts plaintext",
        (Evidence("PeerAuthentication a/m", "spec.mtls.mode", "PERMISSIVE", "keys are ports"),),
    )
    lines = render_table(AuditReport((finding,)), verbose=True).splitlines()
    at = lines.index(" " * 29 + "- PeerAuthentication a/m: spec.mtls.mode=PERMISSIVE")
    assert lines[at + 1] == " " * 31 + "keys are ports"


def test_report_history_that_does_not_exist_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_file = tmp_path / "run.json"
    code, out = run("check", "--manifests", EXAMPLE, "--rules", RULES, "--output", "json")
    run_file.write_text(out, encoding="utf-8")
    missing = tmp_path / "no-such-history"
    code, out = run("report", str(run_file), "--history", str(missing))
    err = capsys.readouterr().err
    assert (code, out) == (2, "")
    assert f"auditor: error: {missing}: --history: no such directory" in err


def test_finding_details_are_written_to_json_and_read_back() -> None:
    finding = Finding(SNAPSHOT_READ, "cluster/Pod", Status.ERROR, "x", details={"run_id": "abc123"})
    document = audit_document(AuditReport((finding,), {}))
    assert document["findings"][0]["details"] == {"run_id": "abc123"}
    assert findings_from_document(json.loads(json.dumps(document)))[0].details == {"run_id": "abc123"}
    del document["findings"][0]["details"]  # a document written before the field was added
    assert findings_from_document(document)[0].details == {}


def test_markdown_escapes_angle_brackets_and_writes_no_empty_code_span() -> None:
    """GitHub drops a raw `<set>` as an unknown HTML tag; an evidence item without a field gets no `` span."""
    finding = Finding(
        SNAPSHOT_READ,
        "default/catalog",
        Status.FAIL,
        "GET /catalog with x-auth-token: <set>",
        (Evidence("(mesh default)", "", "PERMISSIVE", "no policy"), Evidence("Service a/b", "spec.x", "1", "")),
    )
    text = render_markdown(AuditReport((finding,)))
    assert "x-auth-token: \\<set\\>" in text  # a backslash-escaped < renders as itself on GitHub
    assert "<set>" not in text
    assert "``" not in text.replace("```", "")
    assert "- evidence: (mesh default): `PERMISSIVE` — no policy\n" in text
    assert "- evidence: Service a/b: `spec.x` = `1`\n" in text


def _json(*argv: str) -> tuple[int, dict[str, object]]:
    code, out = run("check", *argv, "--output", "json")
    return code, json.loads(out)


@pytest.mark.parametrize("extra_scope", ["", "    - namespace: default\n      services: [orders]\n"])
def test_require_strict_mtls_false_skips_the_strict_promise_with_the_reason(tmp_path: Path, extra_scope: str) -> None:
    """Drifted example (orders and cart-carts PERMISSIVE) under requireStrictMtls: false.

    Their PeerAuthentication check is SKIPPED naming the rule, capture is still checked, and the
    protected catalog keeps its STRICT promise. A second scope entry that requires STRICT for
    orders wins over the waiver.
    """
    text = (ROOT / "rules" / "retail-store.yaml").read_text(encoding="utf-8")
    waived = text.replace("      requireStrictMtls: true\n", "      requireStrictMtls: false\n" + extra_scope)
    assert waived != text
    rules = tmp_path / "rules.yaml"
    rules.write_text(waived, encoding="utf-8")
    _, document = _json("--manifests", DRIFTED, "--rules", str(rules))
    findings = document["findings"]
    assert isinstance(findings, list)
    status = {(f["target"], f["check"]): f for f in findings}
    carts = status[("default/cart-carts", "strict-mtls.peer-authentication")]
    assert carts["status"] == "skipped"
    assert "requireStrictMtls is false" in carts["message"]
    assert carts["evidence"][0]["field"] == "requireStrictMtls"
    orders = status[("default/orders", "strict-mtls.peer-authentication")]["status"]
    assert orders == ("fail" if extra_scope else "skipped")
    assert status[("default/checkout", "strict-mtls.captured")]["status"] == "fail"
    assert status[("default/catalog", "strict-mtls.peer-authentication")]["status"] == "pass"
