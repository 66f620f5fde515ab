"""Sends a plan's requests with httpx and hands each observation to ``classify``.

Every request gets its own client and transport, hence its own TCP connection: ztunnel decides
per connection, so a pooled connection could carry a stale allow/deny (semantics §1.8). No
retries (a retry would hide a reset), no redirects (a 3xx is already "allowed"), no proxy or
other environment settings (``trust_env=False``: a proxy would be the peer we classify).

Neighbours: ``__main__`` parses the plan and prints the ``RunResult`` built here.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from typing import Any, cast

import httpx

from probes.classify import (
    BODY_PREFIX_BYTES,
    Classified,
    ResponseSummary,
    Timings,
    classify_exception,
    classify_response,
)
from probes.wire import ProbePlan, ProbeRequest, ProbeResult, RunResult

__all__ = ["DEFAULT_CONCURRENCY", "USER_AGENT", "run_plan"]

# 16 in flight (figures in docs/probes.md). A request costs ~2 ms of CPU here (fresh client, TCP
# handshake, parsing), so on loopback 4 to 64 all finish 500 requests in about the same wall
# time; what the bound really buys is wall time when requests wait on the network or time out
# (a run takes about ceil(n / bound) x timeout_s when everything hangs: 100 x 0.5 s took 13.5 s at
# 4, 4.5 s at 16). Above 16, requests queue on the single event loop: measured times inflate
# (p50 ~20 ms at 16, ~75 ms at 64 on loopback) and a destination sees a larger burst of new
# connections, for little gain.
DEFAULT_CONCURRENCY = 16
USER_AGENT = "mesh-auditor-probe/1"
# httpx's timeout applies per phase (connect, each read, each write); this caps the whole
# exchange against a peer that trickles bytes, without racing the phase timeouts in common cases.
_DEADLINE_FACTOR = 2.0


async def run_plan(plan: ProbePlan, concurrency: int = DEFAULT_CONCURRENCY) -> RunResult:
    """Send every request of ``plan``, at most ``concurrency`` at once; results keep plan order."""
    bound = asyncio.Semaphore(concurrency)
    # Built once: loading the CA bundle per request would cost more than a loopback exchange.
    tls = httpx.create_ssl_context(trust_env=False)

    async def bounded(request: ProbeRequest) -> ProbeResult:
        async with bound:
            return await _probe(request, plan.marker_for(request), tls)

    results = await asyncio.gather(*(bounded(r) for r in plan.requests))
    return RunResult(run_id=plan.run_id, results=tuple(results))


async def _probe(request: ProbeRequest, marker_header: str | None, tls: ssl.SSLContext) -> ProbeResult:
    """Send one request on a new connection and classify what happened."""
    recorder = _Recorder(time.perf_counter)
    classified = await _observe(request, marker_header, tls, recorder)
    return ProbeResult(id=request.id, outcome=classified.outcome, evidence=classified.evidence)


async def _observe(
    request: ProbeRequest, marker_header: str | None, tls: ssl.SSLContext, recorder: _Recorder
) -> Classified:
    try:
        async with asyncio.timeout(request.timeout_s * _DEADLINE_FACTOR):
            response = await _exchange(request, tls, recorder)
    # Deliberately broad: classify maps every type explicitly and names unknown ones in the
    # evidence, so one odd failure becomes that request's `other`, not a lost run.
    except Exception as exc:  # noqa: BLE001
        return classify_exception(exc, recorder.timings(), recorder.head, marker_header)
    return classify_response(response, recorder.timings(), marker_header)


async def _exchange(request: ProbeRequest, tls: ssl.SSLContext, recorder: _Recorder) -> ResponseSummary:
    transport = httpx.AsyncHTTPTransport(verify=tls, retries=0)
    async with _client(transport, request.timeout_s) as client:
        sent = client.build_request(
            request.method,
            request.url,
            headers=request.headers,
            extensions={"trace": recorder.trace},
        )
        response = await client.send(sent, stream=True)
        try:
            recorder.got_head(response.status_code, _headers(response.headers))
            prefix, complete = await _read_prefix(response)
        finally:
            await response.aclose()
    recorder.finish()
    return ResponseSummary(response.status_code, _headers(response.headers), prefix, complete)


def _client(transport: httpx.AsyncHTTPTransport, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"user-agent": USER_AGENT},
    )


def _headers(headers: httpx.Headers) -> dict[str, str]:
    # httpx.Headers joins repeated fields with ", " on lookup; keys come back lower-case.
    return {name: headers[name] for name in headers}


async def _read_prefix(response: httpx.Response) -> tuple[bytes, bool]:
    """Read at most BODY_PREFIX_BYTES; the flag says whether that was the whole body."""
    buffer = bytearray()
    # httpx implements aiter_bytes as an async generator; close it when we stop early.
    chunks_gen = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
    async with aclosing(chunks_gen) as chunks:
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) > BODY_PREFIX_BYTES:
                return bytes(buffer[:BODY_PREFIX_BYTES]), False
    return bytes(buffer), True


class _Recorder:
    """Collects timings from httpcore's ``trace`` extension and the response head, if any."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._start = now()
        self._tcp_start: float | None = None
        self._connect_ms: float | None = None
        self._first_byte_ms: float | None = None
        self._total_ms: float | None = None
        self.head: ResponseSummary | None = None

    async def trace(self, event: str, _info: Mapping[str, Any]) -> None:
        # Event names are httpcore's "<module>.<step>.<started|complete|failed>".
        if event == "connection.connect_tcp.started":
            self._tcp_start = self._now()
        elif event == "connection.connect_tcp.complete" and self._tcp_start is not None:
            self._connect_ms = _ms(self._now() - self._tcp_start)
        elif event == "http11.receive_response_headers.complete":
            self._first_byte_ms = self._elapsed_ms()

    def got_head(self, status: int, headers: Mapping[str, str]) -> None:
        """Keep the status and headers, so a body that breaks later still has them as evidence."""
        self.head = ResponseSummary(status, headers, body_complete=False)

    def finish(self) -> None:
        self._total_ms = self._elapsed_ms()

    def timings(self) -> Timings:
        total = self._total_ms if self._total_ms is not None else self._elapsed_ms()
        return Timings(self._connect_ms, self._first_byte_ms, total)

    def _elapsed_ms(self) -> float:
        return _ms(self._now() - self._start)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
