"""Report archive in S3: one object per audit run under a date prefix, locked when the bucket can.

Key: ``<prefix>/YYYY/MM/DD/<run-id>.json``. When the bucket has Object Lock enabled, each object
gets an explicit retention (mode and days from settings), so an archived compliance record
cannot be altered or deleted before it expires; without Object Lock the object is written
plainly and the archive says so once in the log.
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
    bucket: str
    prefix: str = "mesh-auditor/reports"
    lock_mode: str = "GOVERNANCE"  # or COMPLIANCE; only used when the bucket has Object Lock
    retention_days: int = 365


class S3Archive:
    def __init__(self, s3: Any, options: ArchiveOptions) -> None:
        self._s3 = s3
        self._options = options
        self._locked: bool | None = None
        self._log = structlog.get_logger("auditor.aws.s3")

    def key_for(self, run_id: str, at: dt.datetime) -> str:
        return f"{self._options.prefix}/{at:%Y/%m/%d}/{run_id}.json"

    def put_run(self, document: Mapping[str, Any], run_id: str, at: dt.datetime) -> str:
        key = self.key_for(run_id, at)
        body = json.dumps(document, sort_keys=True).encode("utf-8")
        extra: dict[str, Any] = {}
        if self._bucket_locked():
            extra = {
                "ObjectLockMode": self._options.lock_mode,
                "ObjectLockRetainUntilDate": at + dt.timedelta(days=self._options.retention_days),
                "ChecksumAlgorithm": "SHA256",  # Object Lock requires an integrity checksum
            }
        self._s3.put_object(Bucket=self._options.bucket, Key=key, Body=body, ContentType="application/json", **extra)
        return key

    def _bucket_locked(self) -> bool:
        if self._locked is None:
            try:
                config = self._s3.get_object_lock_configuration(Bucket=self._options.bucket)
                self._locked = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise
                self._locked = False
            if not self._locked:
                self._log.warning(
                    "bucket has no Object Lock: archived reports are not immutable", bucket=self._options.bucket
                )
        return self._locked
