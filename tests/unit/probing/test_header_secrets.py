"""Secret header values reach probe pods by reference, never in the pod spec (issue #10, item 7).

For each rules source of a required header's value: which env entry the pod gets, that no string
of the pod spec (the plan in its env var included) equals the value, and that the probe program
resolves the reference from its environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auditor.adapters.probepods.podspec import (
    BOOTSTRAP,
    PLAN_ENV,
    TERMINATION_LOG,
    PodOptions,
    SecretValueError,
    by_reference,
    probe_pod,
    secret_values,
    spec_strings,
)
from auditor.adapters.probepods.runner import _refuse_secret_values as refuse_secret_values  # the guard itself
from auditor.core.probing.probeplan import NEAR_MISS_SUFFIX, PlanOptions, RunPlan, plan_probes
from probes.wire import PlanError, parse_plan, parse_result, with_header_values
from tests.unit.probing.builders import CATALOG, RUN, TOKEN, catalog_rules, posture, snapshot

ROOT = Path(__file__).resolve().parents[3]


def _plan(value: dict[str, Any], *, headers: tuple[str, ...] = ("x-auth-token",)) -> RunPlan:
    service = catalog_rules(headers=headers)
    service["requiredHeaders"] = [{"name": h, "value": value} for h in headers]
    rules = posture(service)
    values = {(CATALOG, h): TOKEN for h in headers}
    return plan_probes(rules, snapshot(CATALOG), values, RUN, PlanOptions(control_allowed=True))


def _pods(plan: RunPlan) -> list[dict[str, Any]]:
    """Every pod manifest the runner would create for ``plan``."""
    pods = []
    for batch in plan.batches:
        wire, env = by_reference(batch, plan)
        pods.append(probe_pod(batch, wire.model_dump_json(), RUN, PodOptions(), secret_env=env))
    return pods


SECRET_SOURCES: dict[str, dict[str, Any]] = {
    "secretRef": {"secretRef": {"name": "catalog-token", "key": "token"}},
    "secretRef-other-namespace": {"secretRef": {"name": "catalog-token", "key": "token", "namespace": "vault"}},
    "fromEnv+probeSecretRef": {"fromEnv": "CATALOG_TOKEN", "probeSecretRef": {"name": "probe-token", "key": "t"}},
    "secretRef+probeSecretRef": {
        "secretRef": {"name": "catalog-token", "key": "token"},
        "probeSecretRef": {"name": "probe-token", "key": "t"},
    },
    "literal+probeSecretRef": {"literal": TOKEN, "probeSecretRef": {"name": "probe-token", "key": "t"}},
}


@pytest.mark.parametrize("source", list(SECRET_SOURCES))
def test_no_pod_spec_holds_a_secret_header_value(source: str) -> None:
    """Every pod the runner creates, every string in it (the plan JSON parsed too): never the value."""
    plan = _plan(SECRET_SOURCES[source])
    pods = _pods(plan)
    assert {p["metadata"]["generateName"] for p in pods} == {
        "mesh-auditor-probe-outside-",
        "mesh-auditor-probe-intruder-",
        "mesh-auditor-probe-control-",
    }
    for pod in pods:
        assert TOKEN not in json.dumps(pod)
        assert TOKEN not in spec_strings(pod)
    assert secret_values(plan) == {TOKEN}


@pytest.mark.parametrize(
    ("source", "secret"),
    [
        ("secretRef", {"name": "catalog-token", "key": "token"}),
        ("secretRef-other-namespace", {"name": "catalog-token", "key": "token"}),
        ("fromEnv+probeSecretRef", {"name": "probe-token", "key": "t"}),
        ("secretRef+probeSecretRef", {"name": "probe-token", "key": "t"}),
    ],
)
def test_the_pod_reads_the_value_from_a_secret_in_its_own_namespace(source: str, secret: dict[str, str]) -> None:
    for pod in _pods(_plan(SECRET_SOURCES[source])):
        env = pod["spec"]["containers"][0]["env"]
        plan = json.loads(next(e["value"] for e in env if e["name"] == PLAN_ENV))
        with_headers = [r for r in plan["requests"] if r["id"].endswith(":with-headers")]
        if pod["metadata"]["generateName"] == "mesh-auditor-probe-outside-":
            assert [e["name"] for e in env] == [PLAN_ENV, "PYTHONDONTWRITEBYTECODE"]  # sends no header
            continue
        assert env[-1] == {
            "name": "MESH_AUDITOR_HEADER_0",
            "valueFrom": {"secretKeyRef": {**secret, "optional": False}},
        }
        # The request and, where planned, its confirmation (``again:with-headers``) send the same reference.
        assert with_headers
        assert [(r["headers"], r["header_refs"]) for r in with_headers] == [
            ({}, {"x-auth-token": "MESH_AUDITOR_HEADER_0"})
        ] * len(with_headers)


def test_a_literal_is_not_secret_and_travels_in_the_plan() -> None:
    """A literal is written in the rules file itself: by value, and no Secret is referred to."""
    pods = _pods(_plan({"literal": TOKEN}))
    intruder = next(p for p in pods if p["metadata"]["generateName"] == "mesh-auditor-probe-intruder-")
    assert all("valueFrom" not in e for e in intruder["spec"]["containers"][0]["env"])
    assert TOKEN in spec_strings(intruder)


def test_two_headers_from_one_secret_share_a_variable_and_others_get_their_own() -> None:
    service = catalog_rules(headers=("x-a", "x-b", "x-c"))
    service["requiredHeaders"] = [
        {"name": "x-a", "value": {"secretRef": {"name": "s", "key": "k"}}},
        {"name": "x-b", "value": {"secretRef": {"name": "s", "key": "k"}}},
        {"name": "x-c", "value": {"secretRef": {"name": "s", "key": "other"}}},
    ]
    rules = posture(service)
    values = {(CATALOG, "x-a"): TOKEN, (CATALOG, "x-b"): TOKEN, (CATALOG, "x-c"): "second-secret-value"}
    plan = plan_probes(rules, snapshot(CATALOG), values, RUN, PlanOptions(control_allowed=True))
    control = next(b for b in plan.batches if b.identity.role.value == "control")
    wire, env = by_reference(control, plan)
    assert [(e["name"], e["valueFrom"]["secretKeyRef"]["key"]) for e in env] == [
        ("MESH_AUDITOR_HEADER_0", "k"),
        ("MESH_AUDITOR_HEADER_1", "other"),
    ]
    without_b = next(r for r in wire.requests if r.id.endswith(":without:x-b"))
    assert without_b.header_refs == {"x-a": "MESH_AUDITOR_HEADER_0", "x-c": "MESH_AUDITOR_HEADER_1"}
    assert "second-secret-value" not in wire.model_dump_json()


def test_a_from_env_value_without_a_probe_secret_is_not_planned_with_the_fix() -> None:
    plan = _plan({"fromEnv": "CATALOG_TOKEN"})
    reasons = {(n.role.value, n.reason) for n in plan.not_planned}
    assert {role for role, _ in reasons} == {"intruder", "control"}
    assert all("add value.probeSecretRef" in reason for _, reason in reasons)
    for pod in _pods(plan):
        assert TOKEN not in json.dumps(pod)


def test_a_batch_that_would_leak_is_refused() -> None:
    """A secret header whose rules lost its Secret between planning and the pod: no pod at all."""
    plan = _plan({"secretRef": {"name": "catalog-token", "key": "token"}})
    header = plan.targets[0].required_headers[0]
    broken = header.value.model_copy(update={"secret_ref": None, "from_env": "X"})
    target = plan.targets[0].model_copy(update={"required_headers": [header.model_copy(update={"value": broken})]})
    intruder = next(b for b in plan.batches if b.identity.role.value == "intruder")
    with pytest.raises(SecretValueError, match="has no Secret for probe pods"):
        by_reference(intruder, RunPlan(plan.run_id, plan.batches, (), (target,)))


def test_the_probe_program_resolves_references_and_names_a_missing_variable_not_a_value() -> None:
    plan = _plan(SECRET_SOURCES["secretRef"])
    intruder = next(b for b in plan.batches if b.identity.role.value == "intruder")
    wire = parse_plan(by_reference(intruder, plan)[0].model_dump_json())
    resolved = with_header_values(wire, {"MESH_AUDITOR_HEADER_0": TOKEN})
    assert [(r.headers, r.header_refs) for r in resolved.requests] == [({"x-auth-token": TOKEN}, {})]
    with pytest.raises(PlanError, match=r"header_refs.x-auth-token: MESH_AUDITOR_HEADER_0 is unset or empty"):
        with_header_values(wire, {})
    with pytest.raises(PlanError, match="not printable ASCII") as caught:
        with_header_values(wire, {"MESH_AUDITOR_HEADER_0": TOKEN + "\n"})
    assert TOKEN not in str(caught.value)


def test_the_pod_command_sends_the_header_from_its_secret_environment(tmp_path: Path) -> None:
    """Run the container's command as the kubelet would, the secretKeyRef already resolved into env."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        plan = _plan(SECRET_SOURCES["secretRef"])
        intruder = next(b for b in plan.batches if b.identity.role.value == "intruder")
        wire, _ = by_reference(intruder, plan)
        plan_json = wire.model_dump_json().replace("catalog.default.svc.cluster.local:80", f"127.0.0.1:{port}")
        container = probe_pod(intruder, plan_json, RUN, PodOptions())["spec"]["containers"][0]
        log = tmp_path / "termination-log"
        argv = [sys.executable, "-c", BOOTSTRAP.replace(TERMINATION_LOG, str(log))]
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            PLAN_ENV: plan_json,
            "MESH_AUDITOR_HEADER_0": TOKEN,
        }
        assert container["command"] == ["python", "-c", BOOTSTRAP]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        listener.settimeout(30)
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
            connection.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\n\r\nRBAC: access denied")
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"x-auth-token: {TOKEN}".encode() in request
    assert parse_result(log.read_bytes()).run_id == RUN


