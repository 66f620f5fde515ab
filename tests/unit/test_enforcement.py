"""Which node and ztunnel changes start a probe cycle (core.enforcement)."""

from __future__ import annotations

from typing import Any

from auditor.core.enforcement import changed_node_names, changed_nodes, enforcement_points


def _node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


def _ztunnel(name: str, node: str, uid: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "istio-system", "uid": uid},
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


BEFORE = enforcement_points([_node("n1")], [_ztunnel("ztunnel-a", "n1", "u1")])


def test_nothing_changed_triggers_nothing() -> None:
    assert changed_nodes(BEFORE, enforcement_points([_node("n1")], [_ztunnel("ztunnel-a", "n1", "u1")])) == ()


def test_a_new_node_and_its_ztunnel_are_named() -> None:
    after = enforcement_points(
        [_node("n1"), _node("n2")],
        [_ztunnel("ztunnel-a", "n1", "u1"), _ztunnel("ztunnel-b", "n2", "u2", ready=False)],
    )
    assert changed_nodes(BEFORE, after) == (
        "node n2 appeared",
        "ztunnel pod istio-system/ztunnel-b on node n2 is new (not Ready yet)",
    )


def test_a_restarted_or_recovered_ztunnel_is_named() -> None:
    replaced = enforcement_points([_node("n1")], [_ztunnel("ztunnel-c", "n1", "u3")])
    assert changed_nodes(BEFORE, replaced) == ("ztunnel pod istio-system/ztunnel-c on node n1 is new",)
    down = enforcement_points([_node("n1")], [_ztunnel("ztunnel-a", "n1", "u1", ready=False)])
    assert changed_nodes(BEFORE, down) == ()  # the static node-ztunnel check reports it
    assert changed_nodes(down, BEFORE) == ("ztunnel pod istio-system/ztunnel-a on node n1 became Ready",)


def test_the_changed_node_names_are_those_the_changes_name() -> None:
    after = enforcement_points(
        [_node("n1"), _node("n2"), _node("n3")],
        [_ztunnel("ztunnel-c", "n1", "u3"), _ztunnel("ztunnel-b", "n2", "u2", ready=False)],
    )
    assert changed_node_names(BEFORE, after) == frozenset({"n1", "n2", "n3"})
    assert changed_node_names(BEFORE, BEFORE) == frozenset()
    down = enforcement_points([_node("n1")], [_ztunnel("ztunnel-a", "n1", "u1", ready=False)])
    assert changed_node_names(BEFORE, down) == frozenset()
    assert changed_node_names(down, BEFORE) == frozenset({"n1"})
