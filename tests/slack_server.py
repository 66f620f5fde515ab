"""A local Slack-Web-API-compatible HTTP server for tests: slack-sdk talks to it over real HTTP.

Implements ``chat.postMessage``, ``chat.update`` and ``conversations.history`` (with message
metadata) in memory, plus an outage script: the next N requests answer with the given status
(500s, or 429 with ``Retry-After``), so retry and outbox behaviour is exercised for real.
Binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class SlackState:
    messages: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    outage: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (status, headers) per request
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, count: int, status: int, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self.lock:
            self.outage += [(status, headers)] * count

    def top_level(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "thread_ts" not in m]

    def replies(self, ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") == ts]


class _Handler(BaseHTTPRequestHandler):
    state: SlackState

    def log_message(self, *_: Any) -> None:  # keep test output clean
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode("utf-8")
        method = "webhook" if self.path.startswith("/webhook") else self.path.rsplit("/", 1)[-1]
        with self.state.lock:
            self.state.requests.append(method)
            failure = self.state.outage.pop(0) if self.state.outage else None
        if failure is not None:
            error = "ratelimited" if failure[0] == 429 else "fatal_error"
            self._answer(failure[0], {"ok": False, "error": error}, failure[1])
            return
        body = _parse(raw, self.headers.get("Content-Type", ""))
        if method == "webhook":
            with self.state.lock:
                self.state.messages.append({"ts": "webhook", "text": body.get("text"), "blocks": body.get("blocks")})
            self._answer_text(200, "ok")
            return
        self._answer(200, self._dispatch(method, body))

    def _answer_text(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            if method == "chat.postMessage":
                ts = f"{time.time():.6f}"
                message = {
                    "ts": ts,
                    "text": body.get("text"),
                    "blocks": body.get("blocks"),
                    "metadata": body.get("metadata"),
                }
                if body.get("thread_ts"):
                    message["thread_ts"] = body["thread_ts"]
                self.state.messages.append(message)
                time.sleep(0.000002)  # distinct ts values
                return {"ok": True, "channel": body.get("channel"), "ts": ts}
            if method == "chat.update":
                self.state.updates.append(body)
                return {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
            if method == "conversations.history":
                return {"ok": True, "messages": list(reversed(self.state.top_level()))}
        return {"ok": False, "error": "unknown_method"}

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _parse(raw: str, content_type: str) -> dict[str, Any]:
    if "json" in content_type:
        parsed: dict[str, Any] = json.loads(raw or "{}")
        return parsed
    form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
    for key in ("blocks", "metadata"):
        if key in form:
            form[key] = json.loads(form[key])
    return form


@contextmanager
def slack_server() -> Iterator[tuple[str, SlackState]]:
    state = SlackState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state
    finally:
        server.shutdown()
        server.server_close()
