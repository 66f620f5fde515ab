"""The real data plane (#12): ztunnel built from source, handed pods over ZDS, fed and certified by istiod.

One node (``testrigs.lab.realnode``): the API server, the real istiod and the workload stand-in;
the retail store and the walkthrough's two curl pods get lab namespaces with the addresses the
stand-in gave them; the CNI-agent stand-in hands the ambient ones to the real ztunnel. No part
of the project's ambient model decides anything between the API server and the traffic. A
missing ztunnel build fails these tests (``scripts/controlplane build --ztunnel``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testrigs.lab.realnode import RealNode
from tests.lab import labkit, realkit

CAPTURED = realkit.CAPTURED
CATALOG_L4_ALLOW_UI = labkit.CATALOG_L4_ALLOW_UI
_curl = realkit.curl
_eventually = realkit.eventually


@pytest.fixture(scope="module")
def node() -> Iterator[RealNode]:
    the_node = realkit.started_node()
    try:
        yield the_node
    finally:
        realkit.stop_node(the_node)


def _catalog_ip(node: RealNode) -> str:
    record = node.load()
    assert record is not None
    return record.pods["default/catalog-0"]["ip"]


def test_status_lists_the_ztunnel_and_the_agent_holds_every_ambient_pod(node: RealNode) -> None:
    status = node.status()
    assert [z["running"] for z in status["ztunnel"]] == [True]
    record = node.load()
    assert record is not None
    acked = set(status["agent"]["acked"])
    assert {record.pods[key]["uid"] for key in CAPTURED} == acked  # curl/curl-pod (namespace not ambient) is not
    # The command line says the same: scripts/lab real-status lists the ztunnel process, exit 0.
    script = Path(__file__).resolve().parents[2] / "scripts" / "lab"
    result = subprocess.run(
        [str(script), f"--state-dir={node.state_dir}", "real-status"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["ztunnel"]
    assert [(z["node"], z["pid"], z["running"]) for z in listed] == [
        ("malab-node-1", record.procs["ztunnel"].pid, True)
    ]
    assert listed[0]["rss_bytes"] > 0


def test_ztunnel_holds_istiod_issued_certificates_for_its_pods(node: RealNode) -> None:
    deadline = time.monotonic() + 30
    identities: set[str] = set()
    while time.monotonic() < deadline:
        dump = node.config_dump()
        identities = {c.get("identity", "") for c in dump.get("certificates") or []}
        if "spiffe://cluster.local/ns/default/sa/catalog" in identities:
            break
        time.sleep(0.5)
    assert "spiffe://cluster.local/ns/default/sa/catalog" in identities, json.dumps(dump)[:2000]


def test_captured_client_reaches_catalog_through_ztunnel(node: RealNode) -> None:
    code, body = _curl(node, "default/curl-pod", "http://catalog.default/catalog/tags")
    assert (code, body) == (0, labkit.CATALOG_TAGS)


def test_outside_client_gets_a_reset_after_strict(node: RealNode) -> None:
    url = f"http://{_catalog_ip(node)}:8080/catalog/tags"
    assert _curl(node, "curl/curl-pod", url) == (0, labkit.CATALOG_TAGS)  # PERMISSIVE: plaintext accepted
    node.kubectl("apply", "-f", "-", stdin=labkit.STRICT)
    try:
        # The walkthrough's observation: curl exit 56 (connection reset), from the real ztunnel.
        assert _eventually(56, node, "curl/curl-pod", url) == 56
        assert _curl(node, "default/curl-pod", "http://catalog.default/catalog/tags")[0] == 0  # HBONE still works
    finally:
        node.kubectl("delete", "peerauthentication", "default", "--namespace=istio-system")


def test_l4_allow_ui_resets_other_callers(node: RealNode) -> None:
    node.kubectl("apply", "-f", "-", stdin=CATALOG_L4_ALLOW_UI)
    try:
        assert _eventually(56, node, "default/curl-pod", "http://catalog.default/catalog/tags") == 56
        assert _curl(node, "default/ui-0", "http://catalog.default/catalog/tags") == (0, labkit.CATALOG_TAGS)
    finally:
        node.kubectl("delete", "authorizationpolicy", "catalog", "--namespace=default")


def test_ztunnel_down_on_the_node_then_restarted(node: RealNode) -> None:
    """Fault ztunnel-down: captured pods' traffic still goes to :15001, where nothing listens any more."""
    url = "http://catalog.default/catalog/tags"
    node.stop_ztunnel()
    try:
        code, _ = _curl(node, "default/curl-pod", url)
        assert code == 7  # connection refused: the redirection stays, its listener died with ztunnel
        assert node.status()["ztunnel"] == []
    finally:
        node.start_ztunnel()
    # The agent sees a new connection and hands ztunnel the whole snapshot again (ZDS).
    node.wait_handed(CAPTURED)
    assert node.agent_status()["connections"] >= 2
    assert _eventually(0, node, "default/curl-pod", url) == 0


def test_pod_never_handed_to_ztunnel_loses_its_identity(node: RealNode) -> None:
    """Fault: ui-0 is labelled ambient (namespace default) but the agent never hands it over."""
    url = f"http://{_catalog_ip(node)}:8080/catalog/tags"
    node.kubectl("apply", "-f", "-", stdin=CATALOG_L4_ALLOW_UI)
    try:
        assert _eventually(0, node, "default/ui-0", url) == 0  # captured: mTLS as sa/ui, allowed
        node.sync_pods(withhold=frozenset({"default/ui-0"}))
        deadline = time.monotonic() + 30
        record = node.load()
        assert record is not None
        while record.pods["default/ui-0"]["uid"] in (node.agent_status().get("acked") or []):
            assert time.monotonic() < deadline, node.agent_status()
            time.sleep(0.2)
        # Plaintext now, so catalog's ztunnel sees no identity and the ALLOW for sa/ui denies it. The
        # real ztunnel closes this plaintext connection without a reply (curl 52, measured), where
        # the walkthrough's STRICT case resets (56): both are an L4 denial of an accepted connection.
        assert _curl(node, "default/ui-0", url)[0] in (52, 56)
    finally:
        node.sync_pods()
        node.kubectl("delete", "authorizationpolicy", "catalog", "--namespace=default")
    node.wait_handed(CAPTURED)
