"""A fix's YAML is read by kubectl as it is meant: no label value turns into a number or a bool.

PyYAML quotes only what its own resolver would read as something else; kubectl's Go YAML also
reads ``4e12345678`` (a commit-like value), ``0x1F``, ``1_000`` or ``on`` as non-strings, and the
API server then refuses the object. Found by the translation oracle's generated labels.
"""

from __future__ import annotations

import pytest
import yaml

from auditor.core.model import Fix, FixDocument
from auditor.render.fixes import fix_yaml


@pytest.mark.parametrize(
    "value",
    ["4e12345678", "1e3", "0x1F", "0o17", "017", "0b101", "1_000", ".5", "-1", "+1.5", "yes", "on", "N", "~", ""],
)
def test_values_kubectl_would_not_read_as_strings_are_quoted(value: str) -> None:
    text = fix_yaml(Fix((FixDocument({"metadata": {"name": "x", "labels": {"version": value}}}),)))
    assert f"version: '{value}'" in text
    assert yaml.safe_load(text.split("\n", 1)[1])["metadata"]["labels"]["version"] == value


@pytest.mark.parametrize("value", ["web", "v1", "1e3x", "catalog-waypoint", "cluster.local/ns/default/sa/ui"])
def test_plain_strings_stay_plain(value: str) -> None:
    text = fix_yaml(Fix((FixDocument({"metadata": {"name": "x", "labels": {"version": value}}}),)))
    assert f"version: {value}\n" in text
