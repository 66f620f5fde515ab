"""Bounded YAML reading, shared by every file the auditor reads, with kubectl's semantics.

Every YAML input (manifests, rules files, the ``AUDITOR_CONFIG_FILE`` settings file, the daemon's
rules reload) goes through ``load_documents``. It reads a document the way ``kubectl`` does
before it sends the object to the API server: sigs.k8s.io/yaml v1.6.0 ``YAMLToJSON``, which
decodes with go.yaml.in/yaml/v2 (``resolve.go``, ``decode.go``) and then marshals to JSON
(Kubernetes v1.34 apimachinery ``util/yaml``, cli-runtime ``StreamVisitor``):

- Plain scalars resolve as goyaml v2 ``resolve``: ``y``/``Y``/``yes``/``on``... are booleans,
  ``n``/``no``/``off``... false; integers take Go's ``ParseInt(s, 0, 64)`` syntax after removing
  every ``_`` (``0x10`` = 16, ``010`` = 8, ``0o10`` = 8, ``0b10`` = 2, ``1_000`` = 1000); ``08``
  is the float 8; timestamps stay the string as written. Quoted scalars are strings.
- Merge keys (``<<``) are applied in order with the other keys, the later write winning: an
  explicit key *before* ``<<`` is overridden by the merged value (the YAML spec says explicit keys
  win; goyaml v2 does not, and kubectl sends what goyaml decodes). In a list of merged mappings
  the earlier mapping wins.
- Then JSON: keys become strings (``1`` -> ``"1"``, ``true`` -> ``"true"``, floats in Go's
  32-bit ``%g``); a null key, or two keys that become the same string, is an error; ``.inf`` and
  ``.nan`` values have no JSON form (kubectl fails); a float with an integral value is the JSON
  integer the API server stores (``80.0`` -> ``80``).
- Duplicate keys: kubectl keeps the last one silently, so manifests do (``strict=False``); the
  auditor's own files (rules, settings) are ``strict``: a repeated key, or a merge that would
  override a key written before it, is an error, since either hides a mistake.
- A line that starts with ``---`` followed by anything but a comment is refused (kubectl's
  document splitter refuses it) in manifests.

Hostile input is bounded (docs/cli.md, "Input limits"): nesting depth, the nodes an alias
expands to per document (the "billion laughs" bomb), and the size of one document; callers bound
file and total input size with ``check_size``. Aliases share the anchored value instead of
copying it, so memory stays proportional to the text; the expansion budget bounds the work of
anyone walking the result.

The events come from libyaml's C parser when available; values are built here without
recursion (a deeply nested document would overflow the C stack of libyaml's composer).
"""

from __future__ import annotations

import base64
import binascii
import marshal
import math
import os
import re
import struct
import warnings
from collections.abc import Generator, Iterator
from typing import Any, NoReturn

import yaml
from yaml import events as ev

MAX_DEPTH = 256
"""Nesting depth of collections in one document."""
MAX_ALIAS_NODES = 100_000
"""Nodes that aliases may expand to in one document (each use of an anchor counts its nodes)."""
MAX_DOCUMENT_CHARS = 3 * 1024 * 1024
"""Characters in one document: the API server's request body limit (3 MiB) is the same order."""
MAX_FILE_CHARS = 64 * 1024 * 1024
"""Characters in one file and in all files of one invocation together."""

_Parser: type[yaml.BaseLoader] = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_TAG = "tag:yaml.org,2002:"
_STR, _BINARY, _MERGE = _TAG + "str", _TAG + "binary", _TAG + "merge"
_INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP = (_TAG + t for t in ("int", "float", "bool", "null", "timestamp"))
_RESOLVABLE = frozenset({_STR, _BOOL, _INT, _FLOAT, _NULL, _TIMESTAMP})


class _Merge:
    """The resolved ``<<`` key."""


MERGE = _Merge()

