"""The daemon's incremental re-evaluation never differs from a full audit (#16).

Every static fixture is reached from its base example one changed object at a time (the objects
the case adds, replaces or removes), then taken back; after every single change the incremental
findings must equal ``run_static_audit`` of the whole snapshot, byte for byte (statuses,
messages, evidence, order). Every object of the examples is also deleted and re-created.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from auditor.adapters.rules.loader import load_rules
from auditor.core.decode import Decoded, build_snapshot, decode_object
from auditor.core.incremental import Change, IncrementalAudit, ObjectKey, full_audit
from auditor.core.posture import Posture, PostureDocument, merge
from auditor.core.snapshot import SelectorIndex, SnapshotIndex
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


# --- several namespaces, random single-object changes ------------------------------------------

NAMESPACES = ("alpha", "beta", "gamma")


def _generated() -> tuple[list[dict[str, Any]], Posture]:
    """Three namespaces of four Services; alpha/s0 and beta/s0 are protected with a waypoint and
    allow callers of other namespaces, so callers, policies and waypoints cross namespaces."""
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}},
        }
        for ns in NAMESPACES
    ]
    documents.append(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }
    )
    protected = []
    for ns in NAMESPACES:
        for i in range(4):
            name, labels = f"s{i}", {"app": f"s{i}"}
            waypointed = i == 0 and ns != "gamma"
            documents += [
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": {"istio.io/use-waypoint": "wp"} if waypointed else {},
                    },
                    "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
                },
                _deployment(ns, name),
                {
                    "apiVersion": "security.istio.io/v1",
                    "kind": "PeerAuthentication",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"selector": {"matchLabels": labels}, "mtls": {"mode": "STRICT"}},
                },
                {
                    "apiVersion": "security.istio.io/v1",
                    "kind": "AuthorizationPolicy",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/beta/sa/s1"]}}]}],
                    },
                },
            ]
            if waypointed:
                documents += [
                    {
                        "apiVersion": "gateway.networking.k8s.io/v1",
                        "kind": "Gateway",
                        "metadata": {"name": "wp", "namespace": ns},
                        "spec": {
                            "gatewayClassName": "istio-waypoint",
                            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                        },
                    },
                    {
                        "apiVersion": "security.istio.io/v1",
                        "kind": "AuthorizationPolicy",
                        "metadata": {"name": "at-wp", "namespace": ns},
                        "spec": {
                            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}],
                            "rules": [{"from": [{"source": {"namespaces": ["gamma"]}}]}],
                        },
                    },
                ]
                protected.append(
                    {
                        "name": name,
                        "namespace": ns,
                        "allowedPrincipals": ["cluster.local/ns/beta/sa/s1", "cluster.local/ns/gamma/sa/s2"],
                        "waypoint": {"name": "wp"},
                    }
                )
    rules = {
        "apiVersion": "mesh-auditor.dev/v1alpha1",
        "kind": "MeshPosture",
        "metadata": {"name": "generated"},
        "spec": {"scope": [{"namespace": ns} for ns in NAMESPACES], "protectedServices": protected},
    }
    return documents, merge([("generated", PostureDocument.model_validate(rules))])


def _deployment(ns: str, name: str, **template: Any) -> dict[str, Any]:
    labels = {"app": name, **template.pop("labels", {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels, "annotations": template.pop("annotations", {})},
                "spec": {
                    "serviceAccountName": template.pop("account", name),
                    "containers": template.pop("containers", [{"name": "app", "image": "app"}]),
                },
            },
        },
    }


def _edits(ns: str, i: int) -> list[dict[str, Any] | tuple[str, str, str]]:
    """Candidate changes around one Service: a document to create or replace, or a key to delete."""
    name, other = f"s{i}", NAMESPACES[(NAMESPACES.index(ns) + 1) % 3]
    return [
        _deployment(ns, name, labels={"istio.io/dataplane-mode": "none"}),
        _deployment(ns, name, containers=[{"name": "app", "image": "app"}, {"name": "istio-proxy", "image": "p"}]),
        _deployment(ns, name, account="newcomer"),
        _deployment(ns, name),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-pod", "namespace": ns, "labels": {"app": name}},
            "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "app"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "wide", "namespace": ns},
            "spec": {"mtls": {"mode": "PERMISSIVE"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "elsewhere", "namespace": other},
            "spec": {"action": "DENY", "selector": {"matchLabels": {"app": name}}, "rules": [{}]},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "named", "namespace": other},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": name}], "rules": [{}]},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "at-wp", "namespace": ns},
            "spec": {
                "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}],
                "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{other}/sa/*"]}}]}],
            },
        },
        {
            # Another revision's (semantics §13): left out, or judged both ways while no istiod is in.
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "at-wp", "namespace": ns, "labels": {"istio.io/rev": "canary"}},
            "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}]},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "wide", "namespace": ns, "labels": {"istio.io/rev": "canary"}},
            "spec": {"mtls": {"mode": "DISABLE"}},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"istio.io/rev": "canary"}},
            "spec": {"template": {"metadata": {"labels": {"app": "istiod", "istio.io/rev": "canary"}}, "spec": {}}},
        },
        ("Deployment", "istio-system", "istiod"),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spare", "namespace": ns}},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient", "istio-injection": "enabled"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "PERMISSIVE"}},
        },
        ("Deployment", ns, name),
        ("Service", ns, name),
        ("Gateway", ns, "wp"),
        ("AuthorizationPolicy", ns, name),
        ("ServiceAccount", ns, name),
        ("PeerAuthentication", ns, name),
    ]


@pytest.mark.parametrize("seed", range(6))
def test_random_changes_across_namespaces_equal_a_full_audit(seed: int) -> None:
    documents, posture = _generated()
    objects = _objects(documents)
    pristine = dict(objects)
    audit = IncrementalAudit(objects, posture, {})
    chooser = random.Random(seed)  # noqa: S311 - a reproducible sequence of edits, not a secret
    for step in range(40):
        edit = chooser.choice(_edits(chooser.choice(NAMESPACES), chooser.randrange(4)))
        if isinstance(edit, tuple):
            key: ObjectKey = edit
            after: tuple[Decoded, ...] = ()
        else:
            ((key, after),) = _objects([edit]).items()
        if chooser.random() < 0.2 and key in pristine:
            after = pristine[key]  # and back
        before = objects.get(key, ())
        if after:
            objects[key] = after
        else:
            objects.pop(key, None)
        update = audit.apply([Change(key, before, after)])
        assert update.findings == full_audit(objects, posture, {}), f"seed {seed} step {step}: {key}"


def test_a_changed_namespace_index_equals_a_fresh_one() -> None:
    """``SnapshotIndex.replaced_namespace`` gives the index a fresh build gives."""
    documents, _ = _generated()
    objects = _objects(documents)
    old = SnapshotIndex(build_snapshot([o for g in objects.values() for o in g]))
    edited = dict(objects)
    deny = _edits("beta", 1)[7]  # a DENY in gamma selecting beta's s1
    assert isinstance(deny, dict)
    ((key, after),) = _objects([deny]).items()
    edited[key] = after
    edited.pop(("Deployment", "gamma", "s2"))
    part_before = SnapshotIndex(build_snapshot([o for k, g in objects.items() if k[1] == "gamma" for o in g]))
    part_after = SnapshotIndex(build_snapshot([o for k, g in edited.items() if k[1] == "gamma" for o in g]))
    patched = old.replaced_namespace("gamma", part_before, part_after)
    fresh = SnapshotIndex(build_snapshot([o for g in edited.values() for o in g]))
    for name in vars(fresh):
        if name not in {"workload_memo", "namespace_memo", "_workloads_for"}:
            assert _plain(getattr(patched, name)) == _plain(getattr(fresh, name)), name


def _plain(value: object) -> object:
    """Comparable form of an index attribute: dicts as item lists (their order counts too)."""
    if isinstance(value, SelectorIndex):
        return _plain(value._buckets), value._match_all
    if isinstance(value, dict):
        return [(key, _plain(item)) for key, item in value.items()]
    return value


# --- ztunnel pods: the node check of every Service reads them (#13 with #16) ---------------------


def _pod(namespace: str, name: str, labels: dict[str, str], node: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_a_ztunnel_pod_outside_the_root_namespace_changes_the_node_check_of_other_namespaces() -> None:
    """ztunnel in its own namespace (not the root one): its pod going unready, away and back is
    seen by the node check of every Service on its node, as a full audit sees it."""
    documents, posture = _generated()
    documents += [_pod(ns, f"s1-pod-{ns}", {"app": "s1"}, "node-a") for ns in NAMESPACES]
    documents.append(_pod("istio-ztunnel", "ztunnel-a", {"app": "ztunnel"}, "node-a"))
    objects = _objects(documents)
    audit = IncrementalAudit(objects, posture, {}, live=True)
    assert audit.findings == full_audit(objects, posture, {}, live=True)
    key = ("Pod", "istio-ztunnel", "ztunnel-a")
    ready, unready = (
        objects[key],
        _objects([_pod("istio-ztunnel", "ztunnel-a", {"app": "ztunnel"}, "node-a", ready=False)])[key],
    )
    for before, after in ((ready, unready), (unready, ()), ((), ready)):
        current = {k: v for k, v in objects.items() if k != key} | ({key: after} if after else {})
        update = audit.apply([Change(key, before, after)])
        assert update.everything
        assert update.findings == full_audit(current, posture, {}, live=True)
    failing = [
        f
        for f in full_audit({**objects, key: unready}, posture, {}, live=True)
        if f.check.id == "strict-mtls.node-ztunnel"
    ]
    assert failing
    assert all(f.status.value == "fail" for f in failing)
