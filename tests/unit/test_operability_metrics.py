"""/metrics for operators: build info, process metrics, and a failed-write counter per sink.

Each sink's failure is provoked by a writer that raises (or, for Slack, a delivery attempt that
Slack did not accept) and must show as exactly one increment of that sink's series, with the
error still raised to the caller as before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from auditor import __version__
from auditor.core.alerting.outbox import Action, Delivery, Entry, EntryKind
from auditor.daemon.metrics import SINKS, DaemonMetrics
from auditor.daemon.sinks import AwsSink, CountingNotifier, PolicyReportSink
from tests.cases import run_report

RUN = run_report([], at=dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC))


def _failures(metrics: DaemonMetrics) -> dict[str, float]:
    return {sink: metrics.sink_write_failures.labels(sink)._value.get() for sink in SINKS}


def test_exposition_has_build_info_process_metrics_and_every_sink_at_zero() -> None:
    text = DaemonMetrics().exposition().decode()
    assert 'mesh_auditor_build_info{python_version="' in text
    assert f'version="{__version__}"}} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert "process_cpu_seconds_total" in text
    for sink in ("slack", "s3", "securityhub", "cloudwatch", "policyreports"):
        assert f'mesh_auditor_sink_write_failures_total{{sink="{sink}"}} 0.0' in text


class _Raises:
    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise ConnectionError(name)

        return fail


class _Works:
    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda *_args, **_kwargs: ()  # Security Hub's publish: no finding refused


@pytest.mark.parametrize("failing", ["s3", "securityhub", "cloudwatch"])
def test_a_failed_aws_write_counts_once_for_its_sink_and_still_raises(failing: str) -> None:
    metrics = DaemonMetrics()
    writers = {name: (_Raises() if name == failing else _Works()) for name in ("s3", "securityhub", "cloudwatch")}
    sink = AwsSink(
        archive=writers["s3"],
        hub=writers["securityhub"],
        metrics=writers["cloudwatch"],
        on_failure=metrics.sink_write_failed,
    )
    with pytest.raises(ConnectionError):
        sink.publish(RUN)
    assert _failures(metrics) == {s: (1.0 if s == failing else 0.0) for s in SINKS}


def test_a_failed_policyreport_write_counts_for_policyreports() -> None:
    metrics = DaemonMetrics()

    class Writer:
        def write(self, reports: Sequence[Any]) -> int:
            raise ConnectionError("apiserver")

    with pytest.raises(ConnectionError):
        PolicyReportSink(Writer(), on_failure=metrics.sink_write_failed).publish(RUN)
    assert _failures(metrics)["policyreports"] == 1.0


def test_security_hub_refusing_findings_counts_once_per_publish() -> None:
    metrics = DaemonMetrics()

    class Hub:
        def publish(self, findings: Sequence[Any], at: dt.datetime) -> list[str]:
            return ["finding-1", "finding-2"]  # BatchImportFindings answered with two FailedFindings

        def forget(self) -> None:
            return None

    AwsSink(hub=Hub(), on_failure=metrics.sink_write_failed).publish(RUN)
    assert _failures(metrics) == {s: (1.0 if s == "securityhub" else 0.0) for s in SINKS}


ENTRY = Entry("a", "fp", EntryKind.POST, {"text": "a", "blocks": []})


class _Answers:
    """A notifier whose every attempt comes to ``action`` (what the Slack adapter classified)."""

    def __init__(self, action: Action) -> None:
        self.action: Action = action

    def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
        return Delivery(self.action, ts="1.0" if self.action == "sent" else None, error="x")


@pytest.mark.parametrize(
    ("action", "failures"),
    [("sent", 0.0), ("retry", 1.0), ("repost", 1.0), ("text_only", 1.0), ("drop", 1.0)],
)
def test_slack_counts_each_delivery_attempt_slack_did_not_accept(action: Action, failures: float) -> None:
    metrics = DaemonMetrics()
    delivery = CountingNotifier(_Answers(action), metrics.sink_write_failed).deliver(ENTRY, {})
    assert delivery.action == action  # passed on unchanged: the daemon still decides what follows
    assert _failures(metrics) == {s: (failures if s == "slack" else 0.0) for s in SINKS}


def test_slack_counts_once_per_attempt_so_retries_then_a_drop_count_each() -> None:
    metrics = DaemonMetrics()
    inner = _Answers("retry")
    notifier = CountingNotifier(inner, metrics.sink_write_failed)
    for _ in range(3):
        notifier.deliver(ENTRY, {})
    inner.action = "drop"
    notifier.deliver(ENTRY, {})
    assert _failures(metrics)["slack"] == 4.0


def test_slack_delivery_that_raises_counts_once_and_still_raises() -> None:
    metrics = DaemonMetrics()

    class Broken:
        def deliver(self, entry: Entry, threads: Mapping[str, str]) -> Delivery:
            raise ConnectionError("slack")

    with pytest.raises(ConnectionError):
        CountingNotifier(Broken(), metrics.sink_write_failed).deliver(ENTRY, {})
    assert _failures(metrics)["slack"] == 1.0
