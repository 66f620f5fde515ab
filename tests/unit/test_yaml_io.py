"""The shared YAML reader reads what kubectl sends (goyaml v2 + JSON), and is bounded.

The expected values come from go.yaml.in/yaml/v2 ``resolve.go``/``decode.go`` and
sigs.k8s.io/yaml ``convertToJSONableObject``; tests/integration/test_yaml_parity.py checks the
same against the real kubectl and API server.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.adapters import yaml_io
from auditor.adapters.yaml_io import YamlLimitError, YamlSyntaxError, load_documents


def _one(text: str, *, strict: bool = False) -> Any:
    [(_, document)] = list(load_documents(text, strict=strict))
    return document


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("0x10", 16),
        ("0X1f", 31),
        ("010", 8),  # Go ParseInt base 0: a leading 0 is octal
        ("0o17", 15),
        ("0b101", 5),
        ("-0b101", -5),
        ("08", 8),  # not octal, not an int: Go's ParseFloat reads 8, JSON writes 8
        ("1_000", 1000),
        ("+12", 12),
        ("-3", -3),
        ("1.0", 1),  # json.Marshal(float64(1)) is 1: the API server stores an integer
        ("1e3", 1000),
        ("3.5", 3.5),
        (".5", 0.5),
        ("y", True),
        ("Y", True),
        ("yes", True),
        ("On", True),
        ("n", False),
        ("NO", False),
        ("off", False),
        ("True", True),
        ("~", None),
        ("null", None),
        ("", None),
        ("2024-01-01", "2024-01-01"),
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("12:30", "12:30"),  # no base-60 numbers in goyaml v2
        ("1.2.3", "1.2.3"),
        ("1e999", "1e999"),  # out of float64 range: Go's ParseFloat fails, so a string
        ("yES", "yES"),
        ("0x", "0x"),
        ("_1", "_1"),
        ("18446744073709551615", 1.8446744073709552e19),  # uint64 in goyaml, past int64: a float64 in the API server
        ("'0x10'", "0x10"),
        ('"yes"', "yes"),
        ("!!str 10", "10"),
        ("!!float 1", 1),
        ("!custom 10", "10"),
    ],
)
def test_plain_scalars_resolve_as_goyaml_v2(scalar: str, value: Any) -> None:
    assert _one(f"v: {scalar}\n") == {"v": value}
    assert type(_one(f"v: {scalar}\n")["v"]) is type(value)


@pytest.mark.parametrize("scalar", [".inf", "-.Inf", ".nan", "+.INF"])
def test_infinities_have_no_json_form(scalar: str) -> None:
    """kubectl fails (json: unsupported value); so does the reader, naming line and column."""
    with pytest.raises(YamlSyntaxError, match=r"v\[0\]: .inf and .nan have no JSON form \(kubectl refuses the file\)"):
        list(load_documents(f"a: 1\nv: [{scalar}]\n", strict=False))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{1: a}", {"1": "a"}),
        ("{0x10: a}", {"16": "a"}),
        ("{yes: a, off: b}", {"true": "a", "false": "b"}),
        ("{1.5: a, 1e6: b, 1.0: c, 0.1: d}", {"1.5": "a", "1e+06": "b", "1": "c", "0.1": "d"}),
        ("{.inf: a, 2024-01-01: b}", {".inf": "a", "2024-01-01": "b"}),
    ],
)
def test_keys_become_json_strings_as_sigs_yaml_writes_them(text: str, value: dict[str, str]) -> None:
    assert _one(text) == value


@pytest.mark.parametrize(
    "text", ["{~: a}", "{18446744073709551615: a}", "{[a]: b}", "{{a: 1}: b}", "{1: a, '1': b}", "{<<: {1: a}, '1': b}"]
)
def test_keys_kubectl_refuses_are_errors(text: str) -> None:
    with pytest.raises(YamlSyntaxError, match="key"):
        _one(text)


def test_case_e_a_merge_after_an_explicit_key_wins_as_kubectl_sends_it() -> None:
    """issue 9 case E: goyaml v2 applies << in order; the YAML spec's "explicit wins" does not hold."""
    text = "source:\n  principals: [cluster.local/ns/default/sa/ui]\n  <<: {principals: ['*']}\n"
    assert _one(text) == {"source": {"principals": ["*"]}}
    assert yaml.safe_load(text) == {"source": {"principals": ["cluster.local/ns/default/sa/ui"]}}  # the old reading


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("<<: {a: 1}\na: 2\n", {"a": 2}),
        ("a: 2\n<<: {a: 1, b: 1}\n", {"a": 1, "b": 1}),
        ("<<: [{a: 1}, {a: 2, b: 2}]\n", {"a": 1, "b": 2}),  # the earlier mapping wins
        ("x: &m {a: 1}\nz: {<<: *m, b: 2}\ny: 1\n", {"x": {"a": 1}, "z": {"a": 1, "b": 2}, "true": 1}),
        ("'<<': {a: 1}\n", {"<<": {"a": 1}}),  # a quoted << is an ordinary key
        ("a: 1\na: 2\n", {"a": 2}),  # kubectl keeps the last duplicate silently
    ],
)
def test_merge_and_duplicate_keys_as_kubectl(text: str, value: dict[str, Any]) -> None:
    assert _one(text) == value


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("a: 2\n<<: {a: 1}\n", "the merge (<<) overrides 'a' written before it"),
    ],
)
def test_the_auditors_own_files_refuse_ambiguous_keys(text: str, problem: str) -> None:
    with pytest.raises(YamlSyntaxError) as error:
        _one(text, strict=True)
    assert problem in error.value.message
    assert _one("<<: {a: 1, b: 1}\na: 2\n", strict=True) == {"a": 2, "b": 1}


