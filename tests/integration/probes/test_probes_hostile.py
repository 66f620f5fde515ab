"""The probe program against hostile loopback servers (issue #10, item 6).

(a) Any byte of a response means something accepted the connection: never ``l4-denied``.
(b) Nothing is decompressed: a gzip bomb costs its wire size. (c) The head is bounded in bytes and
fields, and ``timeout_s`` is a wall-clock deadline for the whole exchange.

Each server is also run through the real program (``python -m probes``, 16 requests at once, as a
probe pod runs it); its peak RSS (``wait4``) must stay under the probe budget of 64 MiB and every
request must end within its deadline. The figures are printed (``pytest -s``) for docs/probes.md.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from probes.classify import MAX_HEAD_BYTES, MAX_RESPONSE_HEADERS
from probes.wire import Outcome, ProbeResult, RunResult, parse_result
from tests.integration.probes.probe_harness import Behaviour, RawServer, run_requests

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
RSS_BUDGET = 64 * 1024 * 1024
REQUESTS = 16
TIMEOUT_S = 2.0


def _gzip_bomb(inflated_mib: int) -> bytes:
    """About 1 KiB of gzip per MiB of zeros, built a MiB at a time (never held inflated)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    zeros = bytes(1024 * 1024)
    return b"".join(compressor.compress(zeros) for _ in range(inflated_mib)) + compressor.flush()


# About 1 MiB of gzip that inflates to 1 GiB of zeros: what a decompressing client would hold.
GZIP_BOMB = _gzip_bomb(1024)


def _read_head(conn: socket.socket) -> None:
    conn.settimeout(2)
    data = b""
    with suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk


def _send(conn: socket.socket, data: bytes) -> None:
    with suppress(OSError):
        conn.sendall(data)


def _fin(conn: socket.socket) -> None:
    with suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def partial_head_then_close(conn: socket.socket, _stop: threading.Event) -> None:
    """`HTTP/1.1 200 OK\\r\\n` and a FIN: httpcore says "Server disconnected without sending a response"."""
    _read_head(conn)
    _send(conn, b"HTTP/1.1 200 OK\r\n")
    _fin(conn)


def partial_head_then_reset(conn: socket.socket, _stop: threading.Event) -> None:
    """Half a head, then an abortive close (RST): a ReadError with ConnectionResetError."""
    _read_head(conn)
    _send(conn, b"HTTP/1.1 403 Forbidden\r\ncontent-le")
    time.sleep(0.05)  # let the bytes reach the client before the reset discards them
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def one_byte_then_close(conn: socket.socket, _stop: threading.Event) -> None:
    _read_head(conn)
    _send(conn, b"H")
    _fin(conn)


def gzip_bomb(conn: socket.socket, _stop: threading.Event) -> None:
    _read_head(conn)
    head = f"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {len(GZIP_BOMB)}\r\n\r\n"
    _send(conn, head.encode() + GZIP_BOMB)
    _fin(conn)


def ten_thousand_headers(conn: socket.socket, _stop: threading.Event) -> None:
    _read_head(conn)
    fields = b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))
    _send(conn, b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 0\r\n\r\n")
    _fin(conn)


def too_many_small_headers(conn: socket.socket, _stop: threading.Event) -> None:
    """Within the byte bound, over the field bound."""
    _read_head(conn)
    fields = b"".join(b"a: b\r\n" for _ in range(MAX_RESPONSE_HEADERS))  # and content-length: one more
    _send(conn, b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 0\r\n\r\n")
    _fin(conn)


def endless_header(conn: socket.socket, stop: threading.Event) -> None:
    """One header line that never ends, sent as fast as the client reads."""
    _read_head(conn)
    _send(conn, b"HTTP/1.1 200 OK\r\nx-a: ")
    while not stop.is_set():
        try:
            conn.sendall(b"a" * 4096)
        except OSError:
            return


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """A byte every 50 ms: each read succeeds, so httpx's per-read timeout never fires."""
    _read_head(conn)
    for byte in b"HTTP/1.1 200 OK\r\n" + b"x-slow: " + b"a" * 10_000:
        if stop.is_set():
            return
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(0.05)


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], RawServer]]:
    servers: list[RawServer] = []

    def start(behaviour: Behaviour) -> RawServer:
        server = RawServer(behaviour).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def _probe(url: str, timeout_s: float = TIMEOUT_S) -> ProbeResult:
    return run_requests([{"id": "only", "url": url, "timeout_s": timeout_s}]).results[0]


