"""kubeconform schemas from an OpenAPI v2 document: refs inlined, strict objects, int-or-string."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testrigs.devtools.charttools import ChartToolError, write_schemas

OPENAPI = {
    "definitions": {
        "io.k8s.api.policy.v1.PodDisruptionBudget": {
            "type": "object",
            "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.policy.v1.PodDisruptionBudgetSpec"}},
            "x-kubernetes-group-version-kind": [{"group": "policy", "version": "v1", "kind": "PodDisruptionBudget"}],
        },
        "io.k8s.api.policy.v1.PodDisruptionBudgetSpec": {
            "type": "object",
            "properties": {
                "maxUnavailable": {"type": "string", "format": "int-or-string"},
                "selector": {"$ref": "#/definitions/Selector"},
            },
        },
        "Selector": {
            "type": "object",
            "properties": {
                "nested": {"$ref": "#/definitions/Selector"},
                "free": {"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": True},
            },
        },
        "io.k8s.api.core.v1.Namespace": {
            "type": "object",
            "properties": {"metadata": {"type": "object"}},
            "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Namespace"}],
        },
    }
}


def test_each_kind_gets_a_standalone_strict_schema_where_kubeconform_looks(tmp_path: Path) -> None:
    written = write_schemas(OPENAPI, {("policy/v1", "PodDisruptionBudget"), ("v1", "Namespace")}, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "policy/v1/poddisruptionbudget.json",
        "v1/v1/namespace.json",
    ]
    schema = json.loads((tmp_path / "policy/v1/poddisruptionbudget.json").read_text())
    spec = schema["properties"]["spec"]
    assert schema["additionalProperties"] is False
    assert spec["additionalProperties"] is False
    assert spec["properties"]["maxUnavailable"] == {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    selector = spec["properties"]["selector"]
    assert selector["properties"]["nested"] == {}  # recursion stops: anything below is accepted
    assert "additionalProperties" not in selector["properties"]["free"]  # preserves unknown fields


def test_a_kind_without_a_schema_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ChartToolError, match="ServiceMonitor"):
        write_schemas(OPENAPI, {("monitoring.coreos.com/v1", "ServiceMonitor")}, tmp_path)
