"""/metrics for operators: build info, process metrics, and a failed-write counter per sink.

Each sink's failure is provoked by a writer that raises (or, for Slack, a notifier that stops
with an entry unsent) and must show as exactly one increment of that sink's series, with the
error still raised to the caller as before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from auditor import __version__
from auditor.core.outbox import Entry, EntryKind, Outbox
from auditor.daemon.metrics import SINKS, DaemonMetrics
from auditor.daemon.sinks import AwsSink, CountingNotifier, PolicyReportSink

RUN = {"at": dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC).isoformat(), "kind": "static", "id": "r1"}


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
        return lambda *_args, **_kwargs: None


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
        sink.publish([], RUN)
    assert _failures(metrics) == {s: (1.0 if s == failing else 0.0) for s in SINKS}


def test_a_failed_policyreport_write_counts_for_policyreports() -> None:
    metrics = DaemonMetrics()

    class Writer:
        def write(self, reports: Sequence[Any]) -> int:
            raise ConnectionError("apiserver")

    with pytest.raises(ConnectionError):
        PolicyReportSink(Writer(), on_failure=metrics.sink_write_failed).publish([], RUN)
    assert _failures(metrics)["policyreports"] == 1.0


def _outbox() -> Outbox:
    return Outbox().with_enqueued(Entry("a", "fp", EntryKind.POST, {"text": "a", "blocks": []}))


class _Delivers:
    def flush(self, outbox: Outbox, save: Callable[[Outbox], None]) -> Outbox:
        return outbox.with_sent("a", "1.0")


class _SlackDown:
    def flush(self, outbox: Outbox, save: Callable[[Outbox], None]) -> Outbox:
        return outbox  # stops at the first entry it could not send, as the notifiers do


@pytest.mark.parametrize(("inner", "failures"), [(_Delivers(), 0.0), (_SlackDown(), 1.0)])
def test_slack_counts_a_flush_that_left_an_entry_unsent(inner: Any, failures: float) -> None:
    metrics = DaemonMetrics()
    CountingNotifier(inner, metrics.sink_write_failed).flush(_outbox(), lambda _outbox: None)
    assert _failures(metrics)["slack"] == failures
