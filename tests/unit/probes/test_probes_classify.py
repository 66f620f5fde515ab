"""Outcome decisions of ``probes.classify`` for responses and for httpx's exception chains.

The exception chains are built the way httpx, httpcore and anyio build them (``raise X from Y``
two or three levels deep, exception groups from anyio's happy eyeballs), so each test says which
observation yields which outcome.
"""

from __future__ import annotations

import itertools
import socket
import ssl

import httpx
import pytest

from probes.classify import (
    ResponseLimitError,
    ResponseSummary,
    Timings,
    classify_exception,
    classify_response,
    exception_chain,
)
from probes.wire import Outcome

RBAC_BODY = b"RBAC: access denied"
TIMINGS = Timings(connect_ms=1.5, first_byte_ms=3.0, total_ms=4.0)


def chained(*errors: BaseException) -> BaseException:
    """Make each error the ``__cause__`` of the one before it, as ``raise X from Y`` does."""
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


def response(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    complete: bool = True,
) -> ResponseSummary:
    return ResponseSummary(status, headers or {}, body, complete)


WAYPOINT = {"server": "istio-envoy", "content-type": "text/plain"}
VIA_ENVOY = {"server": "istio-envoy", "x-envoy-upstream-service-time": "2"}


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param(response(200), Outcome.ALLOWED, id="200"),
        pytest.param(response(204), Outcome.ALLOWED, id="204"),
        pytest.param(response(302, headers={"location": "/"}), Outcome.ALLOWED, id="302"),
        pytest.param(response(403, RBAC_BODY, WAYPOINT), Outcome.L7_DENIED, id="waypoint-rbac"),
        pytest.param(response(403, RBAC_BODY), Outcome.L7_DENIED, id="rbac-no-server-header"),
        pytest.param(response(403, RBAC_BODY, VIA_ENVOY), Outcome.APP_DENIED, id="app-rbac-body"),
        pytest.param(
            response(403, RBAC_BODY, WAYPOINT, complete=False),
            Outcome.APP_DENIED,
            id="rbac-body-prefix-of-longer",
        ),
        pytest.param(response(403, RBAC_BODY + b"\n"), Outcome.APP_DENIED, id="rbac-body-newline"),
        pytest.param(response(403, b"forbidden", VIA_ENVOY), Outcome.APP_DENIED, id="app-403"),
        pytest.param(response(401, RBAC_BODY), Outcome.APP_DENIED, id="401-rbac-body"),
        pytest.param(response(401, b"log in"), Outcome.APP_DENIED, id="app-401"),
        pytest.param(response(502), Outcome.UPSTREAM_ERROR, id="502"),
        pytest.param(response(503, b"upstream connect error"), Outcome.UPSTREAM_ERROR, id="503"),
        pytest.param(response(504), Outcome.UPSTREAM_ERROR, id="504"),
        pytest.param(response(404), Outcome.OTHER, id="404"),
        pytest.param(response(500), Outcome.OTHER, id="500"),
        pytest.param(response(101), Outcome.OTHER, id="101"),
    ],
)
def test_response_outcome(observed: ResponseSummary, expected: Outcome) -> None:
    """Each response shape maps to one outcome (semantics §1.3, §1.4)."""
    assert classify_response(observed, TIMINGS).outcome is expected


def test_response_evidence_keeps_status_timings_and_only_evidence_headers() -> None:
    """Evidence has the status, timings, the chosen headers and the decoded body prefix."""
    headers = {
        "server": "istio-envoy",
        "x-envoy-upstream-service-time": "7",
        "content-type": "text/html",
        "x-waypoint-marker": "catalog-waypoint",
        "set-cookie": "secret=1",
    }

    evidence = classify_response(response(200, b"<html>", headers), TIMINGS, "X-Waypoint-Marker").evidence

    assert evidence.status == 200
    assert (evidence.connect_ms, evidence.first_byte_ms, evidence.total_ms) == (1.5, 3.0, 4.0)
    assert evidence.headers == {
        "server": "istio-envoy",
        "x-envoy-upstream-service-time": "7",
        "content-type": "text/html",
        "x-waypoint-marker": "catalog-waypoint",
    }
    assert evidence.body_prefix == "<html>"
    assert evidence.error is None


