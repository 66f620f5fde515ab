"""Drill alerts to Slack (``core.drill.DrillAlerter``), apart from the incident outbox.

A drill alert is one ``chat.postMessage`` (bot mode, to the drill channel and optionally as a
reply in a configured thread) or one webhook post, whose text starts with ``[DRILL]`` and whose
message metadata has the event type ``mesh_auditor_drill`` (never ``mesh_auditor_alert``, the
incidents' type, which the outbox's duplicate lookup adopts). It never enters the outbox, so a
drill neither opens, updates nor resolves a real alert. Delivery is one attempt: a drill that
could not alert reports ``alerted: false``, which is what the drill is there to find out.
"""

from __future__ import annotations

import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

DRILL_EVENT = "mesh_auditor_drill"


class SlackDrillAlerter:
    """Bot mode: ``chat.postMessage`` to ``channel`` (in ``thread_ts`` when given)."""

    def __init__(self, client: WebClient, channel: str, thread_ts: str = "", drill_id: str = "") -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._drill_id = drill_id
        self._log = structlog.get_logger("auditor.drill")

    def send(self, text: str) -> bool:
        """One ``chat.postMessage`` with the ``mesh_auditor_drill`` metadata; True when Slack answers ``ok``. Never
        raises: a refusal or a network error is logged and returns False.
        """
        metadata = {"event_type": DRILL_EVENT, "event_payload": {"drill": self._drill_id}}
        try:
            response = self._client.chat_postMessage(
                channel=self._channel,
                text=text,
                thread_ts=self._thread_ts or None,
                metadata=metadata,
                unfurl_links=False,
            )
        except SlackApiError as error:
            self._log.warning("drill alert refused by Slack", error=str(error.response.get("error")))
            return False
        except (SlackClientError, OSError) as error:
            self._log.warning("drill alert not delivered", error=type(error).__name__)
            return False
        return bool(response.get("ok"))


class WebhookDrillAlerter:
    """Webhook mode: one post to the incoming webhook (its channel is fixed by Slack)."""

    def __init__(self, client: WebhookClient) -> None:
        self._client = client
        self._log = structlog.get_logger("auditor.drill")

    def send(self, text: str) -> bool:
        """One webhook post; True on HTTP 200. Never raises: a network error is logged and returns False."""
        try:
            response = self._client.send(text=text)
        except (SlackClientError, OSError) as error:
            self._log.warning("drill alert not delivered", error=type(error).__name__)
            return False
        return response.status_code == 200


class NoAlerter:
    """Slack is off: a drill can prove detection but never alerting (``alerted: false``)."""

    def send(self, text: str) -> bool:
        """Always False: Slack is off. Never raises."""
        return False
