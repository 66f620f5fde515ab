"""Fixtures for the lab tests: one lab for the session, reset to a known policy set per test.

``lab`` starts the real data plane (API server, namespaces, apps, Envoys) once, from the retail
store manifests without their mesh policies plus the walkthrough's two curl pods, with no
translator daemon: tests call ``Lab.reconcile`` after each change so every assertion sees a
converged data plane. ``mesh`` replaces every PeerAuthentication, AuthorizationPolicy and
Gateway with the given YAML and reconciles. The session ends with ``down`` and a check that
nothing of the lab survives. Tests need root, ip, iptables and Envoy: a missing tool fails them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testrigs.lab.lab import Lab, LabError, check_host
from tests.lab import labkit
from tests.lab.labkit import Probe, SetMesh


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The session's lab, torn down (and checked to be gone) at the end."""
    try:
        check_host()
    except LabError as error:
        pytest.fail(f"the lab cannot run on this machine: {error}")
    the_lab = Lab(Path(f"/tmp/malab-test-{secrets.token_hex(3)}"))
    the_lab.up(labkit.BASE_MANIFESTS, translator=False)
    record = the_lab.load()
    assert record is not None
    try:
        yield the_lab
    finally:
        the_lab.down()
        labkit.assert_gone(the_lab.state_dir, record)


@pytest.fixture
def mesh(lab: Lab) -> Iterator[SetMesh]:
    """Replace the mesh policies and waypoints with the given YAML documents; faults reset after."""

    def set_mesh(*documents: str, faults: tuple[str, ...] = ()) -> None:
        labkit.replace_mesh_objects(lab, "\n---\n".join(documents))
        lab.set_faults(faults)
        lab.reconcile()

    yield set_mesh
    lab.set_faults(())


@pytest.fixture
def probe(lab: Lab) -> Probe:
    """Send one request from a pod (``ns/name``) and return its probe result."""

    def send(pod: str, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return lab.probe(pod, [{"id": "r", "url": url, "headers": headers or {}}])["r"]

    return send


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say again at the end what scripts/test left out, and why (never silently)."""
    not_run = os.environ.get("MESH_AUDITOR_NOT_RUN")
    if not_run:
        terminalreporter.write_line(f"NOT RUN: {not_run}", yellow=True, bold=True)