def test_documents_are_numbered_from_one() -> None:
    with pytest.raises(YamlSyntaxError) as error:
        list(load_documents("a: 1\n---\nb: 1\nb: 2\n"))
    assert error.value.document == 2
    assert list(load_documents("a: 1\n---\n---\nb: 2\n")) == [(1, {"a": 1}), (3, {"b": 2})]


def test_a_separator_with_content_is_refused_like_kubectl() -> None:
    with pytest.raises(YamlSyntaxError, match="invalid document separator at line 3") as error:
        list(load_documents("a: 1\n---\n--- {b: 2}\n", strict=False))
    assert error.value.document == 2
    assert list(load_documents("--- # comment\na: 1\n", strict=False)) == [(1, {"a": 1})]


def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(YamlLimitError, match="too many alias expansions") as error:
        list(load_documents(_alias_bomb()))
    assert time.monotonic() - started < 1
    assert error.value.document == 1


def test_aliases_share_values_within_the_budget() -> None:
    value = _one(_alias_bomb(levels=4))
    assert len(value["a3"]) == 10
    assert value["a3"][0] is value["a2"]


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 400))]
)
def test_deep_nesting_is_an_error_not_a_crash(text: str) -> None:
    """libyaml's C composer overflows the C stack at ~100k levels (SIGSEGV); the reader stops at 256."""
    with pytest.raises(YamlLimitError, match="nesting too deep"):
        list(load_documents(text))


def test_recursive_and_unknown_anchors_are_errors() -> None:
    with pytest.raises(YamlSyntaxError, match="unknown anchor 'x'"):
        list(load_documents("a: &x [*x]\n"))


def test_a_document_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_io, "MAX_DOCUMENT_CHARS", 100)
    assert _one("a: " + "x" * 50 + "\n") == {"a": "x" * 50}
    with pytest.raises(YamlLimitError, match="the document is too large"):
        list(load_documents("a: 1\n---\nb: " + "x" * 200 + "\n"))


def test_check_size_counts_every_file_together() -> None:
    total = yaml_io.check_size("x" * 60, limit=100)
    with pytest.raises(yaml_io.InputTooLargeError):
        yaml_io.check_size("x" * 60, total, limit=100)


# U+FFFE and U+FFFF are left out: YAML 1.1 does not allow them (neither libyaml nor go-yaml), so a
# YAML document holding one is refused, as by kubectl. The same character in a JSON manifest is a
# known difference, pinned below (kubectl reads a stream that starts with "{" as JSON).
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"), max_size=8
)
_values = st.recursive(
    st.one_of(_text, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)


@given(_values)
@settings(max_examples=300)
def test_json_like_values_round_trip(value: Any) -> None:
    """JSON (a YAML subset, every string quoted) reads back unchanged."""
    text = json.dumps({"v": value}, ensure_ascii=False)
    assert _one(text) == {"v": value}


@pytest.mark.parametrize("character", ["\ufffe", "\uffff"])
def test_a_noncharacter_yaml_forbids_is_an_input_error_even_in_json(character: str) -> None:
    """Known difference: kubectl decodes a stream starting with "{" as JSON and keeps U+FFFE; the
    reader reads every stream as YAML 1.1 and refuses it, a clear input error (exit 2), never a
    verdict on a different object (docs/ambient-semantics.md §11)."""
    with pytest.raises(YamlSyntaxError, match="unacceptable character"):
        _one(json.dumps({"v": f"a{character}"}, ensure_ascii=False))


def test_aliased_scalars_and_huge_integers_read_as_the_api_server_stores_them() -> None:
    """json.Marshal writes 1e3 as 1000 (an integer); an integer past int64 decodes as a float64."""
    assert _one("d: [&x 1e3, &y -0.0]\nv: [*x, *y, 9223372036854775808]\n")["v"] == [1000, 0, 9.223372036854776e18]


def test_only_an_infinity_that_survives_is_refused() -> None:
    """A later duplicate key drops the .inf before json.Marshal sees it, so kubectl accepts the file."""
    assert _one("a: .inf\na: 1\n") == {"a": 1}
    with pytest.raises(YamlSyntaxError, match=r"^b\[1\]: \.inf and \.nan have no JSON form"):
        _one("a: 1\nb: [1, -.inf]\n")
