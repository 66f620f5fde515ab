"""``/metrics``, ``/healthz`` and ``/readyz`` over plain HTTP (stdlib server, one thread).

``/healthz`` answers 200 while the process serves; ``/readyz`` asks the daemon (a callable) and
answers 503 with the reason until the snapshot is in sync, so a Service routes nothing to a
replica that cannot audit yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

Readiness = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, host: str, port: int, exposition: Callable[[], bytes], readiness: Readiness) -> None:
        handler = type(
            "Handler", (_Handler,), {"exposition": staticmethod(exposition), "readiness": staticmethod(readiness)}
        )
        self._server = ThreadingHTTPServer((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    exposition: Callable[[], bytes]
    readiness: Readiness

    def log_message(self, *_: Any) -> None:  # access logs would drown the audit logs
        return

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, self.exposition(), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            self._send(200, b"ok\n")
        elif self.path == "/readyz":
            ready, reason = self.readiness()
            self._send(200 if ready else 503, (reason + "\n").encode("utf-8"))
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
