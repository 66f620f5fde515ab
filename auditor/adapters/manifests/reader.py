"""Manifest files, directories (recursive) and ``-`` (stdin) to a ``Snapshot``.

Each document is decoded by ``auditor.core.decode``, the same code the live reader uses.
Malformed documents raise ``InputError`` with the file and document index; unknown kinds are
ignored; the same object twice is an error (which one would the cluster hold?). Secrets are kept
apart, only to resolve header values the rules reference, and never enter the snapshot.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from auditor.adapters.yaml_io import MAX_FILE_CHARS, InputTooLargeError, YamlSyntaxError, check_size, load_documents
from auditor.core.decode import (
    DEFAULT_NAMESPACE,
    Decoded,
    DecodeError,
    build_snapshot,
    decode_object,
)
from auditor.core.snapshot import Snapshot
from auditor.errors import InputError

_SUFFIXES = (".yaml", ".yml", ".json")

SecretData = Mapping[tuple[str, str], Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class ManifestInput:
    """What manifest files hold: the snapshot, the Secrets' data by ``(namespace, name)`` and the files read."""

    snapshot: Snapshot
    secrets: SecretData = field(default_factory=dict)
    files: tuple[str, ...] = ()


def read_manifests(paths: Sequence[str], stdin: TextIO) -> ManifestInput:
    """Read manifest files and directories (``-`` for stdin) into one snapshot. Raises ``InputError``
    naming the file, document (from 1) and line for unreadable, oversized or malformed input."""
    objects: list[Decoded] = []
    secrets: dict[tuple[str, str], Mapping[str, str]] = {}
    seen: dict[tuple[str, str, str], str] = {}
    expanded = _expand(paths)
    files = [file for file, _ in expanded]
    found: dict[str, int] = dict.fromkeys(paths, 0)
    for (name, text), (_, raw) in zip(_read_all(files, stdin), expanded, strict=True):
        # Each document is decoded as soon as it is read, so a file's raw documents are never all
        # in memory at once. A file's YAML error still wins over an object error before it (the
        # error reported is the same as when the whole file was read first).
        lines: dict[int, int] = {}
        refused: InputError | None = None
        for index, document in _documents(name, text, lines):
            found[raw] += 1
            if refused is None:
                try:
                    where = _Where(name, index, lines.get(index))
                    _collect(where, document=document, objects=objects, secrets=secrets, seen=seen)
                except InputError as error:
                    refused = error
        if refused is not None:
            raise refused
    for raw, count in found.items():
        if count == 0:
            # One behaviour for an empty file, an empty directory and empty stdin: nothing to audit
            # is a mistake in the input (a wrong path, a failed generator upstream), exit 2.
            raise InputError(
                "<stdin>" if raw == "-" else raw,
                "holds no Kubernetes object (empty, or only comments)",
                fix="point --manifests at the manifests, or check the command that produced them",
            )
    return ManifestInput(build_snapshot(objects), secrets, tuple(files))


@dataclass(frozen=True, slots=True)
class _Where:
    name: str
    index: int
    line: int | None


def _expand(paths: Sequence[str]) -> list[tuple[str, str]]:
    """Every file to read, in order, with the ``--manifests`` argument it came from."""
    files: list[tuple[str, str]] = []
    for raw in paths:
        if raw == "-":
            files.append(("-", raw))
            continue
        path = Path(raw)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
            if not found:
                raise InputError(
                    raw,
                    "the directory holds no .yaml, .yml or .json file",
                    fix="point --manifests at the manifests",
                )
            files += [(name, raw) for name in found]
        elif path.is_file():
            files.append((raw, raw))
        else:
            raise InputError(raw, "no such file or directory", fix="check the --manifests path")
    return files


def _read_all(files: list[str], stdin: TextIO) -> list[tuple[str, str]]:
    """Every file's text; all of them together at most ``MAX_FILE_CHARS`` (docs/cli.md, "Input limits")."""
    texts = []
    total = 0
    for name in files:
        shown = "<stdin>" if name == "-" else name
        try:
            # Read one character past the budget, never the whole of an endless or huge file.
            budget = MAX_FILE_CHARS - total + 1
            if name == "-":
                text = stdin.read(budget)
            else:
                with Path(name).open(encoding="utf-8") as handle:
                    text = handle.read(budget)
            total = check_size(text, total, MAX_FILE_CHARS)
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(
                shown,
                f"cannot read: {error}",
                fix="check the file's permissions and encoding (UTF-8)",
            ) from error
        except InputTooLargeError as error:
            raise InputError(
                shown,
                f"the manifests are too large (more than {error.limit:,} characters in all)",
                fix="audit fewer files at once (see Input limits in docs/cli.md)",
            ) from error
        texts.append((shown, text))
    return texts


def _documents(name: str, text: str, lines: dict[int, int]) -> Iterator[tuple[int, Any]]:
    try:
        yield from load_documents(text, strict=False, lines=lines, parallel=True)  # kubectl's reading (yaml_io)
    except YamlSyntaxError as problem:
        raise InputError(name, problem.message, document=problem.document, fix=problem.fix) from problem


def _collect(
    at: _Where,
    *,
    document: Any,
    objects: list[Decoded],
    secrets: dict[tuple[str, str], Mapping[str, str]],
    seen: dict[tuple[str, str, str], str],
) -> None:
    name, index, line = at.name, at.index, at.line
    where = f"{name}#{index}"
    if not isinstance(document, Mapping):
        raise InputError(
            name,
            f"a document must be a Kubernetes object, got {type(document).__name__}",
            document=index,
            line=line,
            fix="remove it or write a mapping with apiVersion and kind",
        )
    try:
        decoded = decode_object(document, source=where)
        if document.get("kind") == "Secret":
            secrets[_secret_key(document)] = _secret_values(document)
    except DecodeError as error:
        raise InputError(name, error.problem, field=error.field, fix=error.fix, document=index, line=line) from error
    for obj in decoded:
        identity = (obj.meta.kind, obj.meta.namespace, obj.meta.name)
        if identity in seen:
            raise InputError(
                name,
                f"{obj.meta.ref} is defined twice (also at {seen[identity]})",
                document=index,
                line=line,
                fix="keep one definition",
            )
        seen[identity] = where
        objects.append(obj)


def _secret_key(document: Mapping[str, Any]) -> tuple[str, str]:
    metadata = document.get("metadata") or {}
    return (str(metadata.get("namespace") or DEFAULT_NAMESPACE), str(metadata.get("name", "")))


def _secret_values(document: Mapping[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, encoded in (document.get("data") or {}).items():
        try:
            values[str(key)] = base64.b64decode(str(encoded), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise DecodeError(
                f"data.{key}",
                "is not base64-encoded UTF-8",
                "encode the value with base64, or use stringData",
            ) from error
    values.update({str(k): str(v) for k, v in (document.get("stringData") or {}).items()})
    return values
