"""Report archive in S3: one object per audit run, locked, partitioned for a fleet.

Key: ``<prefix>/<account>/<region>/<cluster>/YYYY/MM/DD/<run-id>.json``, so one Athena table over
the bucket sees every cluster that reports into it, partitioned by account, region, cluster and
day through partition projection (docs/aws.md), and each cluster's IAM policy can be limited to its
own prefix. Every record also carries ``source`` (cluster, account, region) in its body.

Each object is written with an explicit Object Lock retention (mode and days from settings), so an
archived compliance record cannot be altered or deleted before it expires. The sink needs only
``s3:PutObject`` and ``s3:PutObjectRetention`` below its own prefix (infra/modules/cluster); it does
not read the bucket's configuration. A bucket without Object Lock refuses the retention
(``InvalidRequest``): the record is then written plainly and the archive says so once in the log.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from botocore.exceptions import ClientError


@dataclass(frozen=True, slots=True)
class ArchiveOptions:
    """Where and how long audit documents are kept: S3 ``bucket`` and ``prefix``, the cluster's
    name, account and region (in each key), and S3 Object Lock retention (``lock_mode``,
    ``retention_days``: days from the run's time)."""

    bucket: str
    cluster: str
    account_id: str
    region: str
    prefix: str = "mesh-auditor/reports"
    lock_mode: str = "GOVERNANCE"  # or COMPLIANCE
    retention_days: int = 365

    @property
    def source(self) -> dict[str, str]:
        """``{"cluster", "account", "region"}`` (strings): where the evidence comes from. Never raises."""
        return {"cluster": self.cluster, "account": self.account_id, "region": self.region}


class S3Archive:
    """The ``EvidenceArchive`` port on S3 (``s3:PutObject``): one object per run."""

    def __init__(self, s3: Any, options: ArchiveOptions) -> None:
        self._s3 = s3
        self._options = options
        self._locked = True  # until the bucket says otherwise
        self._log = structlog.get_logger("auditor.aws.s3")

    def key_for(self, run_id: str, at: dt.datetime) -> str:
        """``<prefix>/<account>/<region>/<cluster>/<YYYY/MM/DD of at>/<run_id>.json``."""
        o = self._options
        return f"{o.prefix}/{o.account_id}/{o.region}/{o.cluster}/{at:%Y/%m/%d}/{run_id}.json"

    def put_run(self, document: Mapping[str, Any], run_id: str, at: dt.datetime) -> str:
        """Write one audit document; returns its key. Raises ``ClientError`` when S3 refuses it."""
        key = self.key_for(run_id, at)
        body = json.dumps({**document, "source": self._options.source}, sort_keys=True).encode("utf-8")
        plain: dict[str, Any] = {"Bucket": self._options.bucket, "Key": key, "Body": body}
        plain["ContentType"] = "application/json"
        if self._locked and self._put_locked(plain, at):
            return key
        self._s3.put_object(**plain)
        return key

    def _put_locked(self, plain: dict[str, Any], at: dt.datetime) -> bool:
        """True when written with retention; False when the bucket has no Object Lock."""
        try:
            self._s3.put_object(
                **plain,
                ObjectLockMode=self._options.lock_mode,
                ObjectLockRetainUntilDate=at + dt.timedelta(days=self._options.retention_days),
                ChecksumAlgorithm="SHA256",  # Object Lock requires an integrity checksum
            )
        except ClientError as error:
            if not _lock_not_enabled(error):
                raise
            self._locked = False
            self._log.warning(
                "bucket has no Object Lock: archived reports are not immutable", bucket=self._options.bucket
            )
            return False
        return True


def _lock_not_enabled(error: ClientError) -> bool:
    details = error.response.get("Error", {})
    message = str(details.get("Message", "")).replace(" ", "").lower()
    return details.get("Code") == "InvalidRequest" and "objectlock" in message