def test_body_prefix_is_decoded_leniently_and_capped() -> None:
    """Bytes that are not UTF-8 become replacement characters; at most 256 bytes are kept."""
    evidence = classify_response(response(200, b"\xff\xfeok" + b"a" * 400), TIMINGS).evidence

    assert evidence.body_prefix == "\ufffd\ufffdok" + "a" * 252


def refused() -> BaseException:
    return chained(
        httpx.ConnectError("All connection attempts failed"),
        OSError("All connection attempts failed"),
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)"),
    )


def refused_among_several() -> BaseException:
    attempts = [OSError(101, "Network is unreachable"), ConnectionRefusedError(111, "refused")]
    return chained(
        httpx.ConnectError("All connection attempts failed"),
        OSError("All connection attempts failed"),
        ExceptionGroup("multiple connection attempts failed", attempts),
    )


def dns_in_context() -> BaseException:
    error = httpx.ConnectError("[Errno -2] Name or service not known")
    error.__context__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        pytest.param(refused(), Outcome.REFUSED, id="connect-refused"),
        pytest.param(refused_among_several(), Outcome.REFUSED, id="connect-refused-in-group"),
        pytest.param(
            chained(httpx.ConnectError("x"), socket.gaierror(-2, "Name or service not known")),
            Outcome.DNS_FAILURE,
            id="connect-gaierror",
        ),
        pytest.param(
            chained(httpx.ConnectError("x"), socket.gaierror(-3, "Temporary failure")),
            Outcome.DNS_FAILURE,
            id="connect-gaierror-again",
        ),
        pytest.param(dns_in_context(), Outcome.DNS_FAILURE, id="connect-gaierror-context"),
        pytest.param(
            chained(httpx.ConnectError("x"), ConnectionResetError(104, "reset")),
            Outcome.L4_DENIED,
            id="connect-reset-during-tls",
        ),
        pytest.param(
            chained(httpx.ConnectError("x"), ssl.SSLCertVerificationError("bad cert")),
            Outcome.OTHER,
            id="connect-tls-verify",
        ),
        pytest.param(
            chained(httpx.ConnectError("x"), OSError(113, "No route")),
            Outcome.OTHER,
            id="connect-no-route",
        ),
        pytest.param(
            chained(httpx.ReadError(""), OSError("broken"), ConnectionResetError(104, "reset")),
            Outcome.L4_DENIED,
            id="read-reset-curl-56",
        ),
        pytest.param(chained(httpx.ReadError(""), OSError("?")), Outcome.OTHER, id="read-other"),
        pytest.param(
            chained(httpx.WriteError(""), BrokenPipeError(32, "Broken pipe")),
            Outcome.L4_DENIED,
            id="write-broken-pipe",
        ),
        pytest.param(
            chained(httpx.WriteError(""), ConnectionResetError(104, "reset")),
            Outcome.L4_DENIED,
            id="write-reset",
        ),
        pytest.param(
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            Outcome.L4_DENIED,
            id="disconnected-curl-52",
        ),
        pytest.param(
            httpx.RemoteProtocolError("illegal status line: bytearray(b'SSH-2.0')"),
            Outcome.OTHER,
            id="protocol-violation",
        ),
        pytest.param(
            httpx.RemoteProtocolError("peer closed connection without sending complete body"),
            Outcome.OTHER,
            id="incomplete-body",
        ),
        pytest.param(httpx.ConnectTimeout("t"), Outcome.TIMEOUT, id="connect-timeout"),
        pytest.param(httpx.ReadTimeout("t"), Outcome.TIMEOUT, id="read-timeout"),
        pytest.param(httpx.WriteTimeout("t"), Outcome.TIMEOUT, id="write-timeout"),
        pytest.param(httpx.PoolTimeout("t"), Outcome.TIMEOUT, id="pool-timeout"),
        pytest.param(TimeoutError(), Outcome.TIMEOUT, id="overall-deadline"),
        pytest.param(httpx.CloseError("c"), Outcome.OTHER, id="close-error"),
        pytest.param(httpx.UnsupportedProtocol("ftp"), Outcome.OTHER, id="unsupported-protocol"),
        pytest.param(httpx.LocalProtocolError("bad header"), Outcome.OTHER, id="local-protocol"),
        pytest.param(httpx.ProxyError("p"), Outcome.OTHER, id="proxy-error"),
        pytest.param(httpx.DecodingError("gzip"), Outcome.OTHER, id="decoding-error"),
        pytest.param(httpx.InvalidURL("bad"), Outcome.OTHER, id="invalid-url"),
    ],
)
def test_exception_outcome(raised: BaseException, expected: Outcome) -> None:
    """Each httpx failure, with the cause chain httpx gives it, maps to one outcome."""
    classified = classify_exception(raised, TIMINGS)

    assert classified.outcome is expected
    assert classified.evidence.error is not None
    assert classified.evidence.error.type == type(raised).__name__
    assert classified.evidence.status is None


