"""Which Istio config istiod reads: the ``istio.io/rev`` label against the serving revision (core.revision).

The rule is istiod's ``config.LabelsInRevision``; the serving revision comes from the ztunnel's
label, else the one istiod's, else the chart's ``default``. The static fixtures ``revision-*``
show the verdicts on the retail store; the real data plane shows the same (tests/lab).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from auditor.adapters.rules.loader import load_rules
from auditor.core.audit import run_static_audit
from auditor.core.decode import build_snapshot, decode_object
from auditor.core.incremental import Change, IncrementalAudit, full_audit
from auditor.core.model import Status
from auditor.core.revision import in_revision, revision_findings, serving_revision
from auditor.core.snapshot import ObjectMeta, Workload
from tests.cases import CASES_DIR, load_case, merged_documents
from tests.unit.test_incremental import _generated, _objects


def _workload(app: str, name: str, labels: dict[str, str], *, pod: bool = False, pod_labels: bool = False) -> Workload:
    meta = ObjectMeta(kind="Pod" if pod else "Deployment", name=name, namespace="istio-system", labels=labels)
    template = {"app": app, **(labels if pod_labels else {})}
    return Workload(meta=meta, pod_labels=template, pod_annotations={}, service_account=app, is_pod=pod)


@pytest.mark.parametrize(
    ("labels", "revision", "read"),
    [
        ({}, "default", True),  # unlabelled: every istiod reads it
        ({"istio.io/rev": "default"}, "default", True),
        ({"istio.io/rev": "canary"}, "default", False),
        ({"istio.io/rev": "default"}, "canary", False),
        ({"istio.io/rev": "canary"}, "", True),  # an istiod without REVISION reads everything
        ({"istio.io/rev": ""}, "default", False),  # an empty label is a label (istiod: f is true)
    ],
)
def test_labels_in_revision_as_istiod(labels: dict[str, str], revision: str, read: bool) -> None:
    assert in_revision(labels, revision) is read


def test_serving_revision_ztunnel_then_the_one_istiod_then_the_chart_default() -> None:
    ztunnel = _workload("ztunnel", "ztunnel", {"istio.io/rev": "canary"})
    istiod = _workload("istiod", "istiod-1-30", {"istio.io/rev": "1-30"})
    assert serving_revision([istiod, ztunnel]).name == "canary"
    assert serving_revision([istiod]).name == "1-30"
    assert serving_revision([istiod]).source == "Deployment istio-system/istiod-1-30 labels.istio.io/rev"
    unlabelled_ztunnel = _workload("ztunnel", "ztunnel", {})
    assert serving_revision([unlabelled_ztunnel, istiod]).name == "1-30"
    default = serving_revision([])
    assert (default.name, default.assumed) == ("default", True)
    # An istiod without the label is the chart's default revision.
    assert serving_revision([_workload("istiod", "istiod", {})]).name == "default"
    # Two istiods and no ztunnel: default when one of them is, stated as an assumption.
    two = serving_revision([istiod, _workload("istiod", "istiod", {"istio.io/rev": "default"})])
    assert (two.name, two.assumed) == ("default", True)
    # A pod's template labels count as the controller's.
    assert serving_revision([_workload("istiod", "p", {"istio.io/rev": "x"}, pod=True, pod_labels=True)]).name == "x"


def _policy(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "alpha", "labels": labels},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["x"]}}]}]},
    }


def test_an_ignored_policy_is_left_out_and_reported_with_its_patch() -> None:
    objects = [o for d in (_policy("kept", {}), _policy("gone", {"istio.io/rev": "canary"})) for o in decode_object(d)]
    snapshot = build_snapshot(objects)
    assert [p.meta.name for p in snapshot.authorization_policies] == ["kept"]
    (found,) = revision_findings(snapshot)
    assert (found.check.id, found.status, found.target) == (
        "audit.config-revision",
        Status.FAIL,
        "alpha/AuthorizationPolicy/gone",
    )
    assert "istio.io/rev=canary" in found.message
    assert "(revision default)" in found.message
    (document,) = found.fix.documents
    assert document.patch
    assert yaml.safe_dump(dict(document.body), sort_keys=True) == yaml.safe_dump(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "gone", "namespace": "alpha", "labels": {"istio.io/rev": None}},
        },
        sort_keys=True,
    )


def test_an_istiod_outside_the_root_namespace_decides_the_revision_incrementally() -> None:
    """A canary istiod in its own namespace appears, then goes: the canary-labelled DENY is read,
    then ignored again, as a full audit sees it after every change."""
    documents, posture = _generated()
    documents.append(_policy("canary-only", {"istio.io/rev": "canary"}))
    objects = _objects(documents)
    audit = IncrementalAudit(objects, posture, {})
    ignored = [f.target for f in audit.findings if f.check.id == "audit.config-revision"]
    assert ignored == ["alpha/AuthorizationPolicy/canary-only"]
    istiod = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istiod-canary", "namespace": "istio-canary", "labels": {"istio.io/rev": "canary"}},
        "spec": {"template": {"metadata": {"labels": {"app": "istiod", "istio.io/rev": "canary"}}, "spec": {}}},
    }
    key = ("Deployment", "istio-canary", "istiod-canary")
    added = _objects([istiod])[key]
    update = audit.apply([Change(key, (), added)])
    assert update.findings == full_audit({**objects, key: added}, posture, {})
    assert not [f for f in update.findings if f.check.id == "audit.config-revision"]
    update = audit.apply([Change(key, added, ())])
    assert update.findings == full_audit(objects, posture, {})
    assert [f.target for f in update.findings if f.check.id == "audit.config-revision"] == ignored


def test_a_fix_never_reuses_the_name_of_an_ignored_object() -> None:
    """Applying the ALLOW fix over the ignored catalog policy would keep its canary label (and the
    policy ignored): the fix takes another name."""
    case = load_case(CASES_DIR / "revision-authz-canary")
    objects = [o for d in merged_documents(case) for o in decode_object(d)]
    findings = run_static_audit(build_snapshot(objects), load_rules([str(case.rules)]), {})
    (refused,) = [f for f in findings if f.check.id == "principal-allowlist.intruders-refused"]
    names = {(d.body["kind"], d.body["metadata"]["name"]) for d in refused.fix.documents}
    assert ("AuthorizationPolicy", "catalog-mesh-auditor") in names
    assert ("AuthorizationPolicy", "catalog") not in names
