"""The backends of a Service (``SnapshotIndex.backends``) come from its EndpointSlices when the snapshot
has any, live or in files, else from its selector; which input gives which backends and which verdict."""

from __future__ import annotations

from typing import Any

import pytest

from auditor.core.audit import run_static_audit
from auditor.core.decode import build_snapshot, decode_object
from auditor.core.model import Finding, Status
from auditor.core.posture import MeshSettings, Posture, ProtectedService, ScopeEntry
from auditor.core.snapshot import SnapshotIndex

NAMESPACE = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}},
}
STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "istio-system"},
    "spec": {"mtls": {"mode": "STRICT"}},
}
POSTURE = Posture(mesh=MeshSettings(), scope=(ScopeEntry(namespace="shop"),), protected=(), names=("t",))


def _service(selector: dict[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy", "namespace": "shop"}, "spec": spec}


def _pod(name: str, labels: dict[str, str], ip: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip} if ip else {},
    }


def _slice(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "legacy-manual", "namespace": "shop", "labels": {"kubernetes.io/service-name": "legacy"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": list(entries),
    }


def _entry(ip: str, pod: str = "", **conditions: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod:
        namespace, _, name = pod.partition("/")
        entry["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": name}
    return entry


def _index(*documents: dict[str, Any], live: bool = False) -> SnapshotIndex:
    return SnapshotIndex(build_snapshot([d for o in documents for d in decode_object(o)], live=live))


def _strict(*documents: dict[str, Any]) -> dict[str, Finding]:
    objects = [d for o in (NAMESPACE, STRICT, *documents) for d in decode_object(o)]
    findings = run_static_audit(build_snapshot(objects), POSTURE, {})
    return {f.check.id: f for f in findings if f.target == "shop/legacy"}


def test_a_selectorless_service_has_the_pods_its_slices_name() -> None:
    index = _index(_service(None), _pod("a", {}), _pod("b", {}), _slice(_entry("10.0.0.1", "shop/a")))
    backends = index.backends(index.services["shop/legacy"])
    assert [w.meta.name for w in backends.workloads] == ["a"]
    assert backends.unknown == ()
    assert backends.from_slices


def test_an_entry_without_target_ref_is_the_pod_with_its_address() -> None:
    index = _index(_service(None), _pod("a", {}, ip="10.0.0.7"), _slice(_entry("10.0.0.7")), live=True)
    assert [w.meta.name for w in index.backends(index.services["shop/legacy"]).workloads] == ["a"]


def test_an_address_of_no_pod_is_an_unknown_backend_unless_not_ready() -> None:
    index = _index(_service(None), _slice(_entry("192.0.2.1"), _entry("192.0.2.2", ready=False)))
    assert index.backends(index.services["shop/legacy"]).unknown == ("endpoint 192.0.2.1",)


def test_a_pod_of_another_namespace_is_unknown() -> None:
    index = _index(_service(None), _slice(_entry("10.0.0.1", "other/a")))
    assert index.backends(index.services["shop/legacy"]).unknown == (
        "endpoint 10.0.0.1 (Pod other/a, not in the input)",
    )


def test_a_selector_service_with_slices_keeps_its_selected_pods() -> None:
    index = _index(_service({"app": "x"}), _pod("a", {"app": "x"}), _pod("b", {}), _slice(_entry("10.0.0.2", "shop/b")))
    assert sorted(w.meta.name for w in index.backends(index.services["shop/legacy"]).workloads) == ["a", "b"]


def test_terminating_entries_are_no_backends() -> None:
    index = _index(_service(None), _pod("a", {}), _slice(_entry("10.0.0.1", "shop/a", terminating=True)))
    backends = index.backends(index.services["shop/legacy"])
    assert backends.workloads == ()
    assert backends.unknown == ()


def test_an_uncaptured_pod_behind_a_hand_written_slice_fails_naming_it() -> None:
    found = _strict(
        _service(None),
        _pod("legacy-0", {"istio.io/dataplane-mode": "none"}),
        _slice(_entry("10.0.0.1", "shop/legacy-0")),
    )
    assert found["strict-mtls.captured"].status is Status.FAIL
    assert "Pod shop/legacy-0" in found["strict-mtls.captured"].message


@pytest.mark.parametrize("check", ["strict-mtls.captured", "strict-mtls.peer-authentication"])
def test_an_unknown_backend_is_inconclusive_even_beside_a_good_pod(check: str) -> None:
    found = _strict(_service(None), _pod("a", {}), _slice(_entry("10.0.0.1", "shop/a"), _entry("192.0.2.9")))
    assert found[check].status is Status.INCONCLUSIVE
    assert "192.0.2.9" in found[check].message


def test_a_selectorless_service_without_slices_is_still_skipped() -> None:
    assert _strict(_service(None))["strict-mtls.captured"].status is Status.SKIPPED


def test_an_unknown_backend_keeps_the_allow_list_from_passing() -> None:
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "legacy", "namespace": "shop"},
        "spec": {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/ui"]}}]}]},
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ui", "namespace": "shop"}}
    protected = ProtectedService(name="legacy", namespace="shop", allowed_principals=["cluster.local/ns/shop/sa/ui"])
    posture = Posture(mesh=MeshSettings(), scope=(ScopeEntry(namespace="shop"),), protected=(protected,), names=("t",))

    def allow_list(*slice_entries: dict[str, Any]) -> dict[str, Status]:
        documents = (NAMESPACE, STRICT, policy, account, _service(None), _pod("a", {}), _slice(*slice_entries))
        findings = run_static_audit(build_snapshot([d for o in documents for d in decode_object(o)]), posture, {})
        return {f.check.id: f.status for f in findings if f.check.id.startswith("principal-allowlist")}

    assert allow_list(_entry("10.0.0.1", "shop/a"))["principal-allowlist.intruders-refused"] is Status.PASS
    found = allow_list(_entry("10.0.0.1", "shop/a"), _entry("192.0.2.9"))
    assert found["principal-allowlist.intruders-refused"] is Status.INCONCLUSIVE
