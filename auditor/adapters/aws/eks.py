"""Verifies the cluster really is an EKS Auto Mode cluster (``describe_cluster`` + NodePools).

Probe pods select Auto Mode nodes (semantics §6); on a cluster without Auto Mode they would stay
Pending, so the auditor reports the cluster's mode as its own finding instead of letting every
probe time out. The verdict is ``auditor.core.checks.automode``: built-in node pools, or custom
NodePools on an Auto Mode NodeClass (read by ``auditor.adapters.k8s.nodepools`` when the built-in
ones are disabled). Needs ``eks:DescribeCluster`` on the cluster and, in the cluster, list of
``nodepools.karpenter.sh`` and ``nodeclasses.eks.amazonaws.com`` (deploy/rbac.yaml).

``AutoModeCheck`` is what the daemon calls at every static audit: a definitive verdict (PASS or
FAIL) is reused for ``DEFINITIVE_FOR_S``; an ERROR (throttling, a 5xx, an unreachable endpoint,
a refusal, unreadable NodePools) is never kept beyond a short, growing retry delay, during which
the finding stays that ERROR (never a PASS from an older answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker

from auditor.core.checks.automode import NodePools, auto_mode_verdict
from auditor.core.checks.catalog import AUTO_MODE
from auditor.core.model import Finding, Fix, Status


def auto_mode_finding(eks: Any, cluster: str, node_pools: Callable[[], NodePools] | None = None) -> Finding:
    """``node_pools`` reads the cluster's NodePools; it is called only when the built-in ones are off."""
    try:
        described = eks.describe_cluster(name=cluster)["cluster"]
    except (ClientError, BotoCoreError) as error:
        kind = "transient, retried at a later audit" if transient(error) else "check the IAM role and cluster name"
        message = f"eks:DescribeCluster failed ({kind}): {error}"
        fix = Fix(note=f"No YAML fix: nothing was proven wrong; the auditor could not describe the cluster ({kind})")
        return Finding(AUTO_MODE, f"cluster/{cluster}", Status.ERROR, message, fix=fix)
    compute = described.get("computeConfig") or {}
    pools = None
    if compute.get("enabled") and not compute.get("nodePools") and node_pools is not None:
        pools = node_pools()
    return auto_mode_verdict(cluster, compute, pools)


_THROTTLED, _TRANSIENT = ThrottledRetryableChecker(), TransientRetryableChecker()


def transient(error: ClientError | BotoCoreError) -> bool:
    """Throttling, a 5xx, a timeout or an unreachable endpoint: worth asking again. botocore's own
    classification (the standard retry mode's), so it grows with botocore's list of codes."""
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        context = RetryContext(attempt_number=1, parsed_response=dict(error.response))
        return status >= 500 or _THROTTLED.is_retryable(context) or _TRANSIENT.is_retryable(context)
    return bool(_TRANSIENT.is_retryable(RetryContext(attempt_number=1, caught_exception=error)))


# Auto Mode can be switched on or off on a running cluster (UpdateClusterConfig) and its NodePools
# change, so a verdict must age out; one DescribeCluster per 10 minutes is far below EKS's API rate
# limits. 10 minutes is also the daemon's default full static re-audit period.
DEFINITIVE_FOR_S = 600.0
# After an ERROR the next audit asks again once this delay has passed, doubling up to the cap:
# bursts of config changes (an audit every few seconds) do not hammer a throttled or failing API.
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0


class AutoModeCheck:
    """The daemon's Auto Mode finding: calling it returns a one-finding tuple (the daemon's
    ``extra_findings``); it never raises (AWS errors are the ERROR finding). ``clock`` returns
    monotonic seconds; ``definitive_for_s`` is how long a PASS or FAIL is reused, in seconds."""

    def __init__(
        self,
        eks: Any,
        cluster: str,
        node_pools: Callable[[], NodePools] | None = None,
        *,
        definitive_for_s: float = DEFINITIVE_FOR_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._eks, self._cluster, self._node_pools = eks, cluster, node_pools
        self._definitive_for_s, self._clock = definitive_for_s, clock
        self._finding: Finding | None = None
        self._until = 0.0
        self._errors = 0  # consecutive ERROR answers: the retry delay doubles with each
        self._lock = threading.Lock()  # the daemon's full and change-triggered audits may overlap

    def __call__(self) -> tuple[Finding, ...]:
        """``(finding,)``: the Auto Mode finding, reused for ``definitive_for_s`` seconds after a PASS or FAIL and
        asked again after an ERROR with a doubling delay (5 s up to 300 s). Never raises.
        """
        with self._lock:
            return self._current()

    def _current(self) -> tuple[Finding, ...]:
        now = self._clock()
        if self._finding is None or now >= self._until:
            finding = auto_mode_finding(self._eks, self._cluster, self._node_pools)
            if finding.status in (Status.PASS, Status.FAIL):
                self._errors, hold = 0, self._definitive_for_s
            else:  # never reused as an answer: only holds the ERROR until the next attempt
                self._errors += 1
                hold = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._errors - 1))
            self._finding, self._until = finding, now + hold
        return (self._finding,)
