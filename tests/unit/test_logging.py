"""Issue #18.9: every logger (the standard library's, such as APScheduler's, warnings, uncaught
exceptions in threads) comes out through structlog's JSON renderer, one object per line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.cases import ROOT

PROGRAM = textwrap.dedent(
    """
    import logging, threading, warnings
    from auditor.app import configure_logging
    from auditor.settings import LoggingSettings, Settings

    configure_logging(Settings(logging=LoggingSettings(format="json", level="info")))
    try:
        raise ValueError("job failed")
    except ValueError:
        logging.getLogger("apscheduler.executors.default").exception("Job raised an exception")
    warnings.warn("something is deprecated", DeprecationWarning, stacklevel=1)
    worker = threading.Thread(target=lambda: 1 / 0, name="scheduler-worker")
    worker.start()
    worker.join()
    import structlog
    structlog.get_logger("auditor.daemon").info("audit evaluated", findings=3)
    """
)


def test_every_log_line_is_one_json_object() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", PROGRAM],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
    )
    records = [json.loads(line) for line in done.stderr.splitlines()]  # fails on any plain-text line
    assert [(r.get("logger"), r["event"].splitlines()[0]) for r in records] == [
        ("apscheduler.executors.default", "Job raised an exception"),
        ("py.warnings", "<string>:11: DeprecationWarning: something is deprecated"),
        (None, "uncaught exception in a thread"),
        (None, "audit evaluated"),
    ]
    assert "ValueError: job failed" in records[0]["exception"]
    assert "ZeroDivisionError" in records[2]["exception"]
    assert records[2]["thread"] == "scheduler-worker"


CONCURRENT = textwrap.dedent(
    """
    import json, logging, sys, threading
    import structlog
    from auditor.app import configure_logging
    from auditor.settings import LoggingSettings, Settings

    class Writes:  # records every write() call made to stderr
        def __init__(self, real):
            self.real, self.calls = real, []
        def write(self, text):
            self.calls.append(text)
            return self.real.write(text)
        def flush(self):
            self.real.flush()

    sys.stderr = writes = Writes(sys.stderr)
    configure_logging(Settings(logging=LoggingSettings(format="json", level="info")))
    ours, theirs = structlog.get_logger("auditor.daemon"), logging.getLogger("urllib3.connectionpool")

    def write(n):
        for i in range(200):
            (ours.info("audit evaluated", n=n, i=i) if n % 2 else
             theirs.warning("Retrying after connection broken %s %s", n, i))

    workers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    [w.start() for w in workers]
    [w.join() for w in workers]
    print(json.dumps([c for c in writes.calls if c]))
    """
)


def test_each_log_line_is_written_whole_by_one_handler() -> None:
    """structlog's lines and the standard library's go through one handler (one lock): each line is
    one write() call ending in its newline, so lines from concurrent threads and loggers cannot
    interleave within a line (found by the API-outage test: two JSON objects on one line, because
    structlog printed the line and its newline in two writes beside the stdlib handler)."""
    done = subprocess.run(
        [sys.executable, "-c", CONCURRENT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
    )
    calls = json.loads(done.stdout)
    assert len(calls) == 4 * 200
    assert all(c.endswith("\n") and c.count("\n") == 1 for c in calls)
    assert {json.loads(c).get("logger") for c in calls} == {"urllib3.connectionpool", None}
