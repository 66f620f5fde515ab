"""Sends outbox entries to Slack with slack-sdk, one call at a time, and says what happened.

Bot mode (``WebClient``): an incident's first message anchors a thread; changes re-render it with
``chat.update`` and reply in the thread; resolutions reply and update. Every posted message
carries its outbox id in Slack message metadata, so an entry left ``in-flight`` (a crash, a
timeout, a 5xx after which Slack may have stored it) is looked up first (``conversations.history``
for top-level messages, ``conversations.replies`` for thread replies) and adopted instead of
posted twice. When the lookup itself fails, nothing is sent (retry later).

slack-sdk retries nothing on its own here: a retried ``chat.postMessage`` after a timeout could
post twice, and a ``Retry-After`` sleep inside the call would hold up shutdown. Each failure is
classified by Slack's error code (https://api.slack.com/methods/chat.postMessage#errors,
https://api.slack.com/methods/chat.update#errors) into a ``Delivery``:

- ``retry``: 429 ``ratelimited`` (after ``Retry-After``), 5xx, ``internal_error``,
  ``fatal_error``, ``service_unavailable``, ``request_timeout``, timeouts and connection errors.
- ``retry`` with ``config=True``: the app's configuration, true for every message until an
  operator fixes it (``invalid_auth``, ``not_authed``, ``token_revoked``, ``account_inactive``,
  ``missing_scope``, ``channel_not_found``, ``not_in_channel``, ``is_archived`` ...): kept, retried
  slowly, logged as an error; nothing is lost while the token or channel is fixed.
- ``repost``: the message to update or reply to is gone (``message_not_found``,
  ``cant_update_message``, ``edit_window_closed``, ``thread_not_found``): post a fresh message.
- ``text_only``: Slack refused the content (``msg_too_long``, ``invalid_blocks``,
  ``invalid_blocks_format``, ``too_many_blocks``...): send the plain text once more, no blocks.
- ``drop``: anything else Slack says is wrong with this one request (after ``text_only``).

Webhook mode (``WebhookClient``) is for teams without a bot: it can only post new messages, so
it cannot update or thread; updates are skipped and a crash mid-send may repeat one message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from auditor.core.alerting.outbox import Delivery, Entry, EntryKind, EntryState

METADATA_EVENT = "mesh_auditor_alert"

TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
CONFIGURATION = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
        "team_access_not_granted",
        "ekm_access_denied",
        "access_denied",
    }
)
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed", "thread_not_found"})
CONTENT = frozenset(
    {
        "msg_too_long",
        "msg_blocks_too_long",
        "invalid_blocks",
        "invalid_blocks_format",
        "too_many_blocks",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
    }
)


def classify(error: Exception, entry: Entry) -> Delivery:
    """A failed call -> what to do about ``entry`` (see the module docstring)."""
    if isinstance(error, SlackApiError):
        status = int(getattr(error.response, "status_code", 0) or 0)
        code = str(error.response.get("error") or f"http_{status}")
        if status == 429 or code in {"ratelimited", "rate_limited"}:
            return Delivery("retry", error=code, retry_after=_retry_after(error.response))
        if status >= 500 or code in TRANSIENT:
            return Delivery("retry", error=code, reached=True)
        if code in CONFIGURATION:
            return Delivery("retry", error=code, config=True)
        if code in MESSAGE_GONE and entry.kind in {EntryKind.UPDATE, EntryKind.REPLY}:
            return Delivery("repost", error=code)
        if code in CONTENT and entry.payload.get("blocks"):
            return Delivery("text_only", error=code)
        return Delivery("drop", error=code)
    if isinstance(error, TimeoutError):
        return Delivery("retry", error="timeout", reached=True)
    return Delivery("retry", error=type(error).__name__, reached=True)  # connection errors


def _retry_after(response: Any) -> float:
    headers = {str(k).lower(): v for k, v in dict(getattr(response, "headers", {}) or {}).items()}
    value = headers.get("retry-after")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(1.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


class SlackNotifier:
    """The ``Notifier`` port on a bot token (``chat.postMessage``, ``chat.update``, and
    ``conversations.history``/``replies`` to find an earlier attempt), in one ``channel``."""

    def __init__(self, client: WebClient, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._log = structlog.get_logger("auditor.slack")

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        """One attempt at ``entry`` (in the state it had before this attempt)."""
        try:
            if entry.state is EntryState.IN_FLIGHT and (found := self._already_posted(entry, threads)) is not None:
                return Delivery("sent", ts=found, adopted=True)
            return Delivery("sent", ts=self._send(entry, threads))
        except (SlackClientError, OSError) as error:
            return classify(error, entry)

    def _send(self, entry: Entry, threads: Mapping[str, str]) -> str:
        payload = dict(entry.payload)
        thread = threads.get(entry.fingerprint)
        blocks = payload.get("blocks")
        if entry.kind is EntryKind.UPDATE:
            if thread is None:
                return "update:no-message"  # its post was dropped: nothing to re-render
            self._client.chat_update(channel=self._channel, ts=thread, text=payload["text"], blocks=blocks)
            return thread
        reply_to = thread if entry.kind is EntryKind.REPLY else None
        response = self._client.chat_postMessage(
            channel=self._channel,
            text=payload["text"],
            blocks=blocks,
            thread_ts=reply_to,
            metadata={"event_type": METADATA_EVENT, "event_payload": {"outbox_id": entry.id}},
        )
        return str(response["ts"])

    def _already_posted(self, entry: Entry, threads: Mapping[str, str]) -> str | None:
        """Slack's copy of ``entry`` if a previous attempt stored it. Raises when Slack cannot be
        asked: sending blind could post twice."""
        if entry.kind is EntryKind.UPDATE:
            return None  # an update is idempotent: simply send it again
        thread = threads.get(entry.fingerprint) if entry.kind is EntryKind.REPLY else None
        if thread is not None:
            found = self._client.conversations_replies(
                channel=self._channel, ts=thread, limit=1000, include_all_metadata=True
            )
        else:
            found = self._client.conversations_history(channel=self._channel, limit=200, include_all_metadata=True)
        messages: list[dict[str, Any]] = found.get("messages", [])
        for message in messages:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if payload.get("outbox_id") == entry.id:
                return str(message["ts"])
        return None


class WebhookNotifier:
    """Incoming-webhook delivery: new messages only (no update, no thread, no dedupe)."""

    def __init__(self, webhook: WebhookClient) -> None:
        self._webhook = webhook

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        """One webhook post of ``entry`` (an update is skipped as sent): ``sent`` on HTTP 200, ``retry`` on 429, 5xx
        or a network error, ``retry`` marked ``config`` for a configuration error code (``CONFIGURATION``, a bad
        token, an archived channel), else ``drop``. Never raises.
        """
        if entry.kind is EntryKind.UPDATE:
            return Delivery("sent", ts="webhook:skipped")
        try:
            response = self._webhook.send(text=entry.payload["text"], blocks=entry.payload.get("blocks"))
        except (SlackClientError, OSError) as error:
            return Delivery("retry", error=type(error).__name__, reached=True)
        if response.status_code == 200:
            return Delivery("sent", ts="webhook")
        if response.status_code == 429 or response.status_code >= 500:
            return Delivery("retry", error=f"http_{response.status_code}")
        # Webhooks answer errors as text: invalid_token, channel_not_found, no_service ...
        code = (response.body or f"http_{response.status_code}").strip()[:100]
        if code in CONFIGURATION or code in {"invalid_token", "no_service", "no_active_hooks", "channel_is_archived"}:
            return Delivery("retry", error=code, config=True)
        return Delivery("drop", error=code)


def build_web_client(token: str, base_url: str | None = None, timeout: int = 10) -> WebClient:
    """A client that retries nothing itself (see the module docstring: the outbox retries)."""
    kwargs: dict[str, Any] = {"token": token, "timeout": timeout}
    if base_url:
        kwargs["base_url"] = base_url
    client = WebClient(**kwargs)
    client.retry_handlers = []
    return client