# goyaml v2 resolve.go resolveMapList.
_RESOLVE_MAP: dict[str, Any] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
    "<<": MERGE,
}
# resolveTable: the first character decides which rule may apply; others are strings.
_HINT: dict[str, str] = {
    **dict.fromkeys("+-", "S"),
    **dict.fromkeys("0123456789", "D"),
    **dict.fromkeys("yYnNtTfFoO~", "M"),
    ".": ".",
}
# Go strconv.ParseInt(s, 0, 64) syntax (underscores already removed).
_GO_INT = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|0[oO]([0-7]+)|0[bB]([01]+)|0([0-7]*)|([1-9][0-9]*))")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_GO_FLOAT_DOT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")
_BAD_SEPARATOR = re.compile(r"^---[ \t\r]*[^\s#]", re.MULTILINE)
_INT64 = 1 << 63
_FLOAT32_MAX = 3.4028234663852886e38
_UINT64 = 1 << 64


class YamlSyntaxError(ValueError):
    """A document that cannot be read: ``document`` is 1-based within its file."""

    def __init__(self, document: int, message: str, fix: str = "fix the YAML syntax") -> None:
        super().__init__(message)
        self.document = document
        self.message = message
        self.fix = fix


class YamlLimitError(YamlSyntaxError):
    """A document over one of the input limits (docs/cli.md, "Input limits")."""


