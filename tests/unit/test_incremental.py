"""The daemon's incremental re-evaluation never differs from a full audit (#16).

Every static fixture is reached from its base example one changed object at a time (the objects
the case adds, replaces or removes), then taken back; after every single change the incremental
findings must equal ``run_static_audit`` of the whole snapshot, byte for byte (statuses,
messages, evidence, order). Every object of the examples is also deleted and re-created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from auditor.adapters.rules.loader import load_rules
from auditor.core.decode import Decoded, decode_object
from auditor.core.incremental import Change, IncrementalAudit, ObjectKey, full_audit
from auditor.core.posture import Posture
from tests.cases import ROOT, Case, all_cases, merged_documents

CASES = all_cases()
Objects = dict[ObjectKey, tuple[Decoded, ...]]


def _objects(documents: list[dict[str, Any]]) -> Objects:
    found: Objects = {}
    for document in documents:
        decoded = decode_object(document, source="test")
        meta = document.get("metadata") or {}
        namespace = decoded[0].meta.namespace if decoded else str(meta.get("namespace") or "")
        found[(str(document["kind"]), namespace, str(meta["name"]))] = decoded
    return found


def _base(case: Case) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(case.base.rglob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return documents


def _walk(start: Objects, goal: Objects, posture: Posture) -> int:
    """Turn ``start`` into ``goal`` one object at a time, comparing with a full audit each step."""
    values: Mapping[tuple[str, str], str | None] = {}
    audit = IncrementalAudit(start, posture, values)
    current = dict(start)
    assert audit.findings == full_audit(current, posture, values)
    steps = 0
    for key in sorted(start.keys() | goal.keys()):
        before, after = current.get(key, ()), goal.get(key, ())
        if before == after:
            continue
        if after:
            current[key] = after
        else:
            current.pop(key, None)
        update = audit.apply([Change(key, before, after)])
        assert update.findings == full_audit(current, posture, values), f"after changing {key}"
        steps += 1
    return steps


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_step_from_base_to_case_and_back_equals_a_full_audit(case: Case) -> None:
    posture = load_rules([str(case.rules)])
    base, target = _objects(_base(case)), _objects(merged_documents(case))
    forward = _walk(base, target, posture)
    backward = _walk(target, base, posture)
    assert forward == backward


@pytest.mark.parametrize("example", ["retail-store", "retail-store-drifted"])
def test_deleting_and_recreating_any_object_equals_a_full_audit(example: str) -> None:
    rules = ROOT / "rules" / "retail-store.yaml"
    posture = load_rules([str(rules)])
    documents: list[dict[str, Any]] = []
    for path in sorted((ROOT / "examples" / example).rglob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    objects = _objects(documents)
    audit = IncrementalAudit(objects, posture, {})
    for key, decoded in objects.items():
        without = {k: v for k, v in objects.items() if k != key}
        assert audit.apply([Change(key, decoded, ())]).findings == full_audit(without, posture, {}), f"without {key}"
        assert audit.apply([Change(key, (), decoded)]).findings == full_audit(objects, posture, {}), f"with {key}"
