"""Wall time of one probe process for plans of 10, 100 and 500 allowed requests.

Starts the stdlib backend and an Envoy with the "allowed" bootstrap from the integration
harness (``tests/integration/probes/probe_harness.py``), all on loopback, then runs
``python -m probes`` once per plan size and concurrency bound, as a probe pod would, and prints
a table. The figures in docs/probes.md come from here:

    python scripts/bench_probes.py                         # the default bound
    python scripts/bench_probes.py --concurrency 1,4,16,64 # how the bound was chosen
    python scripts/bench_probes.py --blackhole --sizes 100 --concurrency 1,4,16,64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the harness lives in the test tree, run from anywhere

from probes.sender import DEFAULT_CONCURRENCY  # noqa: E402
from probes.wire import RunResult, parse_result  # noqa: E402
from tests.integration.probes.probe_harness import (  # noqa: E402
    BackendApp,
    RawServer,
    allowed_config,
    never_answer,
    running,
    start_envoy,
)


@dataclass(frozen=True)
class Sample:
    """One probe process run."""

    requests: int
    concurrency: int
    wall_s: float
    outcomes: Counter[str]
    p50_ms: float
    p95_ms: float


def main() -> None:
    args = _arguments()
    with tempfile.TemporaryDirectory() as scratch, BackendApp() as app, RawServer(never_answer) as silent:
        envoy = start_envoy("bench", allowed_config(app.port), Path(scratch))
        with running(envoy):
            url, timeout_s = (silent.url(), 0.5) if args.blackhole else (envoy.url("/ok"), 3.0)
            bench = Bench(url, timeout_s, Path(scratch))
            bench.run(4, 4)  # warm the page cache and Envoy before measuring
            print(_header())
            for concurrency in args.concurrency:
                for size in args.sizes:
                    runs = [bench.run(size, concurrency) for _ in range(args.repeat)]
                    print(_row(min(runs, key=lambda s: s.wall_s)))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=_int_list, default=[10, 100, 500])
    parser.add_argument("--concurrency", type=_int_list, default=[DEFAULT_CONCURRENCY])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the fastest is shown")
    parser.add_argument(
        "--blackhole",
        action="store_true",
        help="target a server that never answers (timeout_s 0.5) instead of Envoy's allowed path",
    )
    return parser.parse_args()


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


@dataclass(frozen=True)
class Bench:
    """Runs ``python -m probes`` on plans of identical requests to one URL."""

    url: str
    timeout_s: float
    scratch: Path

    def run(self, size: int, concurrency: int) -> Sample:
        requests = [{"id": str(n), "url": self.url, "timeout_s": self.timeout_s} for n in range(size)]
        command = [sys.executable, "-m", "probes", "--plan", "-", "--concurrency", str(concurrency)]
        command += ["--termination-log", str(self.scratch / "termination-log")]
        started = time.perf_counter()
        completed = subprocess.run(
            command,
            input=json.dumps({"run_id": "bench", "requests": requests}),
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
            timeout=600,
        )
        wall = time.perf_counter() - started
        result = parse_result(completed.stdout)
        assert isinstance(result, RunResult)  # noqa: S101 - a compact stdout would be a probe bug
        return _sample(size, concurrency, wall, result)


def _sample(size: int, concurrency: int, wall: float, result: RunResult) -> Sample:
    totals = sorted(r.evidence.total_ms or 0.0 for r in result.results)
    quantiles = statistics.quantiles(totals, n=20, method="inclusive")
    outcomes = Counter(str(r.outcome) for r in result.results)
    return Sample(size, concurrency, wall, outcomes, statistics.median(totals), quantiles[18])


def _header() -> str:
    titles = ("requests", "concurrency", "wall s", "req/s", "p50 ms", "p95 ms", "outcomes")
    return "| " + " | ".join(titles) + " |\n|" + "---|" * len(titles)


def _row(sample: Sample) -> str:
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(sample.outcomes.items()))
    cells = (
        str(sample.requests),
        str(sample.concurrency),
        f"{sample.wall_s:.2f}",
        f"{sample.requests / sample.wall_s:.0f}",
        f"{sample.p50_ms:.1f}",
        f"{sample.p95_ms:.1f}",
        outcomes,
    )
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
