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
from auditor.core.checks.revision import revision_findings
from auditor.core.decode import build_snapshot, decode_object
from auditor.core.incremental import Change, IncrementalAudit, full_audit
from auditor.core.model import Status
from auditor.core.revision import in_revision, serving_revision
from auditor.core.snapshot import Gateway, Namespace, ObjectMeta, Workload
from tests.cases import CASES_DIR, load_case, merged_documents
from tests.unit.test_incremental import _generated, _objects


def _workload(
    app: str,
    name: str,
    labels: dict[str, str] | None = None,
    *,
    annotations: dict[str, str] | None = None,
    pod: bool = False,
) -> Workload:
    kind = "Pod" if pod else ("DaemonSet" if app == "ztunnel" else "Deployment")
    meta = ObjectMeta(kind=kind, name=name, namespace="istio-system", labels=labels or {})
    return Workload(
        meta=meta,
        pod_labels={"app": app, **(labels or {})},
        pod_annotations=annotations or {},
        service_account=app,
        is_pod=pod,
    )


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


CANARY_ZTUNNEL = _workload("ztunnel", "ztunnel", annotations={"istio.io/rev": "canary"})  # as the chart renders it
PLAIN_ZTUNNEL = _workload("ztunnel", "ztunnel")
ISTIOD_DEFAULT = _workload("istiod", "istiod", {"istio.io/rev": "default"})
ISTIOD_1_30 = _workload("istiod", "istiod-1-30", {"istio.io/rev": "1-30"})


@pytest.mark.parametrize(
    ("workloads", "name", "assumed"),
    [
        ([CANARY_ZTUNNEL, ISTIOD_DEFAULT, ISTIOD_1_30], "canary", False),  # the chart's annotation decides
        ([PLAIN_ZTUNNEL, ISTIOD_DEFAULT, ISTIOD_1_30], "default", False),  # Service istiod: the revision-less release
        ([PLAIN_ZTUNNEL, ISTIOD_1_30], "1-30", True),  # Service istiod is then a revision tag's: unknown
        ([ISTIOD_1_30], "1-30", False),  # the only istiod, labelled by the chart
        ([ISTIOD_DEFAULT, ISTIOD_1_30], "default", True),  # two istiods, no ztunnel naming one
        ([_workload("istiod", "istiod")], "default", True),  # unlabelled: its REVISION may be "" (reads all)
        ([], "default", True),  # offline manifests without istiod
        ([CANARY_ZTUNNEL, _workload("ztunnel", "ztunnel-b", annotations={"istio.io/rev": "b"})], "default", True),
        ([_workload("istiod", "p", {"istio.io/rev": "x"}, pod=True)], "x", False),
    ],
)
def test_serving_revision_observed_or_assumed(workloads: list[Workload], name: str, assumed: bool) -> None:
    found = serving_revision(workloads)
    assert (found.name, found.assumed) == (name, assumed), found.source


def test_a_waypoint_or_namespace_of_another_revision_makes_it_assumed() -> None:
    gateway = Gateway(
        meta=ObjectMeta("Gateway", "wp", "shop", labels={"istio.io/rev": "canary"}), class_name="istio-waypoint"
    )
    found = serving_revision([ISTIOD_DEFAULT], gateways=[gateway])
    assert (found.name, found.assumed) == ("default", True)
    assert "waypoint shop/wp is labelled istio.io/rev=canary" in found.source
    namespace = Namespace(meta=ObjectMeta("Namespace", "shop", labels={"istio.io/rev": "default"}))
    assert serving_revision([ISTIOD_DEFAULT], namespaces=[namespace]).assumed is False


def _policy(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "alpha", "labels": labels},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["x"]}}]}]},
    }


ISTIOD_DOCUMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"istio.io/rev": "default"}},
    "spec": {"template": {"metadata": {"labels": {"app": "istiod", "istio.io/rev": "default"}}, "spec": {}}},
}


def test_an_ignored_policy_is_left_out_and_reported_with_its_patch() -> None:
    documents = (_policy("kept", {}), _policy("gone", {"istio.io/rev": "canary"}), ISTIOD_DOCUMENT)
    snapshot = build_snapshot([o for d in documents for o in decode_object(d)])
    assert [p.meta.name for p in snapshot.authorization_policies] == ["kept"]
    (found,) = revision_findings(snapshot)
    assert (found.check.id, found.status, found.target) == (
        "audit.config-revision",
        Status.FAIL,
        "alpha/AuthorizationPolicy/gone",
    )
    assert "labelled istio.io/rev='canary': an istiod of revision default, the one serving the mesh," in found.message
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


def test_an_assumed_revision_reports_inconclusive_without_yaml() -> None:
    """No istiod in the input: the object may be read after all; nothing was proven wrong."""
    snapshot = build_snapshot(list(decode_object(_policy("gone", {"istio.io/rev": "canary"}))))
    (found,) = revision_findings(snapshot)
    assert (found.status, found.fix.documents) == (Status.INCONCLUSIVE, ())
    assert "assumed (no istiod in the input; Istio's chart default)" in found.message
