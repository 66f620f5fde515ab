"""The fast YAML reader reads what PyYAML's SafeLoader reads, but keeps timestamps as strings."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.adapters.yaml_io import YamlSyntaxError, load_documents

_plain = st.sampled_from(
    [
        "80",
        "-3",
        "0x1F",
        "0o17",
        "1_000",
        "3.5",
        "1e3",
        ".inf",
        "-.inf",
        "yes",
        "No",
        "on",
        "OFF",
        "true",
        "~",
        "null",
        "",
        "abc",
        "8080/TCP",
        "1.2.3",
        "v1",
        "+12",
        "0",
        "00",
        "010",
        ".5",
        "12:30",
    ]
)
_values = st.recursive(
    st.one_of(_plain, st.text(max_size=6), st.integers(), st.booleans(), st.none()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3),
    max_leaves=12,
)


def _without_timestamps(value: Any) -> Any:
    if isinstance(value, dt.date):
        return None
    if isinstance(value, dict):
        return {k: _without_timestamps(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_timestamps(v) for v in value]
    return value


@given(_values)
@settings(max_examples=300)
def test_reads_what_safe_loader_reads(value: Any) -> None:
    """Dumped then loaded, any value is what yaml.safe_load gives (plain scalars resolved alike)."""
    text = yaml.safe_dump(value)
    [(_, loaded)] = list(load_documents(text)) or [(0, None)]
    assert loaded == _without_timestamps(yaml.safe_load(text))


@pytest.mark.parametrize("text", ["a: 1\n", "a: [80, '80', yes, 'yes', ~, 1.5, 0x10]\n", "<<: {a: 1}\nb: 2\n"])
def test_plain_scalars_resolve_like_safe_loader(text: str) -> None:
    assert next(load_documents(text))[1] == yaml.safe_load(text)


def test_timestamps_stay_strings() -> None:
    """kubectl keeps creationTimestamp a string; an unquoted one must not become a datetime."""
    assert next(load_documents("creationTimestamp: 2024-01-01T00:00:00Z\n"))[1] == {
        "creationTimestamp": "2024-01-01T00:00:00Z"
    }


def test_duplicate_keys_are_errors_with_document_index() -> None:
    with pytest.raises(YamlSyntaxError) as error:
        list(load_documents("a: 1\n---\nb: 1\nb: 2\n"))
    assert error.value.document == 1
    assert "duplicate key 'b'" in error.value.message


def test_recursive_alias_is_an_error_not_a_hang() -> None:
    with pytest.raises(YamlSyntaxError, match="nesting too deep"):
        list(load_documents("a: &x [*x]\n"))