def test_the_near_miss_of_a_secret_value_travels_as_a_reference_plus_suffix() -> None:
    """The control's near-miss request (the secret plus a suffix) must not put the secret in the spec:
    it refers to the same variable and the probe program appends the suffix."""
    plan = _plan(SECRET_SOURCES["secretRef"])
    control = next(b for b in plan.batches if b.identity.role.value == "control")
    wire, _ = by_reference(control, plan)
    near_miss = next(r for r in wire.requests if ":near-miss:" in r.id)
    assert near_miss.headers == {}
    assert near_miss.header_refs == {"x-auth-token": "MESH_AUDITOR_HEADER_0"}
    assert near_miss.header_ref_suffixes == {"x-auth-token": NEAR_MISS_SUFFIX}
    assert TOKEN not in wire.model_dump_json()
    resolved = with_header_values(parse_plan(wire.model_dump_json()), {"MESH_AUDITOR_HEADER_0": TOKEN})
    sent = {r.id: r.headers for r in resolved.requests}
    assert sent[near_miss.id] == {"x-auth-token": TOKEN + NEAR_MISS_SUFFIX}


def test_the_last_guard_refuses_a_secret_inside_a_longer_spec_string() -> None:
    """The runner's final check matches by containment: a secret inside a longer string is a leak."""
    plan = _plan(SECRET_SOURCES["secretRef"])
    control = next(b for b in plan.batches if b.identity.role.value == "control")
    pod = {"spec": {"containers": [{"env": [{"name": "X", "value": f"prefix-{TOKEN}-suffix"}]}]}}
    with pytest.raises(SecretValueError, match="would hold 1 secret header value"):
        refuse_secret_values(control, plan, pod)
