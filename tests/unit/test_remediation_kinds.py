"""Every check id gets this finding's fix (or says plainly why there is none), escaped everywhere;
and every PASS says what was proven and its limits.

One representative non-pass finding per check id of the catalog: a static fixture case, a
snapshot with a read problem, an EKS Auto Mode verdict, probe verdicts from the probing builders.
A new check id without a representative fails ``test_every_check_id_has_a_representative``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from auditor.adapters.aws.securityhub import HubOptions, asff
from auditor.cli import main
from auditor.core.alerting.drift import DriftBook, DriftPolicy
from auditor.core.audit import run_static_audit
from auditor.core.checks.automode import NodePoolRef, NodePools, auto_mode_verdict
from auditor.core.checks.catalog import ALL, CAPTURED, INTRUDERS_REFUSED
from auditor.core.model import Finding, Fix, FixDocument, Status
from auditor.core.posture import PostureDocument, merge
from auditor.core.snapshot import Namespace, ObjectMeta, ReadProblem, Service, ServicePort, Snapshot, Workload
from auditor.render.document import finding_dict, findings_from_document
from auditor.render.fixes import fix_yaml
from auditor.render.html import render_html
from auditor.render.junit import render_junit
from auditor.render.slack import alert_message
from auditor.render.text import render_markdown, render_table
from auditor.report import AuditReport
from tests.cases import load_case, materialize
from tests.unit.probing.builders import ALLOWED, L4, catalog_rules, posture, static_finding
from tests.unit.probing.test_endpoints import _findings as _endpoint_findings
from tests.unit.probing.test_endpoints import _plan as _endpoint_plan
from tests.unit.probing.test_verdict import CONTROL, INTRUDER, OUTSIDE, _verdicts
from tests.unit.test_istio_version import _istiod
from tests.unit.test_node_ztunnel import DAEMONSET, _node_finding
from tests.unit.test_node_ztunnel import _pod as _pod_on


def _ztunnel_pod(name: str, node: str) -> dict[str, object]:
    return _pod_on(name, "istio-system", {"app": "ztunnel"}, node)


def _cart_pod(name: str, node: str) -> dict[str, object]:
    return _pod_on(name, "shop", {"app": "cart"}, node)


ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 _-]*>")


def _fixture(name: str, check: str) -> Finding:
    case = load_case(ROOT / "tests" / "fixtures" / "static" / name)
    out = io.StringIO()
    path = materialize(case, Path(tempfile.mkdtemp()))
    main(["check", "--manifests", str(path), "--rules", str(case.rules), "--output", "json"], stdout=out)
    document = json.loads(out.getvalue())
    found = findings_from_document(document)
    return next(f for f in found if f.check.id == check and f.status is not Status.PASS)


def _snapshot_read() -> Finding:
    problem = ReadProblem("AuthorizationPolicy", "authorizationpolicies.security.istio.io", "forbidden", "list")
    findings = run_static_audit(Snapshot(problems=(problem,)), posture(catalog_rules()), {})
    return next(f for f in findings if f.check.id == "audit.snapshot-read")


def _auto_mode_off() -> Finding:
    return auto_mode_verdict("prod", {"enabled": False}, None)


def _auto_mode_wrong_class() -> Finding:
    pools = NodePools(
        pools=(NodePoolRef("general", "karpenter.k8s.aws", "EC2NodeClass", "default"),),
        node_classes=frozenset({"auto-default"}),
    )
    return auto_mode_verdict("prod", {"enabled": True, "nodePools": []}, pools)


def _probe(check: str, changes: dict[str, object], static: tuple[Finding, ...]) -> Finding:
    return _verdicts(changes, static=static)[check]  # type: ignore[arg-type]  # Observation values


def _with_fix(finding: Finding) -> Finding:
    document = FixDocument(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "orders-debug", "namespace": "default"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }
    )
    return dataclasses.replace(finding, fix=Fix((document,), "Apply default/orders-debug with mode STRICT."))


# check id -> (the representative finding, "yaml" when a filled-in fix exists, else "none")
def _node_without_ztunnel() -> Finding:
    found = _node_finding(DAEMONSET, _ztunnel_pod("ztunnel-a", "node-a"), _cart_pod("cart-b", "node-b"))
    assert found is not None
    return found


def _pod_ip_bypass() -> Finding:
    plan = _endpoint_plan()
    return _endpoint_findings(plan, {"default/catalog:intruder:endpoint-intruder:default/catalog-a": ALLOWED})[
        "waypoint-enrollment.pod-ip-bypass"
    ]


def _istiod_1_28() -> Finding:
    snapshot = Snapshot(workloads=(_istiod({"app.kubernetes.io/version": "1.28.2"}),))
    (found,) = run_static_audit(snapshot, posture(catalog_rules()).model_copy(update={"protected": ()}), {})
    return found


REPRESENTATIVES: dict[str, tuple[Callable[[], Finding], str]] = {
    "strict-mtls.captured": (lambda: _fixture("capture-sidecar", "strict-mtls.captured"), "yaml"),
    "strict-mtls.peer-authentication": (
        lambda: _fixture("mtls-workload-disable", "strict-mtls.peer-authentication"),
        "yaml",
    ),
    "principal-allowlist.intruders-refused": (
        lambda: _fixture("authz-wildcard-principal", "principal-allowlist.intruders-refused"),
        "yaml",
    ),
    "principal-allowlist.allowed-admitted": (
        lambda: _fixture("authz-waypoint-identity-pitfall", "principal-allowlist.allowed-admitted"),
        "yaml",
    ),
    "waypoint-enrollment.bound": (lambda: _fixture("waypoint-label-typo", "waypoint-enrollment.bound"), "yaml"),
    "waypoint-enrollment.gateway": (
        lambda: _fixture("waypoint-wrong-listener", "waypoint-enrollment.gateway"),
        "yaml",
    ),
    "required-headers.enforced": (lambda: _fixture("headers-not-values", "required-headers.enforced"), "yaml"),
    "audit.target-exists": (lambda: _fixture("protected-missing", "audit.target-exists"), "none"),
    "audit.config-revision": (lambda: _fixture("revision-authz-canary", "audit.config-revision"), "yaml"),
    "audit.snapshot-read": (_snapshot_read, "none"),
    "audit.eks-auto-mode": (_auto_mode_wrong_class, "yaml"),
    "strict-mtls.probe": (
        lambda: _probe("strict-mtls.probe", {OUTSIDE: ALLOWED}, (_with_fix(static_finding(CAPTURED, Status.FAIL)),)),
        "yaml",
    ),
    "principal-allowlist.probe": (
        lambda: _probe(
            "principal-allowlist.probe", {INTRUDER: ALLOWED}, (static_finding(INTRUDERS_REFUSED, Status.PASS),)
        ),
        "none",
    ),
    "required-headers.probe": (
        lambda: (
            _probe("required-headers.probe", {}, ()) if False else _verdicts(control=False)["required-headers.probe"]
        ),
        "none",
    ),
    "waypoint-enrollment.probe": (lambda: _probe("waypoint-enrollment.probe", {CONTROL: L4}, ()), "none"),
    "strict-mtls.node-ztunnel": (_node_without_ztunnel, "yaml"),
    "waypoint-enrollment.pod-ip-bypass": (_pod_ip_bypass, "yaml"),
    "audit.istio-semantics": (_istiod_1_28, "none"),
}


def test_every_check_id_has_a_representative() -> None:
    assert set(REPRESENTATIVES) == {meta.id for meta in ALL}


@pytest.mark.parametrize("check", sorted(REPRESENTATIVES))
def test_each_check_gives_its_own_fix_or_says_why_not(check: str) -> None:
    build, expected = REPRESENTATIVES[check]
    finding = build()
    assert finding.check.id == check
    assert finding.status is not Status.PASS
    text = fix_yaml(finding.fix)
    if expected == "none":
        assert not text, text
        assert finding.fix.note.startswith("No YAML fix: "), finding.fix.note
        return
    assert finding.fix.note
    assert not finding.fix.note.startswith("No YAML fix")
    assert not PLACEHOLDER.search(text), text
    documents = [d for d in yaml.safe_load_all(text) if d]
    assert documents
    for document in documents:
        assert document["metadata"]["name"], document
        assert "<" not in json.dumps(document), document


def test_snapshot_read_and_auto_mode_name_what_to_change_instead() -> None:
    assert "ClusterRole" in _snapshot_read().fix.note
    off = _auto_mode_off()
    assert off.fix.note.startswith("No YAML fix: Auto Mode is a setting of the EKS cluster prod")
    patched = yaml.safe_load(fix_yaml(_auto_mode_wrong_class().fix))
    assert patched["metadata"] == {"name": "general"}
    assert patched["spec"]["template"]["spec"]["nodeClassRef"]["name"] == "auto-default"


def test_a_probe_fail_carries_the_static_findings_fix_and_an_inconclusive_one_says_why() -> None:
    confirmed = REPRESENTATIVES["strict-mtls.probe"][0]()
    assert "orders-debug" in fix_yaml(confirmed.fix)
    assert confirmed.fix.note.startswith("The config's drift (strict-mtls.captured) is the cause")
    disagree = REPRESENTATIVES["principal-allowlist.probe"][0]()
    assert disagree.status is Status.FAIL
    assert "the config passes the static checks" in disagree.fix.note
    unproven = _verdicts(control=False)["strict-mtls.probe"]
    assert unproven.status is Status.INCONCLUSIVE
    assert unproven.fix.note.startswith("No YAML fix: nothing was proven wrong")


# --- hostile names in a fix are escaped everywhere it is rendered -----------------------------------

HOSTILE = "evil\x1b[2J\n# forged: line\u202e<!channel></pre><script>x</script>```"


def _hostile_finding() -> Finding:
    document = FixDocument(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": HOSTILE, "namespace": "default"},
            "spec": {"template": {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient", "app": HOSTILE}}}},
        },
        patch=True,
    )
    return Finding(CAPTURED, f"default/{HOSTILE}", Status.FAIL, "m", fix=Fix((document,), f"Patch {HOSTILE}."))


def test_hostile_names_in_a_fix_stay_values_and_are_escaped_in_every_output() -> None:
    finding = _hostile_finding()
    text = fix_yaml(finding.fix)
    head, _, body = text.partition("\n")
    assert head.startswith("# kubectl patch deployment evil\\x1b[2J\\n# forged")  # one comment line
    assert yaml.safe_load(body)["metadata"]["name"] == HOSTILE  # a value, never YAML structure
    assert "\x1b" not in text
    assert "\u202e" not in text
    table = render_table(AuditReport((finding,)), verbose=True)
    assert "\x1b" not in table
    assert "\u202e" not in table
    markdown = render_markdown(AuditReport((finding,)))
    assert "\x1b" not in markdown
    assert "\n# forged" not in markdown.split("```", 1)[0]
    note = next(line for line in markdown.splitlines() if line.startswith("This finding: "))
    assert "<script>" not in note
    assert "\\<script\\>" in note
    assert "\x1b" not in note
    fence = re.search(r"^(`{3,})yaml$", markdown, re.M)
    assert fence is not None
    assert len(fence.group(1)) > 3
    page = render_html(AuditReport((finding,)))
    assert "<script>" not in page
    assert "\x1b" not in page
    transition = DriftBook().evaluate([finding], now=0.0, policy=DriftPolicy())[1][0]
    slack = json.dumps(alert_message(transition))
    assert "<!channel>" not in slack
    assert "&lt;!channel&gt;" in slack
    junit = ET.fromstring(render_junit(AuditReport((finding,))))  # noqa: S314 - parsing our own output
    failure = junit.find("testsuite/testcase/failure")
    assert failure is not None
    assert "This finding: Patch evil\\x1b[2J\\n# forged" in (failure.text or "")
    assert finding_dict(finding)["remediation_note"] == f"Patch {HOSTILE}."  # JSON escapes it itself


# --- PASS texts say what was proven and its limits ----------------------------------------------------


def _compliant() -> dict[str, str]:
    out = io.StringIO()
    main(
        [
            "check",
            "--manifests",
            str(ROOT / "examples" / "retail-store"),
            "--rules",
            str(ROOT / "rules" / "retail-store.yaml"),
            "--output",
            "json",
        ],
        stdout=out,
    )
    return {
        f["check"]: f["message"]
        for f in json.loads(out.getvalue())["findings"]
        if f["target"] == "default/catalog" and f["status"] == "pass"
    }


def test_static_pass_texts_say_what_was_proven_and_its_limits() -> None:
    passes = _compliant()
    intruders = passes["principal-allowlist.intruders-refused"]
    assert "every caller outside the allow-list is refused" not in intruders
    assert "callers outside the allow-list the auditor builds" in intruders
    assert "Service-addressed" in intruders
    assert "pod IP skips the waypoint and no policy refuses it" in intruders  # its own evidence, now its text
    allowed = passes["principal-allowlist.allowed-admitted"]
    assert "on the probe request GET /catalog/tags port 80" in allowed
    assert "other paths and methods are not tried" in allowed
    assert "read from config" in passes["strict-mtls.captured"]
    assert "it refuses plaintext where ztunnel captures the pods" in passes["strict-mtls.peer-authentication"]
    assert "WaypointBound status is not in the input" in passes["waypoint-enrollment.bound"]
    assert "readiness not shown: no status in the input" in passes["waypoint-enrollment.gateway"]
    headers = passes["required-headers.enforced"]
    assert "pod IP skips the waypoint, so no header is checked on it" in headers


def test_probe_pass_texts_name_the_one_request_that_proved_them() -> None:
    passes = {check: f.message for check, f in _verdicts().items()}
    assert passes["strict-mtls.probe"].startswith("one plaintext request (GET http://catalog.default.svc")
    assert "from the probe's intruder identity, on no allow-list, was refused" in passes["principal-allowlist.probe"]
    assert passes["required-headers.probe"].startswith("the allowed identity's 2 request(s) without a required header")
    assert passes["waypoint-enrollment.probe"].startswith("the allowed identity's request (GET http://")
    assert all(
        "the positive control succeeded in the same run" in m
        for k, m in passes.items()
        if k != "waypoint-enrollment.probe"
    )


def test_a_live_pods_fix_patches_the_controller_it_was_made_from() -> None:
    """On a live cluster the audited workloads are Pods; the fix goes to their Deployment's template
    (a Pod's spec is immutable and its controller would recreate it as before)."""
    labels = {"app": "checkout", "istio.io/dataplane-mode": "none"}
    pod = Workload(
        ObjectMeta("Pod", "checkout-5d8f-abcde", "shop"),
        {**labels, "pod-template-hash": "5d8f"},
        {},
        "checkout",
        is_pod=True,
    )
    template = Workload(ObjectMeta("Deployment", "checkout", "shop"), labels, {}, "checkout")
    snapshot = Snapshot(
        namespaces=(Namespace(ObjectMeta("Namespace", "shop", labels={"istio.io/dataplane-mode": "ambient"})),),
        services=(Service(ObjectMeta("Service", "checkout", "shop"), {"app": "checkout"}, (ServicePort(80, 8080),)),),
        workloads=(pod, template),
        live=True,
    )
    rules = PostureDocument.model_validate(
        {
            "apiVersion": "mesh-auditor.dev/v1alpha1",
            "kind": "MeshPosture",
            "metadata": {"name": "live"},
            "spec": {"scope": [{"namespace": "shop"}]},
        }
    )
    findings = run_static_audit(snapshot, merge([("rules.yaml", rules)]), {})
    captured = next(f for f in findings if f.check.id == "strict-mtls.captured")
    assert captured.status is Status.FAIL
    text = fix_yaml(captured.fix)
    assert text.startswith("# kubectl patch deployment checkout -n shop --type strategic")
    assert yaml.safe_load(text)["spec"]["template"]["metadata"]["labels"] == {"istio.io/dataplane-mode": "ambient"}


def test_a_node_without_ztunnel_patches_the_real_daemonset_and_a_bypass_gets_the_ztunnel_policy() -> None:
    node = _node_without_ztunnel()
    (patch,) = node.fix.documents
    assert patch.patch
    assert patch.body["metadata"] == {"name": "ztunnel", "namespace": "istio-system"}
    assert patch.body["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert "node-b" in node.fix.note
    bypass = _pod_ip_bypass()
    (policy,) = bypass.fix.documents
    assert policy.body["kind"] == "AuthorizationPolicy"
    assert policy.body["metadata"]["namespace"] == "default"
    assert policy.body["spec"]["selector"] == {"matchLabels": {"app": "catalog"}}
    principals = policy.body["spec"]["rules"][0]["from"][0]["source"]["principals"]
    assert principals == ["cluster.local/ns/default/sa/catalog-waypoint"]


def test_security_hub_recommends_the_findings_own_fix_first() -> None:
    finding = _with_fix(static_finding(CAPTURED, Status.FAIL))
    record = asff(
        finding, HubOptions("123456789012", "eu-west-1", "prod"), now="2026-11-30T10:00:00.000Z", created_at=None
    )
    text = record["Remediation"]["Recommendation"]["Text"]
    assert text.startswith("Apply default/orders-debug with mode STRICT. Label the namespace")
    assert len(text) <= 512
