"""The Helm chart: lint, golden renders, schema refusals, kubeconform, and deploy/ rendered from it.

helm and kubeconform are built from the Go modules pinned in tools/helm and tools/kubeconform
(``scripts/chart build``; a missing build is built here, never skipped). The kubeconform test
validates in strict mode against schemas generated from the test API server's /openapi/v2,
which holds the pinned Kubernetes release's kinds and the installed CRDs. The RBAC the chart
installs is proven on the API server by tests/integration/test_rbac.py (``helm install``).

Golden files: ``MESH_AUDITOR_UPDATE_GOLDEN=1 python -m pytest tests/integration/test_chart.py``
rewrites them; review the diff like code.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.adapters.k8s.rbac import READER_ROLE, reader_cluster_role
from testrigs.devtools import charttools
from testrigs.devtools.charttools import CHART_DIR, ChartToolError, documents, template
from testrigs.devtools.controlplane import KubeAPI
from tests.cases import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "chart"
CUSTOM = FIXTURES / "values-custom.yaml"
GOLDEN = {"defaults": (), "custom": (CUSTOM,)}


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return charttools.build((charttools.HELM,))["helm"]
    except ChartToolError as error:
        pytest.fail(f"cannot build helm from tools/helm: {error}")


@pytest.fixture(scope="session")
def kubeconform_bin() -> Path:
    try:
        return charttools.build((charttools.KUBECONFORM,))["kubeconform"]
    except ChartToolError as error:
        pytest.fail(f"cannot build kubeconform from tools/kubeconform: {error}")


def _objects(rendered: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in documents(rendered)}


@pytest.mark.parametrize("values", [(), (CUSTOM,)], ids=["defaults", "custom"])
def test_helm_lint_strict_passes(helm: Path, values: tuple[Path, ...]) -> None:
    argv = [str(helm), "lint", "--strict", str(CHART_DIR), f"--kube-version={charttools.kube_version()}"]
    result = subprocess.run(
        argv + [f"--values={v}" for v in values],
        capture_output=True,
        text=True,
        check=False,
        env=charttools.helm_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_render_matches_the_golden_file(helm: Path, name: str) -> None:
    """The whole rendered chart, byte for byte: any change to an object shows in review."""
    rendered = template(helm, values=GOLDEN[name])
    golden = FIXTURES / f"golden-{name}.yaml"
    if os.environ.get("MESH_AUDITOR_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered, encoding="utf-8")
    assert rendered == golden.read_text(encoding="utf-8"), f"{golden} is stale: see this module's docstring"


def test_deploy_manifests_are_rendered_from_the_chart(helm: Path) -> None:
    """deploy/*.yaml are the chart's output (one source of truth): `scripts/chart render` rewrites them."""
    assert charttools.render_deploy(helm, check=True) == []
    rendered = {item.file for item in charttools.RENDERED}
    on_disk = {p.name for p in charttools.DEPLOY_DIR.glob("*.yaml")}
    assert on_disk == rendered


@pytest.mark.parametrize("values", [(), (CUSTOM,)], ids=["defaults", "custom"])
def test_reader_cluster_role_is_exactly_what_the_reader_lists(helm: Path, values: tuple[Path, ...]) -> None:
    """One list/watch rule per resource the snapshot reads (auditor.adapters.k8s.resources), no more."""
    roles = [d for d in documents(template(helm, values=values)) if d["kind"] == "ClusterRole"]
    [reader] = [r for r in roles if r["metadata"]["name"].endswith("-reader")]
    assert reader["rules"] == reader_cluster_role()["rules"]


def test_default_names_match_what_the_code_and_docs_name(helm: Path) -> None:
    objects = _objects(template(helm))
    assert ("ClusterRole", "", READER_ROLE) in objects
    assert ("ServiceAccount", "mesh-auditor", "mesh-auditor") in objects
    assert ("ServiceAccount", "mesh-auditor-probes", "mesh-auditor-probe") in objects
    assert ("Role", "mesh-auditor", "mesh-auditor-state") in objects


def test_custom_values_reach_every_object_that_depends_on_them(helm: Path) -> None:
    """Namespace, ServiceAccount, IRSA, node pool, grace period, images and settings, as configured."""
    objects = _objects(template(helm, values=(CUSTOM,)))
    sa = objects[("ServiceAccount", "platform-audit", "auditor")]
    assert sa["metadata"]["annotations"] == {
        "team": "platform",
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mesh-auditor",
    }
    [condition] = objects[("ValidatingAdmissionPolicy", "", "audit-probe-guard")]["spec"]["matchConditions"]
    assert condition["expression"] == "request.userInfo.username == 'system:serviceaccount:platform-audit:auditor'"
    assert objects[("ValidatingAdmissionPolicyBinding", "", "audit-probe-guard")]["spec"]["policyName"] == (
        "audit-probe-guard"
    )
    for kind, namespace, name in objects:
        if kind in {"RoleBinding", "ClusterRoleBinding"}:
            subjects = objects[(kind, namespace, name)]["subjects"]
            assert subjects == [{"kind": "ServiceAccount", "name": "auditor", "namespace": "platform-audit"}]
    pod = objects[("Deployment", "platform-audit", "audit")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 660
    assert pod["nodeSelector"] == {"eks.amazonaws.com/compute-type": "auto", "karpenter.sh/nodepool": "system"}
    assert {"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    [container] = pod["containers"]
    assert container["image"].endswith("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    assert {
        "name": "AUDITOR_SLACK__BOT_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "slack-bot", "key": "token"}},
    } in (container["env"])
    assert ("ConfigMap", "platform-audit", "audit-rules") not in objects  # rules.existingConfigMap
    assert pod["volumes"][1]["configMap"]["name"] == "posture"
    settings = yaml.safe_load(objects[("ConfigMap", "platform-audit", "audit-config")]["data"]["settings.yaml"])
    assert settings["daemon"]["rules"] == ["/etc/mesh-auditor/rules/posture.yaml"]
    assert settings["daemon"]["namespace"] == "platform-audit"
    assert settings["daemon"]["probe_every_s"] == 900  # from .Values.settings
    assert settings["probes"]["image"] == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mesh-auditor-probe:0.1.0-rc1"
    assert settings["probes"]["control_enabled"] is True
    assert settings["aws"]["s3_bucket"] == "audit-evidence"
    for namespace in ("shop", "payments"):
        assert ("Role", namespace, "audit-control-probes") in objects
    assert ("Role", "mesh-auditor-drill", "audit-drill") in objects
    assert objects[("Role", "shop", "audit-header-secrets")]["rules"][0]["resourceNames"] == ["catalog-token"]
    assert objects[("ServiceMonitor", "platform-audit", "audit")]["spec"]["endpoints"][0]["interval"] == "1m"


@pytest.mark.parametrize(
    ("mode", "variable"),
    [("bot", "AUDITOR_SLACK__BOT_TOKEN"), ("webhook", "AUDITOR_SLACK__WEBHOOK_URL"), ("off", None)],
)
def test_slack_secret_reaches_the_variable_of_its_mode(helm: Path, mode: str, variable: str | None) -> None:
    """The token (bot) or URL (webhook) comes from the Secret only, never from values."""
    rendered = template(helm, set_values=(f"slack.mode={mode}", "slack.channel=C0123456789"))
    [container] = _objects(rendered)[("Deployment", "mesh-auditor", "mesh-auditor")]["spec"]["template"]["spec"][
        "containers"
    ]
    slack = [e for e in container["env"] if e["name"].startswith("AUDITOR_SLACK__")]
    expected = (
        []
        if variable is None
        else [{"name": variable, "valueFrom": {"secretKeyRef": {"name": "mesh-auditor-slack", "key": "bot-token"}}}]
    )
    assert slack == expected


def test_settings_and_rules_changes_roll_the_pods(helm: Path) -> None:
    """The checksum annotations change with the rendered settings and the inline rules."""

    def annotations(*set_values: str) -> dict[str, str]:
        deployment = _objects(template(helm, set_values=set_values))[("Deployment", "mesh-auditor", "mesh-auditor")]
        return dict(deployment["spec"]["template"]["metadata"]["annotations"])

    base = annotations()
    assert annotations("logging.level=debug")["checksum/settings"] != base["checksum/settings"]
    assert annotations("rules.inline.metadata.name=shop")["checksum/rules"] != base["checksum/rules"]
    assert annotations("replicaCount=3") == base


def test_generated_settings_are_valid_auditor_settings(helm: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """settings.yaml as rendered loads through the auditor's own Settings (no unknown shape)."""
    from auditor.settings import load_settings  # noqa: PLC0415 - reads the environment when called

    for values in ((), (CUSTOM,)):
        config = next(d for d in documents(template(helm, values=values)) if d["metadata"]["name"].endswith("-config"))
        path = tmp_path / "settings.yaml"
        path.write_text(config["data"]["settings.yaml"], encoding="utf-8")
        monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(path))
        settings = load_settings()
        assert settings.probes.deadline_s in (300.0, 600.0)
        assert settings.daemon.rules[0].startswith("/etc/mesh-auditor/rules/")


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        (("slack.mode=bot",), "channel"),
        (("unknownKey=1",), "unknownKey"),
        (("probes.deadlineSeconds=five",), "deadlineSeconds"),
        (("aws.iamRoleArn=my-role",), "iamRoleArn"),
        (("terminationGracePeriodSeconds=100",), "must exceed probes.deadlineSeconds"),
        (
            ("probes.deadlineSeconds=20", "settings.daemon.shutdown_grace_s=90", "terminationGracePeriodSeconds=60"),
            "must exceed settings.daemon.shutdown_grace_s",
        ),
        (("image.digest=latest",), "digest"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(helm: Path, set_values: tuple[str, ...], message: str) -> None:
    with pytest.raises(ChartToolError) as refused:
        template(helm, set_values=set_values)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("set_values", "grace"),
    [
        ((), 330),  # the probe deadline (300 s) is the larger: 300 + 30
        (("probes.deadlineSeconds=20",), 50),  # 20 s deadline over the 10 s default shutdown grace
        (("probes.deadlineSeconds=20", "settings.daemon.shutdown_grace_s=90"), 120),
        (("probes.deadlineSeconds=20", "settings.daemon.shutdown_grace_s=90.5"), 121),
    ],
)
def test_default_grace_period_is_above_the_probe_deadline_and_the_daemons_shutdown_grace(
    helm: Path, set_values: tuple[str, ...], grace: int
) -> None:
    """Unset, terminationGracePeriodSeconds is the larger of probes.deadlineSeconds and
    settings.daemon.shutdown_grace_s (rounded up), plus 30 s."""
    [deployment] = [d for d in documents(template(helm, set_values=set_values)) if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


@pytest.mark.kube
@pytest.mark.parametrize("values", [(), (CUSTOM,)], ids=["defaults", "custom"])
def test_kubeconform_strict_against_the_pinned_openapi_and_real_crds(
    helm: Path, kubeconform_bin: Path, kube_api: KubeAPI, tmp_path: Path, values: tuple[Path, ...]
) -> None:
    """Every rendered object is valid for the pinned Kubernetes release and the installed CRDs,
    with no unknown field (strict). ServiceMonitor's CRD comes from the prometheus-operator Go
    module (tools/chartcrds)."""
    from tests.integration.chart_crds import install_chart_crds  # noqa: PLC0415

    install_chart_crds(kube_api)
    openapi = json.loads(kube_api.kubectl("get", "--raw", "/openapi/v2"))
    rendered = template(helm, values=values)
    kinds = {(d["apiVersion"], d["kind"]) for d in documents(rendered)}
    charttools.write_schemas(openapi, kinds, tmp_path / "schemas")
    report = charttools.kubeconform(kubeconform_bin, tmp_path / "schemas", rendered)
    assert report["summary"]["invalid"] == 0
    assert report["summary"]["errors"] == 0
    assert report["summary"]["valid"] == len(documents(rendered))


@pytest.mark.kube
def test_kubeconform_catches_an_unknown_field(
    helm: Path, kubeconform_bin: Path, kube_api: KubeAPI, tmp_path: Path
) -> None:
    """The control: strict mode refuses a field the API does not know (a typo in a template)."""
    openapi = json.loads(kube_api.kubectl("get", "--raw", "/openapi/v2"))
    deployment = next(d for d in documents(template(helm)) if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    charttools.write_schemas(openapi, {("apps/v1", "Deployment")}, tmp_path / "schemas")
    with pytest.raises(ChartToolError, match="terminationGracePeriod"):
        charttools.kubeconform(kubeconform_bin, tmp_path / "schemas", yaml.safe_dump(deployment))
