"""Fixtures for the probe-pod tests: deploy/ installed, the auditor's own token, a stand-in kubelet,
and real Envoys on loopback playing the mesh's enforcement points.

- ``deployed``: deploy/namespaces, serviceaccounts, rbac and probe-guard, applied to the session's
  real API server; ``control_role``: the opt-in control Role for ``default``, for one module only.
- ``auditor_kubeconfig``: authenticates with a real ServiceAccount token of
  ``mesh-auditor/mesh-auditor`` (TokenRequest), so RBAC and probe-guard run as in a cluster.
- ``executor``: ``testrigs.devtools.podexecutor.PodExecutor`` running probe pods as local
  processes; images named ``UNPULLABLE`` never start.
- ``mesh``: one Envoy per behaviour a probe identity can meet (semantics §1), in front of the
  stdlib backend of ``tests/integration/probes/probe_harness.py``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from testrigs.devtools.controlplane import ControlPlaneError, KubeAPI
from testrigs.devtools.podexecutor import PodExecutor
from tests.cases import ROOT
from tests.integration.probes.probe_harness import (
    AUTH_HEADER,
    BackendApp,
    Config,
    EnvoyMissingError,
    EnvoyProcess,
    allowed_config,
    envoy_binary,
    l7_rbac_config,
    network_rbac_config,
    start_envoy,
)

DEPLOY = ROOT / "deploy"
AUDITOR = "system:serviceaccount:mesh-auditor:mesh-auditor"
UNPULLABLE = "registry.invalid/mesh-auditor:missing"


@pytest.fixture(scope="session")
def deployed(kube_api: KubeAPI) -> KubeAPI:
    for name in ("namespaces.yaml", "serviceaccounts.yaml", "rbac.yaml", "probe-guard.yaml"):
        kube_api.apply(DEPLOY / name)
    return kube_api


@pytest.fixture(scope="module")
def control_role(deployed: KubeAPI) -> Iterator[KubeAPI]:
    """The opt-in control Role for `default`, removed afterwards: other tests prove its absence."""
    opt_in = DEPLOY / "control-probes-default.yaml"
    deployed.apply(opt_in)
    _wait_for_pod_creation(deployed, allowed=True)
    try:
        yield deployed
    finally:
        deployed.kubectl("delete", f"--filename={opt_in}", "--ignore-not-found")
        _wait_for_pod_creation(deployed, allowed=False)


def _wait_for_pod_creation(kube: KubeAPI, *, allowed: bool) -> None:
    """RBAC changes reach the authorizer through an informer: wait until this one has."""
    for _ in range(100):
        try:
            kube.kubectl("auth", "can-i", "create", "pods", "--namespace=default", f"--as={AUDITOR}")
            now = True
        except ControlPlaneError:  # kubectl exits 1 for "no"
            now = False
        if now is allowed:
            return
        time.sleep(0.1)
    pytest.fail(f"the control Role's change (allowed={allowed}) never took effect")


@pytest.fixture(scope="session")
def auditor_kubeconfig(deployed: KubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig that authenticates as the auditor's ServiceAccount (as tests/integration/test_rbac.py)."""
    token = deployed.kubectl("create", "token", "mesh-auditor", "--namespace=mesh-auditor", "--duration=2h").strip()
    config = copy.deepcopy(yaml.safe_load(deployed.kubeconfig.read_text(encoding="utf-8")))
    config["users"] = [{"name": "mesh-auditor", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "mesh-auditor"
    path = tmp_path_factory.mktemp("auditor-sa") / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def executor(deployed: KubeAPI) -> Iterator[PodExecutor]:
    with deployed.new_client() as api, PodExecutor(api, unpullable=frozenset({UNPULLABLE})) as running:
        yield running


@dataclass(frozen=True)
class Mesh:
    """Loopback stand-ins for what each identity meets at a Service (semantics §1)."""

    l4_deny: EnvoyProcess  # ztunnel refusing the connection: FIN, no HTTP (§1.1, §1.2)
    l7_deny_all: EnvoyProcess  # a waypoint whose allow-list admits nobody we send: 403 RBAC (§1.3)
    waypoint: EnvoyProcess  # the walkthrough's waypoint: the token header required (§7)
    plaintext_open: EnvoyProcess  # PERMISSIVE: plaintext answered 200 (drift)

    def base(self, envoy: EnvoyProcess) -> str:
        return envoy.url("").rstrip("/")


def _deny_everyone(bootstrap: Config) -> Config:
    """The token policy, but with a value no probe sends: every request is refused at L7."""
    text = yaml.safe_dump(bootstrap).replace("internal-retail-token", "a-value-nobody-sends")
    assert AUTH_HEADER in text
    loaded: Config = yaml.safe_load(text)
    return loaded


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    try:
        envoy_binary()
    except EnvoyMissingError as error:
        pytest.fail(f"the Envoy binary is required for these tests: {error}")
    workdir = tmp_path_factory.mktemp("mesh-envoys")
    started: list[EnvoyProcess] = []

    def start(name: str, bootstrap: Config) -> EnvoyProcess:
        started.append(start_envoy(name, bootstrap, workdir))
        return started[-1]

    with BackendApp() as app:
        try:
            yield Mesh(
                l4_deny=start("l4-deny", network_rbac_config(app.port)),
                l7_deny_all=start("l7-deny-all", _deny_everyone(l7_rbac_config(app.port))),
                waypoint=start("waypoint", l7_rbac_config(app.port)),
                plaintext_open=start("plaintext-open", allowed_config(app.port)),
            )
        finally:
            for envoy in started:
                envoy.stop()
