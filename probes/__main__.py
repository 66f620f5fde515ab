"""Command line of the probe program: ``python -m probes --plan FILE|-``.

Reads a plan (``wire.ProbePlan``), runs it (``sender``), prints the full ``wire.RunResult`` as
one JSON line on stdout and writes the size-capped form to the termination message
(``termination``). Header values the plan refers to (``header_refs``) come from the
environment, where the kubelet put them from a Secret. Exit codes: 0 whenever the plan ran,
whatever the outcomes; 2 for bad arguments, an unreadable or invalid plan, or a referenced header
variable that is unset (the message names the field, never a value).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from probes.sender import DEFAULT_CONCURRENCY, run_plan
from probes.termination import write_termination_message
from probes.wire import PlanError, ProbePlan, parse_plan, with_header_values

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own code for bad arguments; a bad plan is bad input just the same
_MAX_CONCURRENCY = 256  # same cap as the plan's field


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe program; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        plan = with_header_values(parse_plan(_read_plan(args.plan)), os.environ)
    except (OSError, PlanError) as exc:
        print(f"probes: invalid plan {args.plan}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(run_plan(plan, _concurrency(args.concurrency, plan)))
    sys.stdout.write(result.model_dump_json() + "\n")
    sys.stdout.flush()
    write_termination_message(args.termination_log, result)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m probes", description="Send a probe plan and classify each outcome."
    )
    parser.add_argument("--plan", required=True, help="plan JSON file, or - for stdin")
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path("/dev/termination-log"),
        help="where Kubernetes reads the termination message (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency_arg,
        default=None,
        help=f"requests in flight at once; overrides the plan (default: {DEFAULT_CONCURRENCY})",
    )
    return parser


def _concurrency_arg(text: str) -> int:
    value = int(text)  # argparse turns the ValueError into a usage error
    if not 1 <= value <= _MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_CONCURRENCY}")
    return value


def _concurrency(flag: int | None, plan: ProbePlan) -> int:
    # The operator's flag beats the plan, which beats the default.
    return flag or plan.concurrency or DEFAULT_CONCURRENCY


def _read_plan(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    return Path(source).read_bytes()


if __name__ == "__main__":
    raise SystemExit(main())
