"""Faults only a real data plane shows (#12), through ``scripts/lab real-up --fault``, and a clean ``real-down``.

Each test starts its own node with the command line, as a user would: the retail store and the
curl pods, the named faults, then ``real-status`` and traffic; ``real-down`` must leave the host as
it found it: no process, no lab namespace, no /etc/netns file, no state directory, and the host's
iptables rules, ip rules and routes unchanged.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testrigs.lab.realnode import RealNode
from tests.lab import labkit, realkit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lab"
MANIFESTS = [f"--manifests={path}" for path in labkit.BASE_MANIFESTS]


def _lab(state_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), f"--state-dir={state_dir}", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def _host_network() -> dict[str, str]:
    """What a lab must never change in the host's namespace."""
    commands = {"iptables": ["iptables-save"], "rules": ["ip", "rule"], "routes": ["ip", "route"]}
    state = {}
    for name, argv in commands.items():
        text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        # iptables-save's comment lines carry a timestamp.
        state[name] = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return state


@pytest.fixture
def started() -> Iterator[tuple[RealNode, list[str]]]:
    """A node started by the test with ``real-up``; afterwards ``real-down`` and the proof it is gone."""
    node = RealNode(Path(f"/tmp/malab-real-{secrets.token_hex(3)}"))
    before = _host_network()
    launched: list[str] = []
    try:
        yield node, launched
    finally:
        record = node.load()
        result = _lab(node.state_dir, "real-down")
        assert result.returncode == 0, result.stderr
        if record is not None:
            realkit.assert_gone(node, record)
            for name in launched:
                pids = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True, check=False).stdout
                assert pids == "", f"{name} survived real-down: {pids}"
        assert _host_network() == before


def _up(node: RealNode, *faults: str) -> dict[str, object]:
    result = _lab(node.state_dir, "real-up", *MANIFESTS, *(f"--fault={f}" for f in faults))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(node.kubeconfig)
    status = _lab(node.state_dir, "real-status")
    report: dict[str, object] = json.loads(status.stdout)
    return report


def test_unknown_or_malformed_fault_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for fault, words in (
        ("ztunnel-sleepy", "unknown fault 'ztunnel-sleepy'"),
        ("uncaptured-pod", "uncaptured-pod=NAMESPACE/NAME"),
        ("ztunnel-restart=0", "between 1 and 3600"),
        ("ztunnel-down=node-9", "no node 'node-9'"),
    ):
        result = _lab(tmp_path / "never", "real-up", *MANIFESTS, f"--fault={fault}", timeout=60)
        assert (result.returncode, words in result.stderr) == (2, True), result.stderr
        assert not (tmp_path / "never").exists()
    # ``up`` is the real data plane: the translator's planted faults and several nodes need --emulated.
    for extra, words in (
        ("--fault=l4-allow-all", "l4-allow-all: planted by the emulated lab's translator"),
        ("--nodes=2", "the real data plane runs one node (fix: add --emulated)"),
    ):
        result = _lab(tmp_path / "never", "up", *MANIFESTS, extra, timeout=60)
        assert (result.returncode, words in result.stderr) == (2, True), result.stderr
        assert not (tmp_path / "never").exists()


def test_uncaptured_pod_and_ztunnel_restarted_mid_audit(started: tuple[RealNode, list[str]]) -> None:
    """ui-0 is labelled ambient but never handed over; ztunnel restarts every 4 s meanwhile."""
    node, launched = started
    launched.append(node.state_dir.name)
    status = _up(node, "uncaptured-pod=default/ui-0", "ztunnel-restart=4")
    record = node.load()
    assert record is not None
    assert status["faults"] == ["uncaptured-pod=default/ui-0", "ztunnel-restart=4"]
    # ui-0 has its namespace and its ambient annotation, yet the agent never hands it over.
    acked = set(node.agent_status()["acked"])
    assert record.pods["default/ui-0"]["uid"] not in acked
    assert {record.pods[k]["uid"] for k in realkit.CAPTURED - {"default/ui-0"}} <= acked
    # The ztunnel process listed is the supervisor's child; it changes as the fault restarts it.
    first = status["ztunnel"]
    assert isinstance(first, list)
    assert first[0]["node"] == "malab-node-1"
    assert first[0]["pid"] != first[0]["supervisor_pid"]
    deadline = time.monotonic() + 60
    while True:
        now = json.loads(_lab(node.state_dir, "real-status").stdout)["ztunnel"][0]
        if now["restarts"] >= 1 and now["pid"] != first[0]["pid"]:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    # Between restarts the captured client still reaches catalog; during one it is refused or reset.
    outcomes: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (0 not in outcomes or len(outcomes) == 1):
        outcomes.add(realkit.curl(node, "default/curl-pod", realkit.CATALOG)[0])
        time.sleep(0.2)
    assert 0 in outcomes, outcomes
    assert outcomes - {0}, outcomes
    # ui-0 reaches catalog in plaintext: no identity, so an L4 ALLOW for sa/ui denies it.
    pod_url = f"http://{record.pods['default/catalog-0']['ip']}:8080/catalog/tags"
    node.kubectl("apply", "-f", "-", stdin=labkit.CATALOG_L4_ALLOW_UI)
    deadline = time.monotonic() + 40
    code = 0
    while time.monotonic() < deadline:
        code, _ = realkit.curl(node, "default/ui-0", pod_url)
        if code in (52, 56):
            break
        time.sleep(0.5)
    assert code in (52, 56)


