"""Sends the outbox to Slack with slack-sdk, in order, exactly once.

Bot mode (``WebClient``): an alert's first message anchors a thread; changes re-render it with
``chat.update`` and reply in the thread; resolutions reply and update. Every posted message
carries its outbox id in Slack message metadata, so an entry left ``in-flight`` by a crash is
found in ``conversations.history`` and adopted instead of posted twice. 429s honour
``Retry-After`` and 5xx/connection errors are retried by slack-sdk's retry handlers; when Slack
stays down, ``flush`` stops at the first unsent entry and the next cycle resumes from there.

Webhook mode (``WebhookClient``) is for teams without a bot: it can only post new messages, so
it cannot update or thread; updates are skipped and a crash mid-send may repeat one message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from auditor.core.outbox import Entry, EntryKind, EntryState, Outbox

METADATA_EVENT = "mesh_auditor_alert"
Save = Callable[[Outbox], None]


def with_retries(client: WebClient, *, rate_limit_retries: int = 5, server_error_retries: int = 3) -> WebClient:
    client.retry_handlers.extend(
        [
            RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
            ServerErrorRetryHandler(max_retry_count=server_error_retries),
        ]
    )
    return client


class SlackNotifier:
    def __init__(self, client: WebClient, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._log = structlog.get_logger("auditor.slack")

    def flush(self, outbox: Outbox, save: Save) -> Outbox:
        """Send every unsent entry in order; persist after each step; stop at the first failure."""
        while (entry := outbox.next_unsent()) is not None:
            if entry.state is EntryState.IN_FLIGHT and (found := self._already_posted(entry)) is not None:
                outbox = outbox.with_sent(entry.id, found)
                save(outbox)
                continue
            outbox = outbox.with_in_flight(entry.id)
            save(outbox)
            try:
                ts = self._send(entry, outbox.threads)
            except (SlackApiError, SlackClientError, OSError) as error:
                self._log.warning(
                    "slack delivery failed; will retry next cycle", entry=entry.id, error=type(error).__name__
                )
                return outbox
            outbox = outbox.with_sent(entry.id, ts)
            save(outbox)
        return outbox

    def _send(self, entry: Entry, threads: Mapping[str, str]) -> str:
        payload = dict(entry.payload)
        thread = threads.get(entry.fingerprint)
        if entry.kind is EntryKind.UPDATE and thread is not None:
            self._client.chat_update(channel=self._channel, ts=thread, text=payload["text"], blocks=payload["blocks"])
            return thread
        reply_to = thread if entry.kind is EntryKind.REPLY else None
        response = self._client.chat_postMessage(
            channel=self._channel,
            text=payload["text"],
            blocks=payload["blocks"],
            thread_ts=reply_to,
            metadata={"event_type": METADATA_EVENT, "event_payload": {"outbox_id": entry.id}},
        )
        return str(response["ts"])

    def _already_posted(self, entry: Entry) -> str | None:
        if entry.kind is EntryKind.UPDATE:
            return None  # an update is idempotent: simply send it again
        try:
            history = self._client.conversations_history(channel=self._channel, limit=200, include_all_metadata=True)
        except (SlackApiError, SlackClientError, OSError):
            return None
        messages: list[dict[str, Any]] = history.get("messages", [])
        for message in messages:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if payload.get("outbox_id") == entry.id:
                return str(message["ts"])
        return None


class WebhookNotifier:
    """Incoming-webhook delivery: new messages only (no update, no thread, no dedupe)."""

    def __init__(self, webhook: WebhookClient) -> None:
        self._webhook = webhook

    def flush(self, outbox: Outbox, save: Save) -> Outbox:
        while (entry := outbox.next_unsent()) is not None:
            if entry.kind is EntryKind.UPDATE:
                outbox = outbox.with_sent(entry.id, "webhook:skipped")
                save(outbox)
                continue
            outbox = outbox.with_in_flight(entry.id)
            save(outbox)
            try:
                response = self._webhook.send(text=entry.payload["text"], blocks=entry.payload["blocks"])
            except (SlackClientError, OSError):
                return outbox
            if response.status_code != 200:
                return outbox
            outbox = outbox.with_sent(entry.id, "webhook")
            save(outbox)
        return outbox


def build_web_client(token: str, base_url: str | None = None, timeout: int = 10) -> WebClient:
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout}
    if base_url:
        kwargs["base_url"] = base_url
    client = WebClient(**kwargs)
    client.retry_handlers = [ConnectionErrorRetryHandler(max_retry_count=2)]
    return with_retries(client)
