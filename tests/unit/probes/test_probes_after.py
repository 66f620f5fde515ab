"""``ProbeRequest.after``: the sender starts a confirmation only once the request it names ended."""

from __future__ import annotations

import asyncio
import time

from probes.sender import run_plan
from probes.wire import Outcome, ProbePlan, ProbeRequest

HOLD_S = 0.3


def test_a_confirmation_starts_after_the_first_request_ended() -> None:
    """A server holds the first request's answer HOLD_S seconds; the confirmation reaches it only after
    that answer was sent, while an unrelated request arrives at once (the others stay concurrent)."""
    arrivals: dict[str, float] = {}
    answered: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        await reader.readuntil(b"\r\n\r\n")
        path = line.split()[1]
        arrivals[path] = time.monotonic()
        if path == "/first":
            await asyncio.sleep(HOLD_S)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        answered[path] = time.monotonic()
        writer.close()

    async def main() -> tuple[Outcome, ...]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        plan = ProbePlan(
            run_id="run-1",
            requests=(
                ProbeRequest(id="first", url=f"{base}/first"),
                ProbeRequest(id="again", url=f"{base}/again", after="first"),
                ProbeRequest(id="other", url=f"{base}/other"),
            ),
        )
        async with server:
            result = await run_plan(plan)
        return tuple(r.outcome for r in result.results)

    assert asyncio.run(main()) == (Outcome.ALLOWED,) * 3
    assert arrivals["/again"] >= answered["/first"]
    assert arrivals["/other"] < answered["/first"]
