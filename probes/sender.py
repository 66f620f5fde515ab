"""Sends a plan's requests with httpx and hands each observation to ``classify``.

Every request gets its own client and transport, hence its own TCP connection: ztunnel decides
per connection, so a pooled connection could carry a stale allow/deny (semantics §1.8). No
retries (a retry would hide a reset), no redirects (a 3xx is already "allowed"), no proxy or
other environment settings (``trust_env=False``: a proxy would be the peer we classify). A
request with ``after`` waits until the request it names ended (a confirmation, probes.wire).

The peer may be hostile, so every exchange is bounded (docs/adversarial-inputs.md):

- ``timeout_s`` is a wall-clock deadline for the whole exchange (connect, send, head, body
  prefix), not only httpx's per-phase timeouts, which a peer trickling bytes never trips;
- the response head may hold at most ``MAX_HEAD_BYTES`` bytes (``_MeteredStream`` counts what the
  socket returns until httpcore has parsed the head) and ``MAX_RESPONSE_HEADERS`` fields;
- the body is read raw (``aiter_raw``, ``accept-encoding: identity``): nothing is decompressed,
  so a gzip bomb costs what it weighs on the wire, at most one 64 KiB read past the prefix;
- the bytes received before the exchange ended travel to ``classify``: a peer that sent any
  byte of a response accepted the connection, which is never a denial.

Neighbours: ``__main__`` parses the plan and prints the ``RunResult`` built here.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any, cast

import httpcore
import httpx

from probes.classify import (
    BODY_PREFIX_BYTES,
    MAX_HEAD_BYTES,
    MAX_RESPONSE_HEADERS,
    Classified,
    ResponseLimitError,
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


async def run_plan(plan: ProbePlan, concurrency: int = DEFAULT_CONCURRENCY) -> RunResult:
    """Send every request of ``plan``, at most ``concurrency`` at once; results keep plan order."""
    bound = asyncio.Semaphore(concurrency)
    # Built once: loading the CA bundle per request would cost more than a loopback exchange.
    tls = httpx.create_ssl_context(trust_env=False)

    ended = {r.id: asyncio.Event() for r in plan.requests}

    async def bounded(request: ProbeRequest) -> ProbeResult:
        if request.after is not None:
            # A confirmation starts after the request it confirms ended (wire: ``after``).
            await ended[request.after].wait()
        try:
            async with bound:
                return await _probe(request, plan.marker_for(request), tls)
        finally:
            ended[request.id].set()

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
        try:
            async with asyncio.timeout(request.timeout_s):
                response = await _exchange(request, tls, recorder)
        except TimeoutError as exc:
            # asyncio's own TimeoutError says nothing; the evidence should say which limit hit.
            raise TimeoutError(f"no complete exchange within the {request.timeout_s:g} s deadline") from exc
    # Deliberately broad: classify maps every type explicitly and names unknown ones in the
    # evidence, so one odd failure becomes that request's `other`, not a lost run.
    except Exception as exc:  # noqa: BLE001
        return classify_exception(exc, recorder.timings(), recorder.head, marker_header, received=recorder.received)
    return classify_response(response, recorder.timings(), marker_header)


async def _exchange(request: ProbeRequest, tls: ssl.SSLContext, recorder: _Recorder) -> ResponseSummary:
    async with _client(_transport(tls, recorder), request.timeout_s) as client:
        sent = client.build_request(
            request.method,
            request.url,
            headers={"accept-encoding": "identity", **request.headers},
            extensions={"trace": recorder.trace},
        )
        response = await client.send(sent, stream=True)
        try:
            headers = _headers(response.headers)
            recorder.got_head(response.status_code, headers)
            prefix, complete = await _read_prefix(response)
        finally:
            await response.aclose()
    recorder.finish()
    return ResponseSummary(response.status_code, headers, prefix, complete)


def _transport(tls: ssl.SSLContext, recorder: _Recorder) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=tls, retries=0)
    # httpx takes no network backend; its pool is the documented httpcore one, rebuilt here with
    # the same settings (one connection, no retries) around the metering backend.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=tls, max_connections=1, retries=0, network_backend=_MeteredBackend(recorder)
    )
    return transport


def _client(transport: httpx.AsyncHTTPTransport, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"user-agent": USER_AGENT},
    )


def _headers(headers: httpx.Headers) -> dict[str, str]:
    """Lower-case names, repeated fields joined with ", " (as httpx.Headers does on lookup).

    One pass over the fields: looking each name up would be quadratic in the field count.
    """
    items = headers.multi_items()
    if len(items) > MAX_RESPONSE_HEADERS:
        raise ResponseLimitError(f"the response head has {len(items)} fields, more than {MAX_RESPONSE_HEADERS}")
    joined: dict[str, str] = {}
    for name, value in items:
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


async def _read_prefix(response: httpx.Response) -> tuple[bytes, bool]:
    """Read at most BODY_PREFIX_BYTES, as sent (never decompressed); the flag says whether that was the whole body."""
    buffer = bytearray()
    # httpx implements aiter_raw as an async generator; close it when we stop early.
    chunks_gen = cast(AsyncGenerator[bytes, None], response.aiter_raw())
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
        self.received = 0  # bytes the peer sent on the (decrypted) stream
        self.head_parsed = False

    async def trace(self, event: str, _info: Mapping[str, Any]) -> None:
        # Event names are httpcore's "<module>.<step>.<started|complete|failed>".
        if event == "connection.connect_tcp.started":
            self._tcp_start = self._now()
        elif event == "connection.connect_tcp.complete" and self._tcp_start is not None:
            self._connect_ms = _ms(self._now() - self._tcp_start)
        elif event == "http11.receive_response_headers.complete":
            self._first_byte_ms = self._elapsed_ms()
            self.head_parsed = True

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


class _MeteredBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, whose streams count received bytes and bound the head."""

    def __init__(self, recorder: _Recorder) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._recorder = recorder

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _MeteredStream(stream, self._recorder)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return _MeteredStream(stream, self._recorder)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _MeteredStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, recorder: _Recorder) -> None:
        self._inner = inner
        self._recorder = recorder

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._recorder.head_parsed:
            # Until httpcore has the whole head, read no further than the head may reach: a read
            # that holds a small head and a large body is fine, a head that never ends is not.
            room = MAX_HEAD_BYTES - self._recorder.received
            if room <= 0:
                raise ResponseLimitError(f"the response head is longer than {MAX_HEAD_BYTES} bytes")
            max_bytes = min(max_bytes, room)
        data = await self._inner.read(max_bytes, timeout)
        self._recorder.received += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        # Handshake bytes are not counted: only what the peer says at the HTTP layer is a response.
        return _MeteredStream(await self._inner.start_tls(ssl_context, server_hostname, timeout), self._recorder)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
