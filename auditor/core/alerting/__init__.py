"""Alerting: drift state per finding and its transitions (``drift``), and the Slack outbox that
delivers them exactly once, in order per incident (``outbox``)."""
