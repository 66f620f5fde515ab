"""The probe pod manifest: hardened field by field, and its command really runs the probe."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from auditor.adapters.probepods.podspec import (
    BOOTSTRAP,
    PLAN_ENV,
    TERMINATION_LOG,
    PodOptions,
    probe_pod,
)
from auditor.core.probing.probeplan import ProbeBatch, Role
from probes.wire import Outcome, parse_result
from tests.unit.probing.builders import RUN, catalog_rules, make_plan, posture

ROOT = Path(__file__).resolve().parents[3]


def _batch(role: Role) -> ProbeBatch:
    plan = make_plan(posture(catalog_rules()))
    return next(b for b in plan.batches if b.identity.role is role)


def _pod(role: Role = Role.INTRUDER, options: PodOptions | None = None) -> dict[str, Any]:
    batch = _batch(role)
    return probe_pod(batch, batch.wire_plan(RUN, None).model_dump_json(), RUN, options or PodOptions())


def test_pod_spec_is_hardened_as_probe_guard_requires() -> None:
    """Non-root, no token, read-only root, no escalation, ALL dropped, RuntimeDefault seccomp, no host namespaces."""
    spec = _pod()["spec"]
    container = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys()
    assert len(spec["containers"]) == 1
    assert "initContainers" not in spec


def test_pod_runs_once_within_a_deadline_on_auto_mode_with_small_resources() -> None:
    """restartPolicy Never, activeDeadlineSeconds, Auto Mode node selector, small requests and limits."""
    spec = _pod(options=PodOptions(active_deadline_s=42))["spec"]
    container = spec["containers"][0]
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 42
    assert spec["nodeSelector"] == {"eks.amazonaws.com/compute-type": "auto"}
    assert spec["enableServiceLinks"] is False
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "128Mi"},
    }
    assert container["terminationMessagePath"] == TERMINATION_LOG
    assert container["terminationMessagePolicy"] == "File"
    assert container["image"] == "ghcr.io/mesh-auditor/mesh-auditor:0.1.0"


def test_metadata_labels_the_pod_as_the_auditors_and_blocks_consolidation() -> None:
    """managed-by and run-id labels, do-not-disrupt annotation, generateName per role."""
    meta = _pod()["metadata"]
    assert meta["namespace"] == "mesh-auditor-probes"
    assert meta["generateName"] == "mesh-auditor-probe-intruder-"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "mesh-auditor",
        "mesh-auditor.dev/run-id": RUN,
        "mesh-auditor.dev/role": "intruder",
    }
    assert meta["annotations"]["karpenter.sh/do-not-disrupt"] == "true"


def test_outside_pod_opts_out_of_the_mesh_and_control_runs_as_the_allowed_account() -> None:
    """The outside pod carries dataplane-mode none; the control pod runs as ui in the Service's namespace."""
    outside, control = _pod(Role.OUTSIDE), _pod(Role.CONTROL)
    assert outside["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert outside["spec"]["serviceAccountName"] == "mesh-auditor-probe"
    assert (control["metadata"]["namespace"], control["spec"]["serviceAccountName"]) == ("default", "ui")
    assert "istio.io/dataplane-mode" not in control["metadata"]["labels"]


def test_plan_travels_in_the_environment_not_the_command_line() -> None:
    """The env var holds the plan (header values included); the command holds no plan data."""
    container = _pod()["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env[PLAN_ENV])["requests"][0]["headers"] == {"x-auth-token": "s3cret-token-value"}
    assert container["command"] == ["python", "-c", BOOTSTRAP]
    assert "s3cret" not in json.dumps(container["command"])


def test_the_pod_command_runs_the_probe_program_from_the_environment(tmp_path: Path) -> None:
    """Run exactly the container's command (as the kubelet would): the result lands in the termination log."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    # Nothing listens on the port any more: the probe's request is refused, fast and on loopback.
    batch = _batch(Role.OUTSIDE)
    plan = (
        batch.wire_plan(RUN, None)
        .model_dump_json()
        .replace("catalog.default.svc.cluster.local:80", f"127.0.0.1:{port}")
    )
    container = probe_pod(batch, plan, RUN, PodOptions())["spec"]["containers"][0]
    log = tmp_path / "termination-log"
    argv = [sys.executable, container["command"][1], container["command"][2].replace(TERMINATION_LOG, str(log))]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), PLAN_ENV: plan}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = parse_result(log.read_bytes())
    assert result.run_id == RUN
    # The confirmation (``after`` the first) is sent too, once the first ended.
    assert [(r.id, r.outcome) for r in result.results] == [
        ("default/catalog:outside:plaintext", Outcome.REFUSED),
        ("default/catalog:outside:again:plaintext", Outcome.REFUSED),
    ]
