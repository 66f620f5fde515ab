"""An audit keeps none of its objects alive once it returns (#16).

A module-level ``lru_cache`` of the bypass callers kept the last four ``SnapshotIndex`` objects
(each with its whole snapshot) after the audit: the daemon held old snapshots, and an offline
check's interpreter re-scanned them in its final garbage collections (0.7 s of CPU at 10,000
Services). The retail-store example has protected Services, so the audit asks for them.
"""

from __future__ import annotations

import gc
import io
from pathlib import Path

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules, resolve_header_values
from auditor.core.audit import run_static_audit
from auditor.core.snapshot import SnapshotIndex

ROOT = Path(__file__).resolve().parents[2]


def _indexes() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, SnapshotIndex))


def test_no_index_outlives_the_audit() -> None:
    loaded = read_manifests([str(ROOT / "examples" / "retail-store")], io.StringIO())
    posture = load_rules([str(ROOT / "rules" / "retail-store.yaml")])
    assert posture.protected  # the bypass callers are asked for
    values = resolve_header_values(posture, {}, lambda namespace, name, key: None)
    before = _indexes()
    for _ in range(3):
        findings = run_static_audit(loaded.snapshot, posture, values)
        assert findings
    assert _indexes() == before


def test_the_same_findings_every_time() -> None:
    # The memo lives in each audit's index: a second audit of the same input computes it again
    # and finds the same.
    loaded = read_manifests([str(ROOT / "examples" / "retail-store")], io.StringIO())
    posture = load_rules([str(ROOT / "rules" / "retail-store.yaml")])
    values = resolve_header_values(posture, {}, lambda namespace, name, key: None)
    first = run_static_audit(loaded.snapshot, posture, values)
    assert run_static_audit(loaded.snapshot, posture, values) == first
