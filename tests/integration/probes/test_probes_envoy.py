"""The probe's classification against real Envoy, one bootstrap per denial mode.

Each test sends through ``probes.sender.run_plan`` exactly as the probe pod does and asserts
which input produced which outcome, plus the evidence an operator would rely on. Failures that
Envoy does not produce on demand (reset, silence, refusal, DNS) are in ``test_probes_sockets``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from probes.wire import Outcome, ProbeResult
from tests.integration.probes.probe_harness import (
    AUTH_HEADER,
    AUTH_TOKEN,
    MARKER_HEADER,
    Behaviour,
    EnvoyProcess,
    RawServer,
    reset_after_request,
    run_requests,
)

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]

UPSTREAM_TIME = "x-envoy-upstream-service-time"
TOKEN = {AUTH_HEADER: AUTH_TOKEN}


def probe(url: str, headers: dict[str, str] | None = None) -> ProbeResult:
    return run_requests([{"id": "only", "url": url, "headers": headers or {}}]).results[0]


def test_allowed_through_waypoint_like_envoy(allowed_envoy: EnvoyProcess) -> None:
    """A proxied 200 is allowed, with Envoy's server, upstream-time and marker headers."""
    result = probe(allowed_envoy.url("/ok"))

    assert result.outcome is Outcome.ALLOWED
    evidence = result.evidence
    assert evidence.status == 200
    assert evidence.headers["server"] == "istio-envoy"
    assert int(evidence.headers[UPSTREAM_TIME]) >= 0
    assert evidence.headers[MARKER_HEADER] == "test-waypoint"
    assert evidence.headers["content-type"] == "text/plain"
    assert evidence.body_prefix == "ok from the app"
    assert evidence.error is None
    assert evidence.connect_ms is not None
    assert evidence.first_byte_ms is not None
    assert evidence.total_ms is not None
    assert evidence.connect_ms <= evidence.first_byte_ms <= evidence.total_ms


def test_redirect_is_allowed_and_not_followed(allowed_envoy: EnvoyProcess) -> None:
    """A 302 counts as allowed as it stands; following it would probe a different request."""
    result = probe(allowed_envoy.url("/moved"))

    assert (result.outcome, result.evidence.status) == (Outcome.ALLOWED, 302)


def test_long_body_keeps_only_a_prefix(allowed_envoy: EnvoyProcess) -> None:
    """Evidence keeps the first 256 bytes of a long body."""
    result = probe(allowed_envoy.url("/large"))

    assert result.outcome is Outcome.ALLOWED
    assert result.evidence.body_prefix == "x" * 256


def test_unexpected_status_through_envoy_is_other(allowed_envoy: EnvoyProcess) -> None:
    """A status that is neither success, denial nor upstream failure is `other`."""
    result = probe(allowed_envoy.url("/teapot"))

    assert (result.outcome, result.evidence.status) == (Outcome.OTHER, 418)


def test_every_request_opens_its_own_connection(allowed_envoy: EnvoyProcess) -> None:
    """Three requests make three downstream connections: no pooling (semantics §1.8)."""
    counter = "http.probe_test.downstream_cx_total"
    before = allowed_envoy.counter(counter)

    result = run_requests([{"id": str(i), "url": allowed_envoy.url("/ok")} for i in range(3)])

    assert [r.outcome for r in result.results] == [Outcome.ALLOWED] * 3
    assert allowed_envoy.counter(counter) - before == 3


def test_rbac_filter_denial_is_l7_denied(l7_rbac_envoy: EnvoyProcess) -> None:
    """Envoy's RBAC local reply: 403, exact body, no upstream time (semantics §1.3)."""
    result = probe(l7_rbac_envoy.url("/ok"))

    assert result.outcome is Outcome.L7_DENIED
    evidence = result.evidence
    assert evidence.status == 403
    assert evidence.body_prefix == "RBAC: access denied"
    assert evidence.headers["server"] == "istio-envoy"
    assert evidence.headers["content-type"] == "text/plain"
    assert UPSTREAM_TIME not in evidence.headers
    # Envoy adds the route's response headers to its own local replies too, so the marker
    # shows that this 403 came from the proxy carrying the route.
    assert evidence.headers[MARKER_HEADER] == "test-waypoint"


