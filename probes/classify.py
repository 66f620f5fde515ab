"""Decides the outcome of one probe request from what the client observed (semantics §1).

Pure: no I/O and no clock. ``sender`` measures and hands over either a ``ResponseSummary`` (an
HTTP response arrived) or the exception that ended the exchange, with the timings it took;
this module returns the ``Outcome`` and the evidence that goes on the wire.

Responses:

    2xx, 3xx                                          -> allowed (redirects are not followed)
    403, body exactly "RBAC: access denied",
         no x-envoy-upstream-service-time             -> l7-denied (waypoint local reply, §1.3)
    any other 401 or 403                              -> app-denied
    502, 503, 504                                     -> upstream-error (not proof of policy, §1.4)
    anything else                                     -> other

Exceptions, mapped by type in ``_EXCEPTION_RULES`` (httpx's tree is drawn in
``httpx/_exceptions.py``; the cause chain, exception groups included, is searched because
httpcore and anyio wrap the socket error two or three levels down):

    httpx.TimeoutException (Connect/Read/Write/PoolTimeout)         -> timeout
    TimeoutError (the sender's overall deadline)                    -> timeout
    httpx.ConnectError  with socket.gaierror in the chain           -> dns-failure
                        with ConnectionRefusedError in the chain    -> refused
                        with ConnectionResetError (TLS handshake)   -> l4-denied
                        otherwise (e.g. a certificate error)        -> other
    httpx.ReadError / WriteError with a reset or broken pipe        -> l4-denied (curl 56, §1.1)
    httpx.RemoteProtocolError "Server disconnected without
        sending a response"                                         -> l4-denied (curl 52, §1.2)
    ResponseLimitError (head over MAX_HEAD_BYTES or
        MAX_RESPONSE_HEADERS fields)                                -> other
    every other httpx.HTTPError, httpx.InvalidURL                   -> other
    any other exception type                                        -> other (``_unmapped``)

Any byte received decides against a denial: a reset or a close after the peer sent even part of
a response (``HTTP/1.1 200 OK\r\n`` and a close, an SSH banner) means something accepted the
connection and spoke, and ztunnel refuses without a byte (§1.1, §1.2). httpcore reports such a
close exactly like an empty one, so the sender counts the bytes (``received``) and ``l4-denied``
becomes ``other`` whenever it is not zero. ``l4-denied`` is the only outcome decided from an
exception that counts as proof of refusal; ``l7-denied`` needs a complete response.

An exception raised after the response headers arrived (a broken body) is ``other``: the
status alone is not a complete observation, and "could not evaluate" must never read as a pass.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import httpx

from probes.wire import ErrorInfo, Evidence, Outcome

__all__ = [
    "BODY_PREFIX_BYTES",
    "EVIDENCE_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_RESPONSE_HEADERS",
    "RBAC_DENIED_BODY",
    "Classified",
    "ResponseLimitError",
    "ResponseSummary",
    "Timings",
    "classify_exception",
    "classify_response",
    "exception_chain",
]

BODY_PREFIX_BYTES = 256
# Bounds on a hostile peer's response head (docs/adversarial-inputs.md): 32 KiB holds any head an
# application or Envoy sends (Envoy's own default limit for headers is 60 KiB in total, for
# requests); 128 fields is several times what real responses carry.
MAX_HEAD_BYTES = 32 * 1024
MAX_RESPONSE_HEADERS = 128
RBAC_DENIED_BODY = b"RBAC: access denied"  # Envoy's RBAC filter local reply, 19 bytes (§1.3)
UPSTREAM_TIME = "x-envoy-upstream-service-time"
EVIDENCE_HEADERS = ("server", UPSTREAM_TIME, "content-type")
_DISCONNECTED = "Server disconnected without sending a response"
_MAX_CHAIN = 6  # enough for httpx -> httpcore -> OSError -> group -> errno; keeps results small
_MAX_MESSAGE = 300


class ResponseLimitError(Exception):
    """The peer's response broke a bound (head size, field count): classified ``other``."""


@dataclass(frozen=True)
class Timings:
    """Milliseconds measured by the sender; None when that phase was never reached."""

    connect_ms: float | None = None
    first_byte_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True)
class ResponseSummary:
    """The parts of an HTTP response that classification and evidence need."""

    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body_prefix: bytes = b""  # at most BODY_PREFIX_BYTES
    body_complete: bool = True  # False when the body was longer than the prefix


@dataclass(frozen=True)
class Classified:
    """An outcome and the evidence for it."""

    outcome: Outcome
    evidence: Evidence


def classify_response(response: ResponseSummary, timings: Timings, marker_header: str | None = None) -> Classified:
    """Classify a complete HTTP response."""
    evidence = _response_evidence(response, timings, marker_header)
    return Classified(_response_outcome(response), evidence)


