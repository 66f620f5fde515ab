"""How ``probes.termination`` fits a result into the 4096-byte termination message."""

from __future__ import annotations

import io
from pathlib import Path

from probes.termination import (
    TERMINATION_MESSAGE_LIMIT,
    fit_termination_message,
    write_termination_message,
)
from probes.wire import (
    CompactResult,
    CompactRunResult,
    Evidence,
    Outcome,
    ProbeResult,
    RunResult,
    parse_result,
)


def result_with(count: int, id_length: int = 8, body: str = "ok") -> RunResult:
    evidence = Evidence(status=200, total_ms=1.25, headers={"server": "envoy"}, body_prefix=body)
    return RunResult(
        run_id="run",
        results=tuple(
            ProbeResult(id=f"{n:04d}".ljust(id_length, "-"), outcome=Outcome.ALLOWED, evidence=evidence)
            for n in range(count)
        ),
    )


def compact_ids(message: bytes) -> list[str]:
    parsed = parse_result(message)
    assert isinstance(parsed, CompactRunResult)
    return [r.id for r in parsed.results]


def test_small_result_is_written_whole() -> None:
    """Under the limit, the message is exactly the full result."""
    result = result_with(3)

    message = fit_termination_message(result)

    assert message == result.model_dump_json().encode()
    assert parse_result(message) == result


def test_large_result_becomes_compact_with_every_entry() -> None:
    """Over the limit, every request keeps its id, outcome and status."""
    result = result_with(30, body="b" * 200)
    assert len(result.model_dump_json()) > TERMINATION_MESSAGE_LIMIT

    message = fit_termination_message(result)

    parsed = parse_result(message)
    assert len(message) <= TERMINATION_MESSAGE_LIMIT
    assert isinstance(parsed, CompactRunResult)
    assert (parsed.truncated, parsed.complete) == (True, True)
    assert parsed.results == tuple(CompactResult(id=r.id, outcome=Outcome.ALLOWED, status=200) for r in result.results)


def test_huge_result_keeps_the_longest_prefix_that_fits() -> None:
    """If even compact is too big, the longest fitting prefix is kept and marked incomplete."""
    result = result_with(200, id_length=60)

    message = fit_termination_message(result)

    kept = compact_ids(message)
    parsed = parse_result(message)
    assert isinstance(parsed, CompactRunResult)
    assert parsed.complete is False
    assert len(message) <= TERMINATION_MESSAGE_LIMIT
    assert kept == [r.id for r in result.results[: len(kept)]]
    one_more = CompactRunResult(
        run_id="run",
        truncated=True,
        complete=False,
        results=tuple(CompactResult(id=r.id, outcome=r.outcome, status=200) for r in result.results[: len(kept) + 1]),
    )
    assert len(one_more.model_dump_json()) > TERMINATION_MESSAGE_LIMIT  # nothing fitting left out


def test_limit_too_small_for_any_entry_still_gives_a_valid_message() -> None:
    """The header alone is a valid, incomplete message."""
    message = fit_termination_message(result_with(5), limit=120)

    assert compact_ids(message) == []
    assert len(message) <= 120


def test_write_reports_an_unwritable_path_and_returns_false(tmp_path: Path) -> None:
    """A path that cannot be written is reported on stderr, never raised."""
    stderr = io.StringIO()
    path = tmp_path / "missing" / "termination-log"

    assert write_termination_message(path, result_with(1), stderr) is False
    assert str(path) in stderr.getvalue()
    assert "stdout" in stderr.getvalue()


def test_write_puts_the_fitted_message_in_the_file(tmp_path: Path) -> None:
    """A writable path receives the fitted message."""
    path = tmp_path / "termination-log"
    result = result_with(2)

    assert write_termination_message(path, result, io.StringIO()) is True
    assert path.read_bytes() == fit_termination_message(result)