DENIALS = [
    chained(httpx.ConnectError("x"), ConnectionResetError(104, "reset")),
    chained(httpx.ReadError(""), OSError("broken"), ConnectionResetError(104, "reset")),
    chained(httpx.WriteError(""), BrokenPipeError(32, "Broken pipe")),
    chained(httpx.WriteError(""), ConnectionResetError(104, "reset")),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
]


@pytest.mark.parametrize("raised", DENIALS, ids=["connect-reset", "read-reset", "write-pipe", "write-reset", "fin"])
def test_every_denial_path_turns_other_once_the_peer_sent_a_byte(raised: BaseException) -> None:
    """A reset or close after any byte of a response (`HTTP/1.1 200 OK\\r\\n`, a banner) is no denial."""
    assert classify_exception(raised, TIMINGS).outcome is Outcome.L4_DENIED
    after_bytes = classify_exception(raised, TIMINGS, received=17)
    assert after_bytes.outcome is Outcome.OTHER
    assert after_bytes.evidence.error is not None
    assert after_bytes.evidence.error.chain[-1] == "not a denial: the peer sent 17 byte(s) first"


def test_a_broken_response_limit_is_other() -> None:
    classified = classify_exception(ResponseLimitError("the response head is longer than 32768 bytes"), TIMINGS)
    assert classified.outcome is Outcome.OTHER


class SurpriseError(Exception):
    """Stands for an exception type no rule knows, e.g. from a future httpx."""


@pytest.mark.parametrize(
    "raised",
    [
        SurpriseError("new failure"),
        KeyError("headers"),
        UnicodeEncodeError("ascii", "é", 0, 1, "x"),
    ],
)
def test_unmapped_exception_is_other_with_its_type_named(raised: Exception) -> None:
    """An exception type outside the map is `other`, and the evidence names the type."""
    classified = classify_exception(raised, TIMINGS)

    assert classified.outcome is Outcome.OTHER
    assert classified.evidence.error is not None
    assert classified.evidence.error.type == type(raised).__name__
    assert classified.evidence.error.message == str(raised)


def test_exception_evidence_records_timings_and_the_cause_chain() -> None:
    """The error evidence lists each cause as `Type: message`, outermost first."""
    evidence = classify_exception(refused(), Timings(total_ms=2.5)).evidence

    assert evidence.total_ms == 2.5
    assert evidence.connect_ms is None
    assert evidence.error is not None
    assert evidence.error.message == "All connection attempts failed"
    assert evidence.error.chain == (
        "OSError: All connection attempts failed",
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 9)",
    )


def test_failure_after_response_head_is_other_with_the_status() -> None:
    """A body that breaks after the headers is not a complete observation: `other`."""
    head = response(200, headers={"server": "istio-envoy"}, complete=False)
    broken = chained(httpx.ReadError(""), ConnectionResetError(104, "reset"))

    classified = classify_exception(broken, TIMINGS, partial=head)

    assert classified.outcome is Outcome.OTHER
    assert classified.evidence.status == 200
    assert classified.evidence.headers == {"server": "istio-envoy"}
    assert classified.evidence.error is not None
    assert classified.evidence.error.type == "ReadError"


def test_exception_chain_visits_each_exception_once_even_in_a_cycle() -> None:
    """Causes, contexts and group members are all visited, and a cycle ends the walk."""
    inner = ValueError("inner")
    group = ExceptionGroup("g", [inner])
    outer = RuntimeError("outer")
    outer.__cause__ = group
    inner.__context__ = outer  # a cycle, as a re-raise inside an except block can make

    assert list(exception_chain(outer)) == [outer, group, inner]
