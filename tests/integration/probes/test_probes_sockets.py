"""The probe's classification against bare loopback sockets: close, reset, silence, refusal.

These are the failure shapes Envoy does not produce on demand, above all the curl 52 / 56 race
of semantics §1.2: the same denial may reach the client as a clean close (FIN) or as a reset
(RST), and both must be l4-denied.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from probes.wire import Outcome, ProbeResult
from tests.integration.probes.probe_harness import (
    Behaviour,
    RawServer,
    banner_then_close,
    close_after_request,
    close_mid_body,
    malformed_head,
    never_answer,
    reset_after_request,
    run_requests,
)

pytestmark = pytest.mark.timeout(60)

RawServers = Callable[[Behaviour], RawServer]


def probe(url: str, timeout_s: float = 3) -> ProbeResult:
    return run_requests([{"id": "only", "url": url, "timeout_s": timeout_s}]).results[0]


def test_clean_close_without_reply_is_l4_denied(raw_server: RawServers) -> None:
    """FIN before any response (curl 52) surfaces as RemoteProtocolError and is l4-denied."""
    result = probe(raw_server(close_after_request).url())

    assert result.outcome is Outcome.L4_DENIED
    assert result.evidence.connect_ms is not None
    assert result.evidence.error is not None
    assert result.evidence.error.type == "RemoteProtocolError"
    assert result.evidence.error.message.startswith("Server disconnected without sending")


def test_reset_without_reply_is_l4_denied(raw_server: RawServers) -> None:
    """RST before any response (curl 56) surfaces as ReadError(ConnectionResetError)."""
    result = probe(raw_server(reset_after_request).url())

    assert result.outcome is Outcome.L4_DENIED
    assert result.evidence.connect_ms is not None
    error = result.evidence.error
    assert error is not None
    assert error.type == "ReadError"
    assert any(link.startswith("ConnectionResetError") for link in error.chain)


def test_port_without_listener_is_refused(closed_port_url: str) -> None:
    """Nothing accepted the SYN: refused, and no connect time (semantics §1.6)."""
    result = probe(closed_port_url)

    assert result.outcome is Outcome.REFUSED
    assert result.evidence.connect_ms is None
    assert result.evidence.error is not None
    assert any(link.startswith("ConnectionRefusedError") for link in result.evidence.error.chain)


def test_silent_server_is_timeout(raw_server: RawServers) -> None:
    """An accepted connection that never answers times out at the exchange's deadline (semantics §1.5)."""
    result = probe(raw_server(never_answer).url(), timeout_s=0.3)

    assert result.outcome is Outcome.TIMEOUT
    assert result.evidence.connect_ms is not None
    assert result.evidence.error is not None
    assert result.evidence.error.type == "TimeoutError"
    assert result.evidence.error.message == "no complete exchange within the 0.3 s deadline"
    assert result.evidence.total_ms is not None
    assert 300 <= result.evidence.total_ms < 1000


def test_bytes_that_never_form_a_head_are_not_a_denial(raw_server: RawServers) -> None:
    """A banner line and a close: something accepted the connection and spoke, so `other`.

    httpcore reports it exactly like an empty close; the sender counts the bytes received.
    """
    result = probe(raw_server(banner_then_close).url())

    assert result.outcome is Outcome.OTHER
    assert result.evidence.error is not None
    assert result.evidence.error.type == "RemoteProtocolError"
    assert result.evidence.error.chain[-1] == "not a denial: the peer sent 21 byte(s) first"


def test_malformed_response_head_is_other(raw_server: RawServers) -> None:
    """A complete head that is not HTTP is a protocol error, not a denial: `other`."""
    result = probe(raw_server(malformed_head).url())

    assert result.outcome is Outcome.OTHER
    assert result.evidence.error is not None
    assert result.evidence.error.type == "RemoteProtocolError"
    assert "illegal status line" in result.evidence.error.message


def test_body_that_breaks_after_the_head_is_other_with_status(raw_server: RawServers) -> None:
    """Headers arrived, the body did not: `other`, keeping the status and headers seen."""
    result = probe(raw_server(close_mid_body).url())

    assert result.outcome is Outcome.OTHER
    assert result.evidence.status == 200
    assert result.evidence.headers == {"server": "flaky"}
    assert result.evidence.first_byte_ms is not None
    assert result.evidence.error is not None
    assert result.evidence.error.type == "RemoteProtocolError"


def test_unresolvable_name_is_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name under .invalid fails resolution: dns-failure, not timeout.

    This machine's resolver is not on loopback and glibc forwards .invalid like any name, so
    the libc lookup is replaced by NXDOMAIN's answer; everything above it (asyncio, anyio,
    httpcore, httpx) is real. ``test_probes_cli`` runs the real resolver in an isolated network.
    """
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name not in {"127.0.0.1", "localhost"}:
            raise AssertionError(f"the test tried to resolve {name!r} off-host")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    result = probe("http://nonexistent.invalid/", timeout_s=1)

    assert result.outcome is Outcome.DNS_FAILURE
    assert result.evidence.connect_ms is None
    assert result.evidence.error is not None
    assert any(link.startswith("gaierror") for link in result.evidence.error.chain)
