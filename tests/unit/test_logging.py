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
