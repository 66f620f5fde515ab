"""Reading a large text on two processors gives exactly what one reading gives (#16).

``load_documents(parallel=True)`` cuts the text at a ``---`` line and reads the tail in a forked
child. Here the size threshold is lowered to 0 and the cut is moved over the whole text, so every
stream below is read both ways: the same documents, numbers, lines, and the same error (type,
message, document) after the same documents.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.adapters import yaml_io
from auditor.adapters.yaml_io import YamlSyntaxError, load_documents

# Documents of every kind the reader treats specially, well-formed and not; several have a
# "---" line inside a construct that is not a document boundary.
FRAGMENTS = [
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n",
    "a: 0x10\nb: 010\nc: yes\nd: on\ne: 1_000\nf: .5\ng: 2024-01-01\nh: ~\n",
    "base: &b {x: 1, y: [1, 2]}\nuse:\n  <<: *b\n  x: 2\nother: *b\n",
    "a: 1\na: 2\n1: one\ntrue: t\n1.5: f\n",
    "text: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "# only a comment\n",
    "",
    "- 1\n- two\n- [3, {four: 4}]\n",
    "quoted: 'it''s'\ndouble: \"a\\tb\"\nkey with spaces: v\n",
    'q: "open\n---\nstill"\n',  # a separator inside a quoted scalar: an error
    "f: [1,\n---\n2]\n",  # inside a flow collection: an error
    "block: |\n  kept\n---\nafter: 1\n",  # a block scalar ends before the separator
    "a: [1,\n",  # unterminated
    "b: *nope\n",  # unknown anchor
    "c: .inf\n",  # no JSON form
    "{a: 1}: 2\n",  # a collection as a key
    "1: a\n'1': b\n",  # two keys that become "1"
    "a:\n\tb: 1\n",  # a tab
    "plain: multi\n  line\n",
    "%YAML 1.1\n---\na: 1\n",  # a directive: never cut
    "a: 1\n...\n",  # a document end marker: never cut
    "--- # comment\nx: 1\n",
]


def _read(text: str, *, parallel: bool) -> tuple[list[tuple[int, Any]], dict[int, int], tuple[Any, ...] | None]:
    lines: dict[int, int] = {}
    documents: list[tuple[int, Any]] = []
    try:
        for item in load_documents(text, strict=False, lines=lines, parallel=parallel):
            documents.append(item)
    except YamlSyntaxError as error:
        return documents, lines, (type(error), error.message, error.document, error.fix)
    return documents, lines, None


def _recording_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the pid of every child the reader forks (in the parent; the child sees 0)."""
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return forked


def _assert_no_child_left(forked: list[int]) -> None:
    # Only the reader's own children: in the whole suite the test process has others (servers
    # that earlier tests started), so waitpid(-1) would see them.
    for pid in forked:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from(["\n---\n", "\n---\n---\n", "\n--- # c\n"]),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_two_processes_read_what_one_reads(
    monkeypatch: pytest.MonkeyPatch, fragments: list[str], head: float, separator: str
) -> None:
    monkeypatch.setattr(yaml_io, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(yaml_io, "_PARALLEL_HEAD", head)
    forked = _recording_forks(monkeypatch)
    text = separator.lstrip("\n").join(f if f.endswith("\n") or not f else f + "\n" for f in fragments)
    assert _read(text, parallel=True) == _read(text, parallel=False)
    _assert_no_child_left(forked)


def test_a_large_manifest_is_cut_and_read_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_io, "_BATCH", 3)  # several batches from the child
    text = "---\n".join(FRAGMENTS[0].replace("name: a", f"name: s{i}") for i in range(200))
    assert yaml_io._split_point(text) is not None
    monkeypatch.setattr(yaml_io, "PARALLEL_MIN_CHARS", 0)
    one, lines_one, error_one = _read(text, parallel=False)
    assert error_one is None
    two, lines_two, error_two = _read(text, parallel=True)
    assert (two, lines_two, error_two) == (one, lines_one, None)
    assert two[-1] == (200, one[-1][1])
    assert lines_two[200] == text.count("\n", 0, text.rindex("---\n")) + 1


def test_an_error_in_the_tail_names_the_document_and_line_of_one_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_io, "PARALLEL_MIN_CHARS", 0)
    text = "a: 1\n---\nb: 2\n---\nc: 3\n---\nd: [1,\n"
    one = _read(text, parallel=False)
    assert one[2] is not None
    assert one[2][2] == 4
    assert "line 8" in one[2][1]
    assert _read(text, parallel=True) == one


def test_a_reader_that_stops_early_leaves_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_io, "PARALLEL_MIN_CHARS", 0)
    forked = _recording_forks(monkeypatch)
    documents = cast(
        "Generator[tuple[int, Any], None, None]",
        load_documents("a: 1\n---\nb: 2\n---\nc: 3\n", strict=False, parallel=True),
    )
    assert next(documents) == (1, {"a": 1})
    documents.close()
    assert forked, "the reader forked no child: the test proves nothing"
    _assert_no_child_left(forked)


def test_texts_with_directives_or_end_markers_are_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_io, "_PARALLEL_HEAD", 0.4)  # the cut searched from the 6th character on
    assert yaml_io._split_point("a: 1\n...\n---\nb: 2\n") is None
    assert yaml_io._split_point("%YAML 1.1\n---\na: 1\n---\nb: 2\n") is None
    assert yaml_io._split_point("a: 1\n---\nb: 2\n") == 5


def test_without_a_second_process_one_reading_does_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(yaml_io, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(os, "fork", no_fork)
    text = "a: 1\n---\nb: 2\n---\nc: 3\n"
    assert _read(text, parallel=True) == _read(text, parallel=False)
