"""``python -m probes`` as a probe pod runs it: plan on stdin, JSON on stdout, termination log.

Each test starts the real program in a subprocess against loopback servers and checks the
contract other tools rely on: the stdout document, the termination-message file and its
4096-byte cap, and exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from probes.wire import CompactRunResult, Outcome, RunResult, parse_result
from tests.integration.probes.probe_harness import BackendApp, closed_port

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[3]
LIMIT = 4096


@dataclass(frozen=True)
class Run:
    """What one probe process left behind."""

    code: int
    stdout: str
    stderr: str
    termination_log: Path


def run_probes(
    plan: dict[str, Any] | str,
    tmp_path: Path,
    *extra: str,
    termination_log: Path | None = None,
    prefix: tuple[str, ...] = (),
    plan_source: str = "-",
) -> Run:
    log = termination_log or tmp_path / "termination-log"
    text = plan if isinstance(plan, str) else json.dumps(plan)
    command = [*prefix, sys.executable, "-m", "probes", "--plan", plan_source]
    completed = subprocess.run(
        [*command, "--termination-log", str(log), *extra],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=45,
        check=False,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr, log)


def full(run: Run) -> RunResult:
    parsed = parse_result(run.stdout)
    assert isinstance(parsed, RunResult)
    return parsed


def termination_message(run: Run) -> RunResult | CompactRunResult:
    data = run.termination_log.read_bytes()
    assert len(data) <= LIMIT
    return parse_result(data)


def test_small_run_goes_whole_to_stdout_and_termination_log(backend: BackendApp, tmp_path: Path) -> None:
    """Each request's outcome is on stdout, and the same document is the termination message."""
    plan = {
        "schema_version": 1,
        "run_id": "cli-small",
        "requests": [
            {"id": "ok", "url": backend.url("/ok"), "method": "GET", "timeout_s": 3},
            {"id": "forbidden", "url": backend.url("/app-forbidden")},
            {"id": "nobody", "url": f"http://127.0.0.1:{closed_port()}/", "timeout_s": 1},
        ],
    }

    run = run_probes(plan, tmp_path)

    assert run.code == 0, run.stderr
    result = full(run)
    assert result.run_id == "cli-small"
    assert {r.id: r.outcome for r in result.results} == {
        "ok": Outcome.ALLOWED,
        "forbidden": Outcome.APP_DENIED,
        "nobody": Outcome.REFUSED,
    }
    assert json.loads(run.stdout)["schema_version"] == 1
    assert termination_message(run) == result


def test_large_run_writes_compact_termination_message(backend: BackendApp, tmp_path: Path) -> None:
    """Over 4 KiB, the termination message keeps id, outcome and status of every request."""
    ids = [f"request-{n:02d}" for n in range(40)]
    plan = {"run_id": "cli-large", "requests": [{"id": i, "url": backend.url("/ok")} for i in ids]}

    run = run_probes(plan, tmp_path, "--concurrency", "8")

    assert run.code == 0, run.stderr
    assert len(run.stdout.encode()) > LIMIT
    assert [r.evidence.body_prefix for r in full(run).results] == ["ok from the app"] * 40
    message = termination_message(run)
    assert isinstance(message, CompactRunResult)
    assert (message.truncated, message.complete, message.run_id) == (True, True, "cli-large")
    assert [(r.id, r.outcome, r.status) for r in message.results] == [(i, Outcome.ALLOWED, 200) for i in ids]


def test_huge_run_keeps_what_fits_and_says_incomplete(tmp_path: Path) -> None:
    """When even the compact form is too big, a prefix fits and `complete` is false."""
    ids = [f"{n:03d}-" + "x" * 100 for n in range(120)]
    url = f"http://127.0.0.1:{closed_port()}/"
    plan = {"run_id": "cli-huge", "requests": [{"id": i, "url": url} for i in ids]}

    run = run_probes(plan, tmp_path)

    assert run.code == 0, run.stderr
    assert [r.id for r in full(run).results] == ids
    message = termination_message(run)
    assert isinstance(message, CompactRunResult)
    assert (message.truncated, message.complete) == (True, False)
    kept = [r.id for r in message.results]
    assert 0 < len(kept) < len(ids)
    assert kept == ids[: len(kept)]
    assert {r.outcome for r in message.results} == {Outcome.REFUSED}


