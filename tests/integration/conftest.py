"""Fixtures for integration tests against the real etcd + kube-apiserver control plane.

``kube_api`` (session) starts the control plane through ``testrigs.devtools.controlplane`` in a
state dir of its own, or reuses the one whose kubeconfig path is in ``KUBECONFIG_TEST``; it
fails, never skips, when the binaries cannot be built or the server does not become ready.
``kube_namespace`` gives each test a fresh namespace and empties it afterwards. Mark tests that
use them ``@pytest.mark.kube``. ``istio_api`` (session) is a second control plane with istiod
running against it (``controlplane up --istio``): istiod writes the status of Gateways, Services
and AuthorizationPolicies there, so tests that apply objects with a ``status`` use ``kube_api``.
``ISTIO_STATE_TEST=<state dir of a running controlplane up --istio>`` reuses that one instead. See docs/controlplane.md for what the control plane lacks (no
controller-manager: no ``default`` ServiceAccount, namespaces never finish deleting).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from testrigs.devtools import controlplane, istio
from testrigs.devtools.controlplane import KubeAPI
from testrigs.devtools.istio import IstioAPI


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """The control plane for this session: reused from KUBECONFIG_TEST or started here."""
    try:
        binaries = controlplane.build()
    except controlplane.ControlPlaneError as error:
        pytest.fail(f"cannot build the test control plane: {error}")
    reuse = os.environ.get("KUBECONFIG_TEST")
    if reuse:
        yield KubeAPI(Path(reuse), binaries.kubectl)
        return
    state_dir = tmp_path_factory.getbasetemp() / "controlplane"
    try:
        kubeconfig = controlplane.up(state_dir)
    except controlplane.ControlPlaneError as error:
        pytest.fail(f"the test control plane did not come up: {error}")
    try:
        yield KubeAPI(kubeconfig, binaries.kubectl)
    finally:
        controlplane.down(state_dir)  # stops only what this fixture started


@pytest.fixture(scope="session")
def istio_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IstioAPI]:
    """An API server with istiod (pinned istio.io/istio) running against it, started here."""
    try:
        binaries = controlplane.build()
        istio_binaries = istio.build()
    except controlplane.ControlPlaneError as error:
        pytest.fail(f"cannot build the test control plane with istiod: {error}")
    reuse = os.environ.get("ISTIO_STATE_TEST")  # the --state-dir of a running `up --istio`
    if reuse:
        state = Path(reuse)
        ports = controlplane.istiod_ports(state)
        if not ports:
            pytest.fail(f"ISTIO_STATE_TEST={reuse} holds no control plane with istiod")
        yield IstioAPI(state / "kubeconfig", binaries.kubectl, istio_binaries.istioctl, ports)
        return
    state_dir = tmp_path_factory.getbasetemp() / "controlplane-istio"
    try:
        kubeconfig = controlplane.up(state_dir, istio=True)
    except controlplane.ControlPlaneError as error:
        pytest.fail(f"the test control plane with istiod did not come up: {error}")
    try:
        yield IstioAPI(kubeconfig, binaries.kubectl, istio_binaries.istioctl, controlplane.istiod_ports(state_dir))
    finally:
        controlplane.down(state_dir)


@pytest.fixture
def kube_namespace(kube_api: KubeAPI, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace, named after the test plus a random suffix, emptied after the test."""
    yield from _fresh_namespace(kube_api, request)


@pytest.fixture
def istio_namespace(istio_api: IstioAPI, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace on the control plane with istiod, emptied after the test."""
    yield from _fresh_namespace(istio_api, request)


def _fresh_namespace(kube_api: KubeAPI, request: pytest.FixtureRequest) -> Iterator[str]:
    # Without the namespace controller a deleted namespace stays Terminating for ever, so a name
    # is never used twice.
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:8]}"
    with kube_api.new_client() as api:
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        kube_api.empty_namespace(name)
