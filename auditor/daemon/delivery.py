"""The one delivery loop of the Slack outbox (``auditor.core.alerting.outbox``).

A step: ``take`` the next due entry (each incident's first unsent entry whose backoff has
passed) and mark it in flight, persist that, ``send`` it (one ``Notifier.deliver`` attempt),
then ``record`` what the attempt came to (sent, retry with backoff, repost, text only, drop)
and persist again. Nothing is sent before its in-flight state is stored, so a crash between
sending and saving is found again (looked up in Slack) rather than sent twice.

``Daemon.deliver`` runs one step at a time, paced, under its lock and leadership checks;
``flush`` runs the steps back to back (one-shot use and tests). Both log each failed or
adopted attempt with Slack's error code (``log_delivery``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from auditor.core.alerting.outbox import Delivery, Entry, Outbox
from auditor.ports import Notifier

Save = Callable[[Outbox], None]
# Called after every attempt with the entry (as it was before the attempt) and its Delivery.
OnAttempt = Callable[[Entry, Delivery], None]


class DeliveryLoop:
    """Sends outbox entries through ``notifier``, one attempt per step; ``log`` is a structlog
    logger (default ``auditor.slack``); ``on_attempt`` sees every attempt (metrics)."""

    def __init__(self, notifier: Notifier, *, log: Any = None, on_attempt: OnAttempt | None = None) -> None:
        self._notifier = notifier
        self._log = log if log is not None else structlog.get_logger("auditor.slack")
        self._on_attempt = on_attempt

    def take(self, outbox: Outbox, now: float) -> tuple[Outbox, Entry] | None:
        """The outbox with the next due entry marked in flight, and that entry as it was before
        (``now``: epoch seconds); None when nothing is due."""
        due = outbox.due(now)
        if not due:
            return None
        entry = due[0]
        return outbox.with_in_flight(entry.id), entry

    def send(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        """One attempt; never raises for what Slack does (see ``auditor.ports.Notifier``)."""
        return self._notifier.deliver(entry, threads)

    def record(self, outbox: Outbox, entry: Entry, delivery: Delivery, now: float) -> tuple[Outbox, float]:
        """The outbox after the attempt, and for a retry the seconds until the next one."""
        outbox, wait = outbox.with_delivery(entry, delivery, now)
        if self._on_attempt is not None:
            self._on_attempt(entry, delivery)
        log_delivery(self._log, entry, delivery, wait)
        return outbox, wait

    def flush(self, outbox: Outbox, save: Save, now: Callable[[], float] = time.time) -> Outbox:
        """Send every entry that is due, persisting (``save``) before and after each attempt;
        failures are scheduled with backoff and never hold back other incidents. ``now``
        returns epoch seconds."""
        while (taken := self.take(outbox, now())) is not None:
            outbox, entry = taken
            save(outbox)
            delivery = self.send(entry, outbox.threads)
            outbox, _ = self.record(outbox, entry, delivery, now())
            save(outbox)
        return outbox


def log_delivery(log: Any, entry: Entry, delivery: Delivery, wait: float) -> None:
    """One log line per failed or adopted attempt, naming Slack's error code."""
    where = {"entry": entry.id, "kind": entry.kind.value, "slack_error": delivery.error or None}
    if delivery.adopted:
        log.info("slack message found already posted; adopted, not sent again", **where)
    elif delivery.action == "retry" and delivery.config:
        log.error("slack refuses the app's configuration; will retry", retry_in_s=wait, **where)
    elif delivery.action == "retry":
        log.warning("slack delivery failed; will retry", retry_in_s=wait, **where)
    elif delivery.action == "repost":
        log.warning("slack message to update or reply to is gone; posting a fresh one", **where)
    elif delivery.action == "text_only":
        log.warning("slack refused the message blocks; sending its text only", **where)
    elif delivery.action == "drop":
        log.error("slack rejected the message for good; dropped", **where)
