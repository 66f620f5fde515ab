"""What a probe run brought back: per batch, the observations or the reason there are none.

Produced by a ``ports.ProbeRunner`` (the probe-pod adapter, or a fake in tests) from a
``probeplan.RunPlan``; read by ``verdict``. A batch whose pod never ran, or whose report was
rejected, carries a ``BatchProblem`` and no observations: the verdict turns that into ERROR or
INCONCLUSIVE findings, never into a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from auditor.core.model import Status
from probes.wire import CompactRunResult, Outcome, RunResult


@dataclass(frozen=True, slots=True)
class Observation:
    """What the probe saw for one request (``probes.wire`` evidence, minus timings)."""

    outcome: Outcome
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body_prefix: str | None = None
    error: str | None = None
    # From the termination message's compact form: response headers and body were not kept.
    compact: bool = False

    def describe(self) -> str:
        """``"<outcome> (HTTP <status>): <error>"``, each part only when known. Never raises."""
        status = f" (HTTP {self.status})" if self.status is not None else ""
        error = f": {self.error}" if self.error else ""
        return f"{self.outcome.value}{status}{error}"


@dataclass(frozen=True, slots=True)
class BatchProblem:
    """Why a batch has no usable observations. INCONCLUSIVE: the pod never ran to the end
    (admission, capacity, image pull, deadline). ERROR: it ran, but its report is unusable."""

    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class BatchReport:
    """One probe pod's result: ``observations`` by request id, or a ``problem`` and none."""

    batch: str
    pod: str  # "Pod <namespace>/<name>", or "(not created)"
    observations: Mapping[str, Observation] = field(default_factory=dict)
    problem: BatchProblem | None = None
    incomplete: bool = False  # the report dropped trailing results to fit 4096 bytes


@dataclass(frozen=True, slots=True)
class RunReport:
    """Every batch's result of one run (``run_id``), as the ``ProbeRunner`` port returns it."""

    run_id: str
    batches: tuple[BatchReport, ...]

    def batch(self, key: str) -> BatchReport | None:
        """The report of batch ``key``; None when the runner returned none for it (not proven)."""
        return next((b for b in self.batches if b.batch == key), None)


def observations_from(result: RunResult | CompactRunResult) -> dict[str, Observation]:
    """The wire result as observations, keyed by request id."""
    if isinstance(result, CompactRunResult):
        return {r.id: Observation(r.outcome, r.status, compact=True) for r in result.results}
    return {
        r.id: Observation(
            r.outcome,
            r.evidence.status,
            dict(r.evidence.headers),
            r.evidence.body_prefix,
            f"{r.evidence.error.type}: {r.evidence.error.message}" if r.evidence.error else None,
        )
        for r in result.results
    }
