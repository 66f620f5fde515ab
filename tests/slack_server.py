"""A local Slack-Web-API-compatible HTTP server for tests: slack-sdk talks to it over real HTTP.

Implements ``chat.postMessage``, ``chat.update``, ``conversations.history`` (top-level messages
only, as Slack does) and ``conversations.replies`` (a thread: parent first, then replies), with
message metadata, in memory; plus the faults a test can script:

- ``fail_next(n, status, retry_after)``: the next n requests answer that status (500s, or 429
  with ``Retry-After``) without doing anything;
- ``fail_method(method, error, n)``: the next n calls of one method answer ``ok: false`` with
  Slack's error code (``message_not_found``, ``channel_not_found``, ``msg_too_long`` ...);
- ``lose_answers(method, n)``: the next n calls are carried out, then answered 500 (Slack stored
  the message but the caller never learns it: the exactly-once case);
- ``delay_s``: every request is answered this much later (nothing done before);
- ``answer_delay_s``: every call is carried out at once, its answer sent this much later (a
  caller killed meanwhile never learns that Slack has the message);
- ``rate_limit(method, per_s)``: more calls than that per second answer 429 ``Retry-After: 1``;
- ``delete(ts)``: someone deleted a message in Slack (updates and replies to it then fail).

``transcript()`` gives what a person would see: every message once, with its thread.
Binds 127.0.0.1 only.
"""

from __future__ import annotations

import itertools
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
    errors: dict[str, list[str]] = field(default_factory=dict)  # method -> error codes, one per call
    lost: dict[str, int] = field(default_factory=dict)  # method -> calls carried out but answered 500
    limits: dict[str, float] = field(default_factory=dict)  # method -> calls per second allowed
    last_call: dict[str, float] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    rate_limited: int = 0  # calls answered 429 by ``rate_limit``
    delay_s: float = 0.0
    answer_delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, count: int, status: int, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self.lock:
            self.outage += [(status, headers)] * count

    def fail_method(self, method: str, error: str, count: int = 1) -> None:
        with self.lock:
            self.errors.setdefault(method, []).extend([error] * count)

    def lose_answers(self, method: str, count: int = 1) -> None:
        with self.lock:
            self.lost[method] = self.lost.get(method, 0) + count

    def rate_limit(self, method: str, per_s: float) -> None:
        with self.lock:
            self.limits[method] = per_s

    def delete(self, ts: str) -> None:
        with self.lock:
            self.deleted.add(ts)

    def top_level(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "thread_ts" not in m and m["ts"] not in self.deleted]

    def replies(self, ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") == ts]

    def transcript(self) -> list[tuple[str, list[str]]]:
        """Every top-level message's text with the texts of its replies, in order."""
        return [(m["text"], [r["text"] for r in self.replies(m["ts"])]) for m in self.top_level()]

    def update_texts(self, ts: str) -> list[str]:
        return [u["text"] for u in self.updates if u.get("ts") == ts]


class _Handler(BaseHTTPRequestHandler):
    state: SlackState

    def log_message(self, *_: Any) -> None:  # keep test output clean
        return

    def do_GET(self) -> None:  # conversations.history / conversations.replies: query parameters
        path, _, query = self.path.partition("?")
        self._handle(path, query, "application/x-www-form-urlencoded")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode("utf-8")
        self._handle(self.path, raw, self.headers.get("Content-Type", ""))

    def _handle(self, path: str, raw: str, content_type: str) -> None:
        method = "webhook" if path.startswith("/webhook") else path.rsplit("/", 1)[-1]
        with self.state.lock:
            self.state.requests.append(method)
        if self.state.delay_s:
            time.sleep(self.state.delay_s)
        with self.state.lock:
            failure = self.state.outage.pop(0) if self.state.outage else None
            limited = self._limited(method)
            scripted = self.state.errors.get(method, [])
            error = scripted.pop(0) if scripted else None
            lose = self.state.lost.get(method, 0) > 0
            if lose:
                self.state.lost[method] -= 1
        if failure is not None:
            code = "ratelimited" if failure[0] == 429 else "fatal_error"
            self._answer(failure[0], {"ok": False, "error": code}, failure[1])
            return
        if limited:
            with self.state.lock:
                self.state.rate_limited += 1
            self._answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})
            return
        if error is not None:
            self._answer(200, {"ok": False, "error": error})
            return
        body = _parse(raw, content_type)
        if method == "webhook":
            with self.state.lock:
                self.state.messages.append({"ts": "webhook", "text": body.get("text"), "blocks": body.get("blocks")})
            self._answer_text(200, "ok")
            return
        answer = self._dispatch(method, body)
        if self.state.answer_delay_s:
            time.sleep(self.state.answer_delay_s)
        if lose:
            self._answer(500, {"ok": False, "error": "fatal_error"})
            return
        self._answer(200, answer)

    def _limited(self, method: str) -> bool:
        per_s = self.state.limits.get(method)
        if not per_s:
            return False
        now = time.monotonic()
        if now - self.state.last_call.get(method, -1e9) < 1.0 / per_s:
            return True
        self.state.last_call[method] = now
        return False

    def _answer_text(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        with state.lock:
            if method == "chat.postMessage":
                parent = body.get("thread_ts")
                if parent and parent in state.deleted:
                    return {"ok": False, "error": "thread_not_found"}
                ts = f"{int(time.time())}.{next(state._ts):06d}"
                message = {
                    "ts": ts,
                    "text": body.get("text"),
                    "blocks": body.get("blocks"),
                    "metadata": body.get("metadata"),
                }
                if parent:
                    message["thread_ts"] = parent
                state.messages.append(message)
                return {"ok": True, "channel": body.get("channel"), "ts": ts}
            if method == "chat.update":
                ts = str(body.get("ts"))
                if ts in state.deleted or not any(m["ts"] == ts for m in state.messages):
                    return {"ok": False, "error": "message_not_found"}
                state.updates.append(body)
                return {"ok": True, "channel": body.get("channel"), "ts": ts}
            if method == "conversations.history":
                return {"ok": True, "messages": list(reversed(state.top_level()))}
            if method == "conversations.replies":
                ts = str(body.get("ts"))
                parent = [m for m in state.messages if m["ts"] == ts and ts not in state.deleted]
                if not parent:
                    return {"ok": False, "error": "thread_not_found"}
                return {"ok": True, "messages": parent + state.replies(ts)}
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a caller that timed out and left is part of the faults under test


@contextmanager
def slack_server() -> Iterator[tuple[str, SlackState]]:
    state = SlackState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state
    finally:
        server.shutdown()
        server.server_close()
