"""A chaos drill (#13) against the lab: ``auditor drill`` on a running data plane with two nodes.

One lab for the module (``scripts/lab up --nodes 2`` on the retail store). The lab's translator
follows the drill's writes like any change: the canary Deployment becomes a lab pod (captured,
its replica a Pod with a node and Ready), its waypoint Gateway an Envoy whose status the lab
writes back, and the ``pod-opted-out`` drift rolls the canary's pod out again uncaptured. The
drill runs as the auditor's ServiceAccount (deploy/rbac.yaml) plus a Role in the sandbox that
grants exactly the adapter's verbs on the canary's kinds (``auditor.adapters.k8s.drill.KINDS``),
and alerts through slack-sdk to the local Slack server.

It shows: all five drift kinds detected on their promise, alerted (marked as drills) and
resolved, with their times; the sandbox empty afterwards; every object outside it unchanged
(uid, labels, annotations and spec compared before and after).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor.adapters.k8s.drill import KINDS
from auditor.core.drill import DRIFT_KINDS
from testrigs.devtools.controlplane import KubeAPI
from testrigs.lab.lab import Lab, LabError, check_host
from tests.lab import labkit
from tests.lab.test_e2e_audit import _lab_script
from tests.slack_server import slack_server

pytestmark = pytest.mark.lab

SANDBOX = "mesh-auditor-drill"  # the default drill.namespace
RULES = labkit.REPO / "rules" / "retail-store.yaml"
AUDITOR = ("mesh-auditor", "mesh-auditor")  # the ServiceAccount's namespace and name
THREAD = "1700000000.000001"
CONTROL_ROLE_TEXT = (labkit.REPO / "deploy" / "control-probes-default.yaml").read_text(encoding="utf-8")
# Every kind a drill could write, the kinds the lab's controllers write, and namespaces: compared
# before and after (not the status, which the lab's controllers keep writing).
WATCHED = (
    "namespaces",
    "pods",
    "services",
    "serviceaccounts",
    "deployments.apps",
    "endpointslices.discovery.k8s.io",
    "peerauthentications.security.istio.io",
    "authorizationpolicies.security.istio.io",
    "gateways.gateway.networking.k8s.io",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
)


@dataclass(frozen=True)
class DrillLab:
    lab: Lab
    auditor_kubeconfig: Path
    kube: KubeAPI


def _sandbox_objects() -> str:
    """The sandbox as the chart makes it (namespace labelled ambient) and the drill Role there."""
    rules = []
    for prefix, plural in KINDS.values():
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        rules.append({"apiGroups": [group], "resources": [plural], "verbs": ["create", "list", "patch", "delete"]})
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": SANDBOX, "labels": {"istio.io/dataplane-mode": "ambient"}},
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "mesh-auditor-drill", "namespace": SANDBOX},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "mesh-auditor-drill", "namespace": SANDBOX},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mesh-auditor-drill"},
        "subjects": [{"kind": "ServiceAccount", "namespace": AUDITOR[0], "name": AUDITOR[1]}],
    }
    return yaml.safe_dump_all([namespace, role, binding])


def _wait_for_drill_role(kube: KubeAPI) -> None:
    who = f"--as=system:serviceaccount:{AUDITOR[0]}:{AUDITOR[1]}"
    for _ in range(100):
        result = subprocess.run(
            [str(kube.kubectl_path), f"--kubeconfig={kube.kubeconfig}", "auth", "can-i", "patch", "deployments.apps",
             f"--namespace={SANDBOX}", who],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.stdout.strip() == "yes":
            return
        time.sleep(0.1)
    pytest.fail("the drill Role never took effect")


@pytest.fixture(scope="module")
def drill_lab() -> Iterator[DrillLab]:
    try:
        check_host()
    except LabError as error:
        pytest.fail(f"the lab cannot run on this machine: {error}")
    state_dir = Path(f"/tmp/malab-drill-{secrets.token_hex(3)}")
    record = None
    try:
        up = _lab_script(
            "--state-dir", str(state_dir), "up", "--emulated", "--nodes", "2", "--manifests", str(labkit.RETAIL)
        )
        assert up.returncode == 0, up.stderr[-3000:]
        lab = Lab(state_dir)
        record = lab.load()
        status = json.loads(_lab_script("--state-dir", str(state_dir), "status").stdout)
        kube = lab.kube()
        kube.apply_text(_sandbox_objects())
        _wait_for_drill_role(kube)
        yield DrillLab(lab, Path(status["auditor_kubeconfig"]), kube)
    finally:
        down = _lab_script("--state-dir", str(state_dir), "down")
    assert down.returncode == 0, down.stderr
    assert record is not None
    labkit.assert_gone(state_dir, record)


def _listing(kube: KubeAPI, resource: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kube.kubectl("get", resource, "--all-namespaces", "-o", "json"))["items"]
    return items


def _outside(kube: KubeAPI) -> dict[tuple[str, str, str], str]:
    seen = {}
    for resource in WATCHED:
        for item in _listing(kube, resource):
            meta = item["metadata"]
            if meta.get("namespace") == SANDBOX or meta["name"] == SANDBOX:
                continue
            kept = (meta["uid"], meta.get("labels"), meta.get("annotations"), item.get("spec"))
            seen[(resource, meta.get("namespace", ""), meta["name"])] = json.dumps(kept, sort_keys=True)
    return seen


def _in_sandbox(kube: KubeAPI) -> list[str]:
    found = []
    for resource in (*WATCHED[1:], "secrets", "configmaps"):
        listing = json.loads(kube.kubectl("get", resource, f"--namespace={SANDBOX}", "-o", "json"))["items"]
        found += [f"{resource} {item['metadata']['name']}" for item in listing]
    # What the API server, istiod (its root and CRL in every namespace) and the test put there
    # themselves, not the drill.
    ignored = {"serviceaccounts default", "configmaps kube-root-ca.crt"}
    ignored |= {"configmaps istio-ca-root-cert", "configmaps istio-ca-crl"}
    ignored |= {
        "roles.rbac.authorization.k8s.io mesh-auditor-drill",
        "rolebindings.rbac.authorization.k8s.io mesh-auditor-drill",
    }
    return sorted(set(found) - ignored)


def test_a_drill_in_the_lab_detects_alerts_and_resolves_every_drift_kind_and_touches_nothing_else(
    drill_lab: DrillLab,
) -> None:
    before = _outside(drill_lab.kube)
    with slack_server() as (base, slack):
        env = {
            **os.environ,
            "AUDITOR_SLACK__MODE": "bot",
            "AUDITOR_SLACK__BOT_TOKEN": "xoxb-drill-token",
            "AUDITOR_SLACK__CHANNEL": "CALERTS",
            "AUDITOR_SLACK__BASE_URL": base + "api/",
            "AUDITOR_DRILL__SLACK_CHANNEL": "CDRILLS",
            "AUDITOR_DRILL__SLACK_THREAD_TS": THREAD,
            "AUDITOR_DRILL__POLL_S": "0.5",
            "AUDITOR_DRILL__DETECT_TIMEOUT_S": "90",
        }
        started = time.monotonic()
        argv = [sys.executable, "-m", "auditor.cli", "drill", "--kubeconfig", str(drill_lab.auditor_kubeconfig)]
        argv += ["--rules", str(RULES), "--output", "json"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, env=env)
        took = time.monotonic() - started
        messages = list(slack.messages)
    after = _outside(drill_lab.kube)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)
    drills = document["drills"]
    print(
        f"\nauditor drill in the lab: {took:.1f} s; "
        + ", ".join(
            f"{d['kind']} detected in {d['time_to_detect_s']} s, alerted in {d['time_to_alert_s']} s" for d in drills
        )
    )
    assert document["baseline"]["passed"] is True, document["baseline"]
    assert document["aborted"] is None
    assert [d["kind"] for d in drills] == [k.name for k in DRIFT_KINDS]
    for drill in drills:
        expected = next(k.promise.value for k in DRIFT_KINDS if k.name == drill["kind"])
        assert (drill["promise"], drill["detected"], drill["alerted"], drill["resolved"]) == (
            expected,
            True,
            True,
            True,
        )
        assert 0 <= drill["time_to_detect_s"] <= drill["time_to_alert_s"]
    assert document["cleanup"] == {"leftover_objects": 0}
    assert document["ok"] is True
    # Every Slack message is a drill's, in the drill thread: two per kind (the alert, the revert).
    assert len(messages) == 2 * len(DRIFT_KINDS)
    assert all(m["text"].startswith("[DRILL]") for m in messages)
    assert {m["metadata"]["event_type"] for m in messages} == {"mesh_auditor_drill"}
    assert {m.get("thread_ts") for m in messages} == {THREAD}
    # The sandbox is empty again, and the lab removed the canary's lab pods.
    assert _in_sandbox(drill_lab.kube) == []
    record = drill_lab.lab.load()
    assert record is not None
    assert [key for key in record.pods if key.startswith(f"{SANDBOX}/")] == []
    # Nothing outside the sandbox changed.
    assert before.keys() == after.keys()
    assert {key for key in before if before[key] != after[key]} == set()


def test_with_active_probing_each_drift_is_detected_by_the_probes_on_its_promise(drill_lab: DrillLab) -> None:
    """``auditor drill --active`` in the lab: the canary's audits also run probe pods (the control as
    the drill's allowed account in the sandbox, which the chart's control Role there permits), and a
    drift counts as detected only when the probe verdict of its own promise fails."""
    control = CONTROL_ROLE_TEXT.replace("namespace: default", f"namespace: {SANDBOX}")
    drill_lab.kube.apply_text(control)
    env = {
        **os.environ,
        "AUDITOR_SLACK__MODE": "bot",
        "AUDITOR_SLACK__BOT_TOKEN": "xoxb-drill-token",
        "AUDITOR_SLACK__CHANNEL": "CALERTS",
        "AUDITOR_DRILL__SLACK_CHANNEL": "CDRILLS",
        "AUDITOR_DRILL__SLACK_THREAD_TS": THREAD,
        "AUDITOR_PROBES__CONTROL_ENABLED": "true",
        "AUDITOR_PROBES__DEADLINE_S": "60",
        "AUDITOR_PROBES__REQUEST_TIMEOUT_S": "2",
        "AUDITOR_DRILL__POLL_S": "0.5",
        "AUDITOR_DRILL__DETECT_TIMEOUT_S": "120",
    }
    argv = [sys.executable, "-m", "auditor.cli", "drill", "--kubeconfig", str(drill_lab.auditor_kubeconfig)]
    argv += ["--rules", str(RULES), "--active", "--output", "json"]
    with slack_server() as (base, slack):
        env["AUDITOR_SLACK__BASE_URL"] = base + "api/"
        started = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900, env=env)
        took = time.monotonic() - started
        messages = list(slack.messages)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)
    drills = document["drills"]
    print(
        f"\nauditor drill --active in the lab: {took:.1f} s; "
        + ", ".join(
            f"{d['kind']} detected by {'+'.join(d['detected_by'])} in {d['time_to_detect_s']} s" for d in drills
        )
    )
    assert document["baseline"]["passed"] is True, document["baseline"]
    for drill in drills:
        expected = next(k.promise.value for k in DRIFT_KINDS if k.name == drill["kind"])
        assert (drill["promise"], drill["detected"], drill["alerted"], drill["resolved"]) == (
            expected,
            True,
            True,
            True,
        ), drill
        assert "probe" in drill["detected_by"], drill
    assert document["cleanup"] == {"leftover_objects": 0}
    assert document["ok"] is True
    assert all(m["text"].startswith("[DRILL]") for m in messages)
