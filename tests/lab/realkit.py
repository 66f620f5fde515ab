"""Helpers of the real-ztunnel tests (``test_real_ztunnel``, ``test_real_waypoint``, ...): one node per module.

``started_node`` brings a ``RealNode`` up in a fresh state directory with the retail store and
the walkthrough's curl pods, and waits until ztunnel acked every ambient pod; ``audited_node``
adds a mesh policy, the auditor, the control Role and the probe kubelet (``test_real_bypass``);
``stop_node`` takes it down and checks that nothing of it survives (processes, namespaces,
/etc/netns, state dir).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import pytest

from testrigs.devtools import ztunnel
from testrigs.lab import netns
from testrigs.lab.lab import LabError, check_host
from testrigs.lab.realnode import NodeRecord, RealNode
from tests.lab import labkit

# Namespace default is labelled ambient: istio-cni redirects every pod in it; namespace curl is not.
CAPTURED = {f"default/{name}" for name in ("catalog-0", "ui-0", "curl-pod", "cart-carts-0", "checkout-0", "orders-0")}
SETTLE_TIMEOUT_S = 90.0
CATALOG = "http://catalog.default/catalog/tags"


def started_node() -> RealNode:
    """A node with the base manifests applied and settled; fails (never skips) without the build."""
    try:
        check_host()
    except LabError as error:
        pytest.fail(f"the lab cannot run on this machine: {error}")
    if not ztunnel.is_built():
        pytest.fail("ztunnel is not built: run 'scripts/controlplane build --ztunnel' (a missing binary is a failure)")
    node = RealNode(Path(f"/tmp/malab-real-{secrets.token_hex(3)}"))
    started = time.monotonic()
    try:
        node.up()
        node.kubectl("apply", "-f", "-", stdin="\n---\n".join(p.read_text() for p in labkit.BASE_MANIFESTS))
        settle(node)
    except BaseException:
        stop_node(node)
        raise
    print(f"real-ztunnel node up and settled in {time.monotonic() - started:.1f} s")
    return node


def settle(node: RealNode) -> None:
    """Every pod addressed, in its namespace, and the ambient ones acked by ztunnel."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        pods = node.sync_pods()
        if set(pods) >= CAPTURED and "curl/curl-pod" in pods:
            break
        time.sleep(0.5)
    node.wait_handed(CAPTURED, timeout=SETTLE_TIMEOUT_S)


def stop_node(node: RealNode) -> None:
    leftover = node.load()
    node.down()
    if leftover is not None:
        assert_gone(node, leftover)


def assert_gone(node: RealNode, record: NodeRecord) -> None:
    prefix = f"{netns.PREFIX}{record.lab_id}-"
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in listing, listing
    assert not any(path.name.startswith(prefix) for path in netns.ETC_NETNS.glob("*"))
    assert [name for name, proc in record.procs.items() if proc.running()] == []
    assert not node.state_dir.exists()


def curl(node: RealNode, pod: str, url: str, *headers: str) -> tuple[int, str]:
    """curl -s as in the walkthrough, from inside the pod: (exit code, stdout)."""
    result = node.exec(pod, ["curl", "-s", "--max-time", "10", *(f"-H{h}" for h in headers), url], timeout=20)
    return result.returncode, result.stdout


def eventually(expected: int, node: RealNode, pod: str, url: str, timeout: float = 30.0) -> int:
    """Poll curl's exit code until it is ``expected`` (istiod pushes to ztunnel within seconds)."""
    deadline = time.monotonic() + timeout
    code = -1
    while time.monotonic() < deadline:
        code, _ = curl(node, pod, url)
        if code == expected:
            return code
        time.sleep(0.5)
    return code


def eventually_body(expected: str, node: RealNode, pod: str, url: str, *headers: str, timeout: float = 30.0) -> str:
    """Poll until curl prints ``expected``; return the last output (for the assertion message)."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        _, body = curl(node, pod, url, *headers)
        if body == expected:
            return body
        time.sleep(0.5)
    return body


def wait_waypoint(node: RealNode, *headers: str) -> None:
    """Until the waypoint's Envoy runs and ztunnel sends ui's Service traffic through it (istiod's binding).

    ``headers`` go with ui's request (``x-auth-token: ...`` under the retail store's L7 policy).
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not any(w["running"] for w in node.status()["waypoints"]):
        assert time.monotonic() < deadline, node.status()
        node.sync_pods()
        time.sleep(0.5)
    # ztunnel learns the binding from istiod: the first request through the waypoint is the proof.
    body = eventually_body(labkit.CATALOG_TAGS, node, "default/ui-0", CATALOG, *headers, timeout=60)
    assert body == labkit.CATALOG_TAGS, body


def audited_node(mesh_policy: Path, *headers: str) -> RealNode:
    """``started_node`` with ``mesh_policy`` applied, its waypoint serving (``headers`` with ui's request),
    the auditor's ``deploy/`` and the control Role applied, and the node's kubelet running probe pods."""
    node = started_node()
    try:
        started = time.monotonic()
        node.kubectl("apply", "-f", str(mesh_policy))
        wait_waypoint(node, *headers)
        node.deploy_auditor()
        node.kubectl("apply", "-f", str(labkit.CONTROL_ROLE))
        labkit.wait_until_auditor_may_create_pods(node.kubectl)
        node.start_kubelet()
    except BaseException:
        stop_node(node)
        raise
    print(f"\nmesh policy, waypoint, auditor and kubelet: {time.monotonic() - started:.1f} s")
    return node