def test_rbac_filter_admits_the_token_holder(l7_rbac_envoy: EnvoyProcess) -> None:
    """The control request for the denial above passes the same Envoy."""
    result = probe(l7_rbac_envoy.url("/ok"), headers=TOKEN)

    assert (result.outcome, result.evidence.status) == (Outcome.ALLOWED, 200)
    assert UPSTREAM_TIME in result.evidence.headers


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/app-forbidden", 403, "the app says no"),
        ("/app-unauthorized", 401, "log in first"),
        ("/rbac-lookalike", 403, "RBAC: access denied"),
    ],
)
def test_application_denial_through_envoy_is_app_denied(
    l7_rbac_envoy: EnvoyProcess, path: str, status: int, body: str
) -> None:
    """The app's own 401/403 is app-denied, even with Envoy's exact RBAC body."""
    result = probe(l7_rbac_envoy.url(path), headers=TOKEN)

    assert result.outcome is Outcome.APP_DENIED
    assert (result.evidence.status, result.evidence.body_prefix) == (status, body)
    assert UPSTREAM_TIME in result.evidence.headers


def test_plaintext_to_mtls_listener_is_l4_denied(mtls_envoy: EnvoyProcess) -> None:
    """STRICT's shape: TCP accepted, then closed without any HTTP response (semantics §1.2)."""
    result = probe(mtls_envoy.url("/ok"))

    assert result.outcome is Outcome.L4_DENIED
    evidence = result.evidence
    assert evidence.status is None
    assert evidence.connect_ms is not None  # the handshake completed: not `refused`
    assert evidence.error is not None
    assert evidence.error.type in {"RemoteProtocolError", "ReadError", "WriteError"}


def test_network_rbac_denial_is_l4_denied(network_rbac_envoy: EnvoyProcess) -> None:
    """An L4 policy closes the accepted connection, as ztunnel does (semantics §1.1)."""
    result = probe(network_rbac_envoy.url("/ok"))

    assert result.outcome is Outcome.L4_DENIED
    assert result.evidence.status is None
    assert result.evidence.connect_ms is not None
    assert result.evidence.error is not None


def test_dead_upstream_is_upstream_error(dead_upstream_envoy: EnvoyProcess) -> None:
    """Envoy's own 503 when its upstream refuses is upstream-error (semantics §1.4)."""
    result = probe(dead_upstream_envoy.url("/ok"))

    assert result.outcome is Outcome.UPSTREAM_ERROR
    assert result.evidence.status == 503
    assert result.evidence.body_prefix is not None
    assert result.evidence.body_prefix.startswith("upstream connect error")
    assert result.evidence.headers["server"] == "envoy"


def test_mixed_plan_keeps_each_outcome_with_its_request(
    allowed_envoy: EnvoyProcess,
    l7_rbac_envoy: EnvoyProcess,
    network_rbac_envoy: EnvoyProcess,
    raw_server: Callable[[Behaviour], RawServer],
    closed_port_url: str,
) -> None:
    """Concurrent requests to different denial modes come back under their own ids, in order."""
    targets = {
        "allowed": allowed_envoy.url("/ok"),
        "l7": l7_rbac_envoy.url("/ok"),
        "l4-policy": network_rbac_envoy.url("/ok"),
        "reset": raw_server(reset_after_request).url(),
        "refused": closed_port_url,
    }

    result = run_requests([{"id": key, "url": url} for key, url in targets.items()])

    assert {r.id: r.outcome for r in result.results} == {
        "allowed": Outcome.ALLOWED,
        "l7": Outcome.L7_DENIED,
        "l4-policy": Outcome.L4_DENIED,
        "reset": Outcome.L4_DENIED,
        "refused": Outcome.REFUSED,
    }
    assert [r.id for r in result.results] == list(targets)