@pytest.mark.parametrize(
    "behaviour",
    [partial_head_then_close, partial_head_then_reset, one_byte_then_close],
    ids=["partial-head-fin", "partial-head-rst", "one-byte-fin"],
)
def test_any_byte_of_a_response_is_never_a_denial(
    serve: Callable[[Behaviour], RawServer], behaviour: Behaviour
) -> None:
    result = _probe(serve(behaviour).url())
    assert result.outcome is Outcome.OTHER
    assert result.evidence.error is not None
    assert result.evidence.error.chain[-1].startswith("not a denial: the peer sent ")


def test_a_gzip_bomb_is_read_raw_and_allowed(serve: Callable[[Behaviour], RawServer]) -> None:
    result = _probe(serve(gzip_bomb).url())
    assert result.outcome is Outcome.ALLOWED
    assert result.evidence.body_prefix is not None
    assert result.evidence.body_prefix.encode("utf-8", "surrogateescape")[:2] != b"\0\0"  # gzip bytes, not zeros


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (ten_thousand_headers, f"the response head is longer than {MAX_HEAD_BYTES} bytes"),
        (endless_header, f"the response head is longer than {MAX_HEAD_BYTES} bytes"),
        (too_many_small_headers, f"the response head has {MAX_RESPONSE_HEADERS + 1} fields, more than 128"),
    ],
    ids=["10000-headers", "endless-header", "129-headers"],
)
def test_an_unbounded_head_is_other_with_the_limit_named(
    serve: Callable[[Behaviour], RawServer], behaviour: Behaviour, message: str
) -> None:
    result = _probe(serve(behaviour).url())
    assert result.outcome is Outcome.OTHER
    assert result.evidence.error is not None
    assert (result.evidence.error.type, result.evidence.error.message) == ("ResponseLimitError", message)


def test_a_trickling_peer_meets_the_wall_clock_deadline(serve: Callable[[Behaviour], RawServer]) -> None:
    started = time.monotonic()
    result = _probe(serve(trickle).url(), timeout_s=1.0)
    assert result.outcome is Outcome.TIMEOUT
    assert result.evidence.error is not None
    assert result.evidence.error.message == "no complete exchange within the 1 s deadline"
    assert time.monotonic() - started < 1.5


HOSTILE = {
    "partial-head-fin": (partial_head_then_close, Outcome.OTHER),
    "gzip-bomb": (gzip_bomb, Outcome.ALLOWED),
    "10000-headers": (ten_thousand_headers, Outcome.OTHER),
    "endless-header": (endless_header, Outcome.OTHER),
    "trickle": (trickle, Outcome.TIMEOUT),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_the_probe_program_stays_within_64_mib_and_its_deadline(
    serve: Callable[[Behaviour], RawServer], name: str, tmp_path: Path
) -> None:
    """16 concurrent requests to one hostile server through `python -m probes`, as in a probe pod."""
    behaviour, expected = HOSTILE[name]
    url = serve(behaviour).url()
    plan = {
        "schema_version": 1,
        "run_id": name,
        "requests": [{"id": f"r{i}", "url": url, "timeout_s": TIMEOUT_S} for i in range(REQUESTS)],
    }
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "probes", "--plan", "-", "--termination-log", str(tmp_path / "log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    stdout, _ = process.communicate(json.dumps(plan).encode(), timeout=60)
    wall_s = time.monotonic() - started
    peak = _peak_rss(plan, tmp_path)
    result = parse_result(stdout.decode())
    assert isinstance(result, RunResult)
    assert {r.outcome for r in result.results} == {expected}
    worst_ms = max(r.evidence.total_ms or 0.0 for r in result.results)
    print(
        f"\nprobe program vs {name}: peak RSS {peak / 2**20:.1f} MiB, worst request {worst_ms:.0f} ms, run {wall_s:.2f} s"
    )
    assert peak < RSS_BUDGET
    assert worst_ms <= TIMEOUT_S * 1000 + 250  # the deadline, plus the event loop's reaction time


# A small parent runs the program and reports its children's peak RSS: measured from pytest
# itself, the figure would include pytest's pages, which a forked child counts until exec.
_MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=False).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss(plan: dict[str, object], tmp_path: Path) -> int:
    """Peak RSS in bytes of one `python -m probes` run (Linux reports ru_maxrss in KiB)."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    program = [sys.executable, "-m", "probes", "--plan", str(plan_file), "--termination-log", str(tmp_path / "log2")]
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, *program],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=True,
    )
    code, kib = measured.stdout.split()
    assert code == "0", measured.stderr
    return int(kib) * 1024