def test_ztunnel_down_on_the_node(started: tuple[RealNode, list[str]]) -> None:
    node, launched = started
    launched.append(node.state_dir.name)
    status = _up(node, "ztunnel-down")
    assert status["ztunnel"] == []
    assert _lab(node.state_dir, "real-status").returncode == 1  # unhealthy: no ztunnel runs
    # Captured pods keep their redirection to ztunnel's in-pod listener, which is gone: refused.
    assert realkit.curl(node, "default/curl-pod", realkit.CATALOG)[0] == 7
    # Inbound too: catalog's in-pod rules redirect the outside client's plaintext to ztunnel's
    # in-pod port, gone with ztunnel, so it is refused as well (measured: the node fails closed).
    record = node.load()
    assert record is not None
    pod_url = f"http://{record.pods['default/catalog-0']['ip']}:8080/catalog/tags"
    assert realkit.curl(node, "curl/curl-pod", pod_url) == (7, "")


def test_lab_up_is_the_real_data_plane_and_runs_the_active_audit_from_the_command_line(
    started: tuple[RealNode, list[str]],
) -> None:
    """``scripts/lab up`` (the default: the real ztunnel, as ``real-up --with-auditor``): the
    auditor's kubeconfig on stderr, the kubelet in ``status`` (data plane ``real``), and ``auditor
    check --active`` with it PASSes the four probes on the real ztunnel; ``real-down`` (the
    fixture) leaves no kubelet and no probe pod process behind."""
    node, launched = started
    launched.append(node.state_dir.name)  # the kubelet's argv names the state dir
    policy = f"--manifests={labkit.RETAIL / '20-mesh-policy.yaml'}"
    started_at = time.monotonic()
    up = _lab(node.state_dir, "up", *MANIFESTS, policy)
    print(f"\nscripts/lab up (real data plane, with the auditor): {time.monotonic() - started_at:.1f} s")
    assert up.returncode == 0, up.stderr[-3000:]
    assert up.stdout.strip().splitlines()[-1] == str(node.kubeconfig)
    assert f"lab: the auditor's ServiceAccount kubeconfig: {node.auditor_kubeconfig}" in up.stderr, up.stderr
    status = json.loads(_lab(node.state_dir, "status").stdout)
    assert status["data_plane"] == "real"
    (kubelet,) = status["kubelet"]
    assert kubelet["running"] is True, status["kubelet"]
    assert status["processes"]["kubelet"]["pid"] == kubelet["pid"]
    assert status["auditor_kubeconfig"] == str(node.auditor_kubeconfig)
    # ztunnel learns the waypoint binding from istiod after the pods settled: wait as a user would.
    realkit.wait_waypoint(node, "x-auth-token: internal-retail-token")
    command = [sys.executable, "-m", "auditor.cli", "check", "--kubeconfig", str(node.auditor_kubeconfig)]
    command += ["--rules", str(labkit.RETAIL_RULES), "--active", "--output", "json"]
    started_at = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=240, env={**os.environ, **labkit.AUDIT_ENV}
    )
    print(f"auditor check --active against scripts/lab up: {time.monotonic() - started_at:.1f} s")
    document = json.loads(result.stdout)
    assert labkit.probe_statuses(document) == dict.fromkeys(labkit.PROBE_CHECKS, "pass"), result.stdout[-4000:]
    assert result.returncode == 0, result.stderr[-3000:]


def test_real_up_without_auditor_starts_no_kubelet(started: tuple[RealNode, list[str]]) -> None:
    """The default stays as it was: no kubelet, no auditor kubeconfig."""
    node, launched = started
    launched.append(node.state_dir.name)
    status = _up(node)
    assert status["kubelet"] == []
    assert status["auditor_kubeconfig"] is None
