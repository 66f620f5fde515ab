"""Fixtures for the probe classification tests: real Envoys and servers on loopback.

Every Envoy is session-scoped (one process per denial mode, started on first use) and stopped
at session teardown by ``envoys``. A missing Envoy binary fails the tests: the classification
contract is only proven against the real proxy, so it must never be skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tests.integration.probes.probe_harness import (
    BackendApp,
    Behaviour,
    Config,
    EnvoyMissingError,
    EnvoyProcess,
    RawServer,
    allowed_config,
    closed_port,
    dead_upstream_config,
    envoy_binary,
    l7_rbac_config,
    make_tls_files,
    mtls_config,
    network_rbac_config,
    start_envoy,
)

StartEnvoy = Callable[[str, Config], EnvoyProcess]


@pytest.fixture(scope="session")
def envoys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartEnvoy]:
    """Start Envoys on demand; stop every one of them when the session ends."""
    try:
        envoy_binary()
    except EnvoyMissingError as exc:
        pytest.fail(f"the Envoy binary is required for these tests: {exc}")
    workdir = tmp_path_factory.mktemp("envoy")
    started: list[EnvoyProcess] = []

    def start(name: str, bootstrap: Config) -> EnvoyProcess:
        envoy = start_envoy(name, bootstrap, workdir)
        started.append(envoy)
        return envoy

    yield start
    for envoy in started:
        envoy.stop()


@pytest.fixture(scope="session")
def backend() -> Iterator[BackendApp]:
    """The application every Envoy proxies to."""
    with BackendApp() as app:
        yield app


@pytest.fixture(scope="session")
def allowed_envoy(envoys: StartEnvoy, backend: BackendApp) -> EnvoyProcess:
    return envoys("allowed", allowed_config(backend.port))


@pytest.fixture(scope="session")
def l7_rbac_envoy(envoys: StartEnvoy, backend: BackendApp) -> EnvoyProcess:
    return envoys("l7-rbac", l7_rbac_config(backend.port))


@pytest.fixture(scope="session")
def mtls_envoy(envoys: StartEnvoy, backend: BackendApp, tmp_path_factory: pytest.TempPathFactory) -> EnvoyProcess:
    tls = make_tls_files(tmp_path_factory.mktemp("tls"))
    return envoys("mtls", mtls_config(backend.port, tls))


@pytest.fixture(scope="session")
def network_rbac_envoy(envoys: StartEnvoy, backend: BackendApp) -> EnvoyProcess:
    return envoys("network-rbac", network_rbac_config(backend.port))


@pytest.fixture(scope="session")
def dead_upstream_envoy(envoys: StartEnvoy) -> EnvoyProcess:
    return envoys("dead-upstream", dead_upstream_config(closed_port()))


@pytest.fixture
def raw_server() -> Iterator[Callable[[Behaviour], RawServer]]:
    """Start bare TCP servers with a given behaviour; stop them after the test."""
    with ExitStack() as stack:
        yield lambda behaviour: stack.enter_context(RawServer(behaviour))


@pytest.fixture
def closed_port_url() -> str:
    return f"http://127.0.0.1:{closed_port()}/"