def classify_exception(
    exc: BaseException,
    timings: Timings,
    partial: ResponseSummary | None = None,
    marker_header: str | None = None,
    *,
    received: int = 0,
) -> Classified:
    """Classify the exception that ended an exchange; ``partial`` is a response whose body broke,
    ``received`` the bytes the peer sent before it ended (any byte rules out a denial)."""
    error = _error_info(exc)
    if partial is not None:
        evidence = _response_evidence(partial, timings, marker_header)
        return Classified(Outcome.OTHER, evidence.model_copy(update={"error": error}))
    outcome = _exception_outcome(exc)
    if outcome is Outcome.L4_DENIED and received:
        outcome = Outcome.OTHER
        error = error.model_copy(
            update={"chain": (*error.chain, f"not a denial: the peer sent {received} byte(s) first")}
        )
    return Classified(outcome, _timed_evidence(timings, error=error))


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc``, then its causes, contexts and exception-group members, each once."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _response_outcome(response: ResponseSummary) -> Outcome:
    status = response.status
    if 200 <= status < 400:
        return Outcome.ALLOWED
    if status == 403 and _is_waypoint_rbac_reply(response):
        return Outcome.L7_DENIED
    if status in (401, 403):
        return Outcome.APP_DENIED
    if status in (502, 503, 504):
        return Outcome.UPSTREAM_ERROR
    return Outcome.OTHER


def _is_waypoint_rbac_reply(response: ResponseSummary) -> bool:
    # An app's own 403 that passed through Envoy carries the upstream-time header (§1.3).
    exact_body = response.body_complete and response.body_prefix == RBAC_DENIED_BODY
    return exact_body and UPSTREAM_TIME not in response.headers


def _has(exc: BaseException, *types: type[BaseException]) -> bool:
    return any(isinstance(e, types) for e in exception_chain(exc))


def _connect_error(exc: BaseException) -> Outcome:
    # gaierror first: a failed lookup never reaches connect(), so it is the real cause.
    if _has(exc, socket.gaierror):
        return Outcome.DNS_FAILURE
    if _has(exc, ConnectionRefusedError):
        return Outcome.REFUSED
    if _has(exc, ConnectionResetError):
        return Outcome.L4_DENIED  # TCP was accepted, then reset during the TLS handshake
    return Outcome.OTHER


def _reset_or_broken(exc: BaseException) -> Outcome:
    if _has(exc, ConnectionResetError, BrokenPipeError):
        return Outcome.L4_DENIED
    return Outcome.OTHER


def _disconnected(exc: BaseException) -> Outcome:
    # h11 protocol violations are RemoteProtocolErrors too; only the no-response close is a denial.
    return Outcome.L4_DENIED if str(exc).startswith(_DISCONNECTED) else Outcome.OTHER


def _timeout(_exc: BaseException) -> Outcome:
    return Outcome.TIMEOUT


def _other(_exc: BaseException) -> Outcome:
    return Outcome.OTHER


def _unmapped(_exc: BaseException) -> Outcome:
    # Not an httpx or socket failure we know (a bug, or a new library version): the type name
    # lands in evidence.error so the auditor reports "could not evaluate", never a pass.
    return Outcome.OTHER


# First matching type wins, so subclasses come before their bases.
_EXCEPTION_RULES: tuple[tuple[type[BaseException], Callable[[BaseException], Outcome]], ...] = (
    (httpx.TimeoutException, _timeout),
    (TimeoutError, _timeout),
    (ResponseLimitError, _other),
    (httpx.ConnectError, _connect_error),
    (httpx.ReadError, _reset_or_broken),
    (httpx.WriteError, _reset_or_broken),
    (httpx.RemoteProtocolError, _disconnected),
    (httpx.HTTPError, _other),
    (httpx.InvalidURL, _other),
)


def _exception_outcome(exc: BaseException) -> Outcome:
    for exc_type, decide in _EXCEPTION_RULES:
        if isinstance(exc, exc_type):
            return decide(exc)
    return _unmapped(exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_message(exc)}"


def _message(exc: BaseException) -> str:
    return str(exc)[:_MAX_MESSAGE]


def _error_info(exc: BaseException) -> ErrorInfo:
    causes = list(exception_chain(exc))[1:_MAX_CHAIN]
    return ErrorInfo(type=type(exc).__name__, message=_message(exc), chain=tuple(map(_describe, causes)))


def _timed_evidence(timings: Timings, **fields: object) -> Evidence:
    return Evidence.model_validate(
        {
            "connect_ms": timings.connect_ms,
            "first_byte_ms": timings.first_byte_ms,
            "total_ms": timings.total_ms,
            **fields,
        }
    )


def _evidence_headers(headers: Mapping[str, str], marker_header: str | None) -> dict[str, str]:
    wanted = (*EVIDENCE_HEADERS, marker_header.lower()) if marker_header else EVIDENCE_HEADERS
    return {name: headers[name] for name in wanted if name in headers}


def _response_evidence(response: ResponseSummary, timings: Timings, marker_header: str | None) -> Evidence:
    return _timed_evidence(
        timings,
        status=response.status,
        headers=_evidence_headers(response.headers, marker_header),
        body_prefix=response.body_prefix[:BODY_PREFIX_BYTES].decode("utf-8", errors="replace"),
    )