def test_unwritable_termination_log_is_reported_and_run_still_succeeds(backend: BackendApp, tmp_path: Path) -> None:
    """A missing termination-log directory costs a stderr line, not the run."""
    plan = {"run_id": "cli-nolog", "requests": [{"id": "ok", "url": backend.url("/ok")}]}
    log = tmp_path / "no-such-dir" / "termination-log"

    run = run_probes(plan, tmp_path, termination_log=log)

    assert run.code == 0
    assert "cannot write the termination message" in run.stderr
    assert str(log) in run.stderr
    assert [r.outcome for r in full(run).results] == [Outcome.ALLOWED]


@pytest.mark.parametrize(
    ("plan", "named"),
    [
        ('{"run_id": "r", "requests": [{"id": "a", "url": "ftp://x/"}]}', "requests.0.url"),
        (
            '{"run_id": "r", "requests": [{"id": "a", "url": "http://x/", "timeout_s": 0}]}',
            "timeout_s",
        ),
        ('{"requests": []}', "run_id"),
        ('{"run_id": "r", "requests": [], "concurency": 4}', "concurency"),
        ("not json", "Invalid JSON"),
    ],
)
def test_invalid_plan_exits_2_naming_the_field(plan: str, named: str, tmp_path: Path) -> None:
    """A bad plan exits 2 before sending anything, and the message names what is wrong."""
    run = run_probes(plan, tmp_path)

    assert run.code == 2
    assert named in run.stderr
    assert run.stdout == ""
    assert not run.termination_log.exists()


def test_plan_is_read_from_a_file(backend: BackendApp, tmp_path: Path) -> None:
    """--plan FILE reads the plan from that file (stdin is ignored)."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"run_id": "from-file", "requests": [{"id": "ok", "url": backend.url("/ok")}]}))

    run = run_probes("ignored", tmp_path, plan_source=str(plan_file))

    assert run.code == 0, run.stderr
    assert [(r.id, r.outcome) for r in full(run).results] == [("ok", Outcome.ALLOWED)]


def test_missing_plan_file_exits_2_naming_it(tmp_path: Path) -> None:
    """An unreadable plan file is bad input: exit 2, and the message names the file."""
    missing = tmp_path / "nowhere.json"

    run = run_probes("", tmp_path, plan_source=str(missing))

    assert run.code == 2
    assert str(missing) in run.stderr


def test_bad_concurrency_flag_exits_2(tmp_path: Path) -> None:
    """--concurrency outside 1..256 is a usage error."""
    run = run_probes('{"run_id": "r", "requests": []}', tmp_path, "--concurrency", "0")

    assert run.code == 2
    assert "--concurrency" in run.stderr


def test_real_resolver_failure_is_dns_failure(tmp_path: Path) -> None:
    """With the system resolver unreachable, a lookup fails fast as dns-failure, not timeout.

    The probe runs in a fresh network namespace (loopback only, and down), so the lookup of
    nonexistent.invalid goes through the real glibc resolver yet no packet leaves the process's
    namespace: this machine's resolver is not on loopback.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("util-linux's unshare is needed to isolate the resolver test")
    plan = {"run_id": "dns", "requests": [{"id": "x", "url": "http://nonexistent.invalid/"}]}

    run = run_probes(plan, tmp_path, prefix=(unshare, "--net"))

    assert run.code == 0, run.stderr
    (result,) = full(run).results
    assert result.outcome is Outcome.DNS_FAILURE
    assert result.evidence.error is not None
    assert any(link.startswith("gaierror") for link in result.evidence.error.chain)
