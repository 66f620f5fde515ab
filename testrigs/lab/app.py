"""The workload a lab pod runs: a tiny HTTP server standing in for a retail-store container.

Role: the lab's data plane needs something real behind each container port. This app answers
every port given on its command line, returns the walkthrough's JSON on ``/catalog/tags`` (so a
request to the catalog reads exactly as in the walkthrough), and echoes the request headers it
received on every other path (so tests can see an ``X-Request-Id`` added by a waypoint, semantics
§1.7b). Every response carries ``x-lab-pod`` naming the pod that answered.

Runs as ``python -m testrigs.lab.app --pod NAME --port 8080 [--port ...]`` inside the pod's network
namespace; standard library only, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import threading
from collections.abc import Sequence
from typing import Any

# The walkthrough's answer, byte for byte (curl prints it without a trailing newline).
CATALOG_TAGS = (
    b'[{"name":"accessories","displayName":"Accessories"},{"name":"clothing","displayName":"Clothing"},'
    b'{"name":"food","displayName":"Food"},{"name":"vehicles","displayName":"Vehicles"}]'
)
POD_HEADER = "x-lab-pod"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body leave in two writes; see probe_harness
    pod_name = "unknown"

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:  # policies name methods; verify sends each (testrigs.lab.verify)
        self.do_POST()

    def do_DELETE(self) -> None:
        self.do_POST()

    def do_PATCH(self) -> None:
        self.do_POST()

    def do_OPTIONS(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(min(length, 1 << 20))
        self._answer()

    def _answer(self) -> None:
        if self.path == "/catalog/tags":
            body, kind = CATALOG_TAGS, "application/json"
        else:
            echo = {"pod": self.pod_name, "method": self.command, "path": self.path, "headers": dict(self.headers)}
            body, kind = json.dumps(echo, sort_keys=True).encode(), "application/json"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.send_header(POD_HEADER, self.pod_name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the lab keeps logs for failures, not for every request."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the stdlib's 5 drops SYNs under a probe burst


def serve(pod: str, ports: Sequence[int]) -> None:
    """Serve every port until SIGTERM."""
    handler = type("Handler", (_Handler,), {"pod_name": pod})
    servers = [_Server(("0.0.0.0", port), handler) for port in ports]  # noqa: S104 - the pod's own netns
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for server in servers:
        server.shutdown()
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testrigs.lab.app")
    parser.add_argument("--pod", required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    serve(args.pod, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