class _RefusedError(Exception):
    """Raised inside the builder; becomes ``YamlSyntaxError`` with the document number."""

    def __init__(self, message: str, mark: Any = None, *, limit: bool = False, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.limit = limit
        self.fix = fix


class InputTooLargeError(ValueError):
    """Raised by ``check_size``: ``chars`` read, over ``limit``."""

    def __init__(self, chars: int, limit: int) -> None:
        super().__init__(f"the input is too large (over {limit:,} characters)")
        self.chars = chars
        self.limit = limit


def check_size(text: str, already: int = 0, limit: int = MAX_FILE_CHARS) -> int:
    """Return ``already + len(text)``; raise ``InputTooLargeError`` past ``limit`` (characters)."""
    total = already + len(text)
    if len(text) > limit or total > limit:
        raise InputTooLargeError(total, limit)
    return total


PARALLEL_MIN_CHARS = 512 * 1024
"""Texts at least this long may be read on two processors (``load_documents(parallel=True)``)."""
_PARALLEL_HEAD = 0.45
"""The share of the text the calling process reads itself: it also decodes every document."""
_BATCH = 256
_SPLIT = re.compile(r"\n---\n")
_NOT_SPLIT = re.compile(r"^(?:%|\.\.\.)", re.MULTILINE)


def load_documents(
    text: str, *, strict: bool = True, lines: dict[int, int] | None = None, parallel: bool = False
) -> Iterator[tuple[int, Any]]:
    """Yield ``(number, document)`` for every non-empty document, numbered from 1.

    With ``lines``, each yielded document's number is mapped to the 1-based line where it starts
    (its ``---``, or its first content), so later errors about it can name a line.

    ``strict=False`` is kubectl's reading of a manifest (a duplicate key keeps the last value);
    ``strict=True`` (the auditor's own files) refuses duplicate keys. Raises ``YamlSyntaxError``
    (``YamlLimitError`` for a limit) naming the document and, where known, line and column.

    ``parallel=True``: a text of at least ``PARALLEL_MIN_CHARS`` characters is cut at a document
    separator and its tail is read by a forked child process while this one reads the head
    (#16). Same documents, numbers, lines and errors as one reading: see ``_load_parallel``.
    """
    if not strict:
        _check_separators(text)
    split = _split_point(text) if parallel and len(text) >= PARALLEL_MIN_CHARS else None
    if split is None:
        yield from _load(text, strict, lines, [0])
    else:
        yield from _load_parallel(text, split, strict, lines)


def _check_separators(text: str) -> None:
    bad = _BAD_SEPARATOR.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise YamlSyntaxError(
            len(re.findall(r"^---", text[: bad.start()], re.MULTILINE)) + 1,
            f"invalid document separator at line {line}: kubectl accepts only a comment after ---",
            fix="put the document's content on the line after ---",
        )


def _load(text: str, strict: bool, lines: dict[int, int] | None, count: list[int]) -> Iterator[tuple[int, Any]]:
    """The reading itself; ``count[0]`` follows the documents started so far (empty ones too)."""
    parser: Any = _Parser(text)  # get_event is untyped in types-PyYAML
    number = 0
    try:
        while True:
            event = parser.get_event()
            kind = type(event)
            if kind is ev.DocumentStartEvent:
                number += 1
                count[0] = number
                document = _Builder(parser, strict).document(event)
                if document is not None:
                    if lines is not None:
                        lines[number] = event.start_mark.line + 1
                    yield number, document
            elif kind is ev.StreamEndEvent:
                return
    except _RefusedError as refused:
        cls = YamlLimitError if refused.limit else YamlSyntaxError
        raise cls(number, _at(refused.mark, refused.message), refused.fix or "fix the YAML") from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError(max(number, 1), _describe(error)) from error
    finally:
        parser.dispose()


def _split_point(text: str) -> int | None:
    """Where the text may be cut in two: the start of a ``---`` line alone, or None.

    A ``---`` line at column 0 either starts a document or makes the whole text an error
    (inside a quoted scalar or a flow collection libyaml refuses it; a block scalar ends before
    it), and anchors, tags and merges never cross a document. Texts with directives (``%``) or
    document end markers (``...``) are not cut: their scope crosses the line.
    """
    if _NOT_SPLIT.search(text) is not None:
        return None
    target = int(len(text) * _PARALLEL_HEAD)
    found = _SPLIT.search(text, max(target - 1, 0))
    if found is None:
        return None
    return found.start() + 1


def _load_parallel(text: str, split: int, strict: bool, lines: dict[int, int] | None) -> Iterator[tuple[int, Any]]:
    """Read ``text[:split]`` here and ``text[split:]`` in a forked child, then the child's documents.

    The child sends its documents as ``marshal`` batches (dict, list, str, int, float, bool and
    None, shared values kept shared) through an anonymous in-memory file. Its numbers and lines
    are shifted by the documents and lines of the head. Any error, in either part, or a child
    that does not finish cleanly, falls back to reading the whole text in this process and
    skips the documents already yielded: errors are always those of one reading (their
    document, line and column), and the documents are the same since each ends before the cut.
    """
    try:
        fd = os.memfd_create("auditor-yaml", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux: one process
        yield from _load(text, strict, lines, [0])
        return
    yielded = [0]
    try:
        complete = yield from _two_parts(text, split, strict, lines, fd=fd, yielded=yielded)
    finally:
        os.close(fd)
    if not complete:
        for number, document in _load(text, strict, lines, [0]):
            if number > yielded[0]:
                yield number, document


def _two_parts(
    text: str, split: int, strict: bool, lines: dict[int, int] | None, *, fd: int, yielded: list[int]
) -> Generator[tuple[int, Any], None, bool]:
    """The head here, the tail from the child; False if one reading must finish the text."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (the progress line's): the
        # child only reads YAML, takes no lock another thread may hold, and leaves with os._exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            pid = os.fork()
        except OSError:  # no process to be had (a limit): one reading
            return False
    if pid == 0:  # pragma: no cover - the child; it ends in os._exit
        _child(text[split:], strict, fd)
    try:
        count = [0]
        try:
            for number, document in _load(text[:split], strict, lines, count):
                yielded[0] = number
                yield number, document
        except YamlSyntaxError:
            return False
        _, status = os.waitpid(pid, 0)
        pid = 0
        if status != 0:
            return False
        return (yield from _tail(fd, count[0], text.count("\n", 0, split), lines, yielded))
    finally:
        if pid:
            import signal  # noqa: PLC0415 - start-up (#16): only a reading abandoned halfway

            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _tail(
    fd: int, documents: int, head_lines: int, lines: dict[int, int] | None, yielded: list[int]
) -> Generator[tuple[int, Any], None, bool]:
    """The child's batches, numbered after the head's ``documents``; False unless its end marker came."""
    with os.fdopen(os.dup(fd), "rb") as batches:
        batches.seek(0)
        while True:
            header = batches.read(8)
            if len(header) < 8:
                return False
            # Written by our own forked child a moment ago, never by anyone else.
            batch = marshal.loads(batches.read(int.from_bytes(header, "little")))  # noqa: S302 - see above
            if batch is None or batch == []:
                return batch is not None  # None: the tail has an error; []: the end
            for number, line, document in batch:
                yielded[0] = documents + number
                if lines is not None and line is not None:
                    lines[yielded[0]] = line + head_lines
                yield yielded[0], document


def _child(tail: str, strict: bool, fd: int) -> NoReturn:  # pragma: no cover - runs in the forked child
    """Read the tail, write ``marshal`` batches of ``(number, line, document)``, then ``[]`` (done)
    or ``None`` (an error: the parent reads the text again to report it) and leave at once."""
    code = 1
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:

            def send(value: Any) -> None:
                data = marshal.dumps(value)
                out.write(len(data).to_bytes(8, "little"))
                out.write(data)

            lines: dict[int, int] = {}
            batch: list[tuple[int, int | None, Any]] = []
            end: list[Any] | None = []
            try:
                for number, document in _load(tail, strict, lines, [0]):
                    batch.append((number, lines.get(number), document))
                    if len(batch) >= _BATCH:
                        send(batch)
                        batch = []
            except YamlSyntaxError:
                end = None
            if batch:
                send(batch)
            send(end)
        code = 0
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers twice


class _Frame:
    """An open collection: its value, anchor, node count and (mappings) the pending key."""

    __slots__ = ("anchor", "explicit", "key", "key_mark", "key_type", "mapping", "size", "value")

    def __init__(self, value: Any, anchor: str | None, mapping: bool) -> None:
        self.value = value
        self.anchor = anchor
        self.mapping = mapping
        self.size = 1
        self.key: Any = _NO_KEY
        self.key_mark: Any = None
        self.explicit: set[str] | None = None
        self.key_type: type = str


_NO_KEY = object()
# Plain scalar text -> its resolved value (immutable: str, int, float, bool, None, MERGE). Manifests
# repeat the same keys and values; the bound keeps hostile input from growing it without limit.
_PLAIN_CACHE: dict[str, Any] = {}
_PLAIN_CACHE_MAX = 65_536


class _Builder:
    """Turns the events of one document into JSON-like values (dict, list, str, int, float, bool, None)."""

    def __init__(self, parser: Any, strict: bool) -> None:
        self.parser = parser
        self.strict = strict
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.expanded = 0
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.start: Any = None
        self.non_finite = False
        # The YAML type of every key that was not a string, per mapping (by id): goyaml keeps 1
        # and "1" apart and sigs.k8s.io/yaml then writes both as "1" in Go's random map order.
        self.key_types: dict[int, dict[str, type]] = {}
        self.merged: list[Any] = []  # merge sources stay alive, so that their ids stay theirs

    def document(self, start: ev.DocumentStartEvent) -> Any:  # noqa: PLR0912, PLR0915 - one inlined loop: a call per event is the cost removed (#16)
        """Build one document from the parser's events, up to its ``DocumentEndEvent``.

        The loop handles the common events inline (a plain or quoted untagged scalar without an
        anchor, a collection closing into a parent whose keys are all strings); anything else
        goes through the general handlers. Both paths give the same value: the inline one only
        skips checks that cannot apply (a merge key, a typed key, strict duplicate keys).
        """
        self.start = start
        get = self.parser.get_event
        stack = self.stack
        key_types = self.key_types
        lax = not self.strict
        cache = _PLAIN_CACHE
        scalar_kind, alias_kind, end_kind = ev.ScalarEvent, ev.AliasEvent, ev.DocumentEndEvent
        mapping_start, sequence_start = ev.MappingStartEvent, ev.SequenceStartEvent
        mapping_end, sequence_end = ev.MappingEndEvent, ev.SequenceEndEvent
        start_index = start.start_mark.index if start.start_mark is not None else None
        while True:
            event = get()
            kind = type(event)
            if kind is scalar_kind:
                if event.tag is not None or event.anchor is not None or not stack:
                    self._on_scalar(event)
                    continue
                text = event.value
                if event.implicit[0]:
                    value = cache.get(text, _NO_KEY)
                    if value is _NO_KEY:
                        value = _resolve_plain(text)
                        if len(cache) < _PLAIN_CACHE_MAX:
                            cache[text] = value
                else:
                    value = text
                frame = stack[-1]
                if frame.mapping:
                    key = frame.key
                    if key is _NO_KEY:
                        if type(value) is str and text != "<<":  # a plain << is the merge key
                            frame.size += 1
                            frame.key = value
                            frame.key_mark = event.start_mark
                            frame.key_type = str
                            continue
                    elif lax and key is not MERGE and frame.key_type is str and id(frame.value) not in key_types:
                        frame.size += 1
                        frame.key = _NO_KEY
                        kind = type(value)
                        frame.value[key] = self._value(value) if kind is int or kind is float else value
                        continue
                elif type(value) is str:
                    frame.size += 1
                    frame.value.append(value)
                    continue
                self._add(frame, value, 1, event, scalar_event=event)
            elif kind is mapping_start or kind is sequence_start:
                self._on_start(event)
            elif kind is mapping_end or kind is sequence_end:
                end_mark = event.end_mark
                if (
                    start_index is not None
                    and end_mark is not None
                    and end_mark.index - start_index > MAX_DOCUMENT_CHARS
                ):
                    _check_document_size(start, event)
                frame = stack.pop()
                if frame.anchor is not None or not stack:
                    stack.append(frame)
                    self._on_end(event)
                    continue
                parent = stack[-1]
                if not parent.mapping:
                    parent.size += frame.size
                    parent.value.append(frame.value)
                    continue
                key = parent.key
                if (
                    lax
                    and key is not _NO_KEY
                    and key is not MERGE
                    and parent.key_type is str
                    and id(parent.value) not in key_types
                ):
                    parent.size += frame.size
                    parent.key = _NO_KEY
                    parent.value[key] = frame.value
                    continue
                self._add(parent, frame.value, frame.size, event)
            elif kind is alias_kind:
                self._on_alias(event)
            elif kind is end_kind:
                _check_document_size(start, event)
                return self._finish(start)

    def _value(self, value: Any) -> Any:
        if type(value) is float or type(value) is int:
            value = _json_value(value)
            if type(value) is float and not math.isfinite(value):
                self.non_finite = True
        return value

    def _finish(self, start: ev.DocumentStartEvent) -> Any:
        root = self._value(self.root)
        # Only a value that survives merges and duplicate keys reaches json.Marshal.
        where = _non_finite_path(root) if self.non_finite else None
        if where is not None:
            raise _RefusedError(
                f"{where}: .inf and .nan have no JSON form (kubectl refuses the file)", start.start_mark, fix="quote it"
            )
        return root

    def _on_scalar(self, event: ev.ScalarEvent) -> None:
        value = self._scalar(event)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1)
        if self.stack:
            self._add(self.stack[-1], value, 1, event, scalar_event=event)
        else:
            self.root = value

    def _on_start(self, event: ev.CollectionStartEvent) -> None:
        stack = self.stack
        if stack and stack[-1].mapping and stack[-1].key is _NO_KEY:
            raise _RefusedError("a mapping key must be a scalar, not a collection", event.start_mark)
        if len(stack) >= MAX_DEPTH:
            raise _RefusedError(
                f"nesting too deep (more than {MAX_DEPTH} levels)",
                event.start_mark,
                limit=True,
                fix="flatten the document",
            )
        mapping = type(event) is ev.MappingStartEvent
        stack.append(_Frame({} if mapping else [], event.anchor, mapping))

    def _on_end(self, event: ev.CollectionEndEvent) -> None:
        _check_document_size(self.start, event)  # early: do not build a huge document first
        frame = self.stack.pop()
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (frame.value, frame.size)
        if self.stack:
            self._add(self.stack[-1], frame.value, frame.size, event)
        else:
            self.root = frame.value

    def _on_alias(self, event: ev.AliasEvent) -> None:
        anchored = self.anchors.get(event.anchor) if event.anchor is not None else None
        if anchored is None:
            raise _RefusedError(f"unknown anchor {event.anchor!r}", event.start_mark)
        value, size = anchored
        self.expanded += size
        if self.expanded > MAX_ALIAS_NODES:
            raise _RefusedError(
                f"too many alias expansions (aliases expand to more than {MAX_ALIAS_NODES:,} nodes)",
                event.start_mark,
                limit=True,
                fix="write the values out instead of nesting aliases",
            )
        if self.stack:
            self._add(self.stack[-1], value, size, event)
        else:
            self.root = value

    def _add(self, frame: _Frame, value: Any, size: int, event: Any, scalar_event: Any = None) -> None:
        frame.size += size
        if not frame.mapping:
            frame.value.append(self._value(value))
            return
        if frame.key is _NO_KEY:
            if scalar_event is None and isinstance(value, dict | list):
                raise _RefusedError("a mapping key must be a scalar, not a collection", event.start_mark)
            frame.key = MERGE if scalar_event is not None and _is_merge(scalar_event) else _json_key(value, event)
            frame.key_mark = event.start_mark
            frame.key_type = type(value)
            return
        key, frame.key = frame.key, _NO_KEY
        if key is MERGE:
            self._merge(frame, value, frame.key_mark)
            return
        value = self._value(value)
        target: dict[str, Any] = frame.value
        if frame.key_type is not str or id(target) in self.key_types:
            self._typed_key(target, key, frame.key_type, frame.key_mark)
        if self.strict:
            explicit = frame.explicit if frame.explicit is not None else set()
            frame.explicit = explicit
            if key in explicit:
                raise _RefusedError(f"duplicate key {key!r}", frame.key_mark, fix="keep one of them")
            explicit.add(key)
        target[key] = value

    def _merge(self, frame: _Frame, value: Any, mark: Any) -> None:
        sources = reversed(value) if isinstance(value, list) else (value,)
        target: dict[str, Any] = frame.value
        for source in sources:
            if not isinstance(source, dict):
                raise _RefusedError("a merge key (<<) needs a mapping or a list of mappings", mark)
            if self.strict and frame.explicit:
                overridden = frame.explicit.intersection(source)
                if overridden:
                    raise _RefusedError(
                        f"the merge (<<) overrides {sorted(overridden)[0]!r} written before it "
                        "(YAML says the explicit key wins, kubectl says the merge wins)",
                        mark,
                        fix="put << first, or remove one of the two",
                    )
            self.merged.append(source)
            source_types = self.key_types.get(id(source))
            if source_types is not None or id(target) in self.key_types:
                for key in source:
                    self._typed_key(target, key, (source_types or {}).get(key, str), mark)
            target.update(source)

    def _typed_key(self, target: dict[str, Any], key: str, key_type: type, mark: Any) -> None:
        """Refuse two keys of different YAML types that become the same JSON key."""
        types = self.key_types.setdefault(id(target), {})
        if key in target and types.get(key, str) is not key_type:
            raise _RefusedError(
                f"two keys become {key!r} in JSON ({types.get(key, str).__name__} and {key_type.__name__}); "
                "kubectl keeps one of them at random",
                mark,
                fix="quote the keys, and keep one",
            )
        if key_type is not str:
            types[key] = key_type
        else:
            types.pop(key, None)

    def _scalar(self, event: ev.ScalarEvent) -> Any:
        tag = event.tag
        value: str = event.value
        if tag is None:
            return _resolve_plain(value) if event.implicit[0] else value
        if tag == _BINARY:
            try:
                return base64.b64decode(value, validate=False).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError) as error:
                raise _RefusedError("!!binary value contains invalid base64 data", event.start_mark) from error
        if tag not in _RESOLVABLE:
            return value  # "!", "!!merge" as a value, custom tags: goyaml keeps the text
        if tag in (_STR, _TIMESTAMP):
            return value
        resolved = _resolve_plain(value)
        if tag == _FLOAT and type(resolved) is int:
            return float(resolved)
        wanted = {_INT: int, _FLOAT: float, _BOOL: bool, _NULL: type(None)}[tag]
        if type(resolved) is not wanted:
            raise _RefusedError(f"cannot decode {value!r} as a !!{tag.removeprefix(_TAG)}", event.start_mark)
        return resolved


def _check_document_size(start: ev.DocumentStartEvent, end: ev.Event) -> None:
    if end.end_mark is None or start.start_mark is None:
        return
    chars = end.end_mark.index - start.start_mark.index
    if chars > MAX_DOCUMENT_CHARS:
        raise _RefusedError(
            f"the document is too large ({chars:,} characters; the limit is {MAX_DOCUMENT_CHARS:,})",
            start.start_mark,
            limit=True,
            fix="split it into several documents",
        )


def _is_merge(event: ev.ScalarEvent) -> bool:
    return event.value == "<<" and ((event.tag is None and event.implicit[0]) or event.tag == _MERGE)


def _resolve_plain(value: str) -> Any:
    """goyaml v2 ``resolve("", value)`` for a plain scalar (timestamps stay strings)."""
    if not value:
        return None
    hint = _HINT.get(value[0])
    if hint is None:
        return value
    if value in _RESOLVE_MAP:
        return _RESOLVE_MAP[value]
    if hint == ".":
        return float(value) if _GO_FLOAT_DOT.fullmatch(value) else value
    if hint == "M":
        return value
    plain = value.replace("_", "")
    number = _go_int(plain)
    if number is not None:
        return number
    if _YAML_FLOAT.fullmatch(plain):
        parsed = float(plain)
        if not math.isinf(parsed):  # Go's ParseFloat fails out of range: the text stays a string
            return parsed
    binary = _goyaml_binary(plain)
    return value if binary is None else binary


def _goyaml_binary(plain: str) -> int | None:
    """resolve.go's own 0b/-0b fallback after ParseInt failed (e.g. ``0b-101``)."""
    if plain.startswith("0b"):
        match = re.fullmatch(r"[+-]?[01]+", plain[2:])
        if match:
            number = int(match.group(0), 2)
            if -_INT64 <= number < _UINT64:
                return number
    elif plain.startswith("-0b") and re.fullmatch(r"[01]+", plain[3:]):
        number = -int(plain[3:], 2)
        if number >= -_INT64:
            return number
    return None


def _go_int(plain: str) -> int | None:
    """``strconv.ParseInt(plain, 0, 64)``, else ``ParseUint(plain, 0, 64)``, else None."""
    match = _GO_INT.fullmatch(plain)
    if match is None:
        return None
    sign, hexa, octal, binary, legacy_octal, decimal = match.groups()
    if hexa is not None:
        number = int(hexa, 16)
    elif octal is not None:
        number = int(octal, 8)
    elif binary is not None:
        number = int(binary, 2)
    elif decimal is not None:
        number = int(decimal)
    else:
        number = int(legacy_octal or "0", 8)
    if sign == "-":
        number = -number
    if -_INT64 <= number < _INT64:
        return number
    if sign == "" and number < _UINT64:
        return number
    return None


def _json_value(value: Any) -> Any:
    """A scalar after sigs.k8s.io/yaml's JSON round trip and the API server's JSON decoding.

    json.Marshal writes an integral float64 without a fraction, which decodes as an integer; an
    integer outside int64 decodes as a float64. Infinities and NaN stay (``_non_finite_path``).
    """
    kind = type(value)
    if kind is float:
        if value.is_integer() and abs(value) < _INT64:
            return int(value)
    elif kind is int and not -_INT64 <= value < _INT64:
        return float(value)
    return value


def _non_finite_path(value: Any, path: str = "") -> str | None:
    """Where a surviving infinity or NaN is (json.Marshal fails on it), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(document)"
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _non_finite_path(item, where)
        if found is not None:
            return found
    return None


def _json_key(key: Any, event: Any) -> str:
    """A mapping key as sigs.k8s.io/yaml ``convertToJSONableObject`` writes it."""
    if type(key) is str:
        return key
    if type(key) is bool:
        return "true" if key else "false"
    if type(key) is int:
        if -_INT64 <= key < _INT64:
            return str(key)
    elif type(key) is float:
        return _go_float32_g(key)
    raise _RefusedError(f"unsupported mapping key {key!r} (kubectl refuses it)", event.start_mark, fix="quote the key")


def _go_float32_g(number: float) -> str:
    """``strconv.FormatFloat(number, 'g', -1, 32)`` with goyaml's spelling of infinities."""
    if math.isnan(number):
        return ".nan"
    if abs(number) > _FLOAT32_MAX:  # infinite once narrowed to 32 bits
        return ".inf" if number > 0 else "-.inf"
    single = _narrow(number)
    digits = ""
    for precision in range(1, 10):  # the shortest decimal that reads back as the same float32
        digits = f"{single:.{precision - 1}e}"
        if _narrow(float(digits)) == single:
            break
    mantissa, exponent_text = digits.split("e")
    exponent = int(exponent_text)
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    if exponent < -4 or exponent >= 6:  # Go: %e when exp < -4 || exp >= eprec (6 when shortest)
        return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    from decimal import Decimal  # noqa: PLC0415 - start-up (#16): only for float32 values

    return format(Decimal(f"{mantissa}e{exponent}"), "f")


def _narrow(number: float) -> float:
    return float(struct.unpack("f", struct.pack("f", number))[0])


def _at(mark: Any, message: str) -> str:
    if mark is None:
        return message
    return f"{message} (line {mark.line + 1}, column {mark.column + 1})"


def _describe(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"
