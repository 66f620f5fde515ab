"""Rules files to a merged ``Posture``; header values from literals, environment or Secrets.

Validation errors name the file, the field path as written in YAML (camelCase) and a fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from auditor.adapters.yaml_io import MAX_FILE_CHARS, InputTooLargeError, YamlSyntaxError, check_size, load_documents
from auditor.core.posture import API_VERSION, KIND, Posture, PostureConflictError, PostureDocument, merge
from auditor.errors import InputError

SecretLookup = Callable[[str, str, str], str | None]

_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove the field or fix its spelling (see rules/schema.json)",
    "literal_error": "use one of the listed values",
    "string_pattern_mismatch": "use the documented format",
    "too_short": "give at least one entry",
}


def load_rules(paths: Sequence[str]) -> Posture:
    documents: list[tuple[str, PostureDocument]] = []
    for path in paths:
        documents += _load_file(path)
    try:
        return merge(documents)
    except PostureConflictError as conflict:
        raise InputError(", ".join(paths), str(conflict), fix="merge the duplicate entries into one file") from conflict


def _load_file(path: str) -> list[tuple[str, PostureDocument]]:
    try:
        with Path(path).open(encoding="utf-8") as handle:
            text = handle.read(MAX_FILE_CHARS + 1)
        check_size(text)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read: {error}", fix="check the --rules path") from error
    except InputTooLargeError as error:
        raise InputError(path, str(error), fix="see Input limits in docs/cli.md") from error
    try:
        raw = list(load_documents(text))
    except YamlSyntaxError as problem:
        raise InputError(path, problem.message, document=problem.document, fix=problem.fix) from problem
    if not raw:
        raise InputError(
            path,
            "the file holds no rules document",
            fix=f"start it with apiVersion: {API_VERSION} and kind: {KIND}",
        )
    return [(path, _validate(path, index, body)) for index, body in raw]


def _validate(path: str, index: int, body: Any) -> PostureDocument:
    try:
        return PostureDocument.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        field = _field_path(first["loc"])
        more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
        problem = first["msg"].removeprefix("Value error, ") + more
        raise InputError(
            path,
            problem,
            field=field,
            document=index,
            fix=_FIXES.get(first["type"], "see docs/rules.md"),
        ) from error


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def resolve_header_values(
    posture: Posture, environ: Mapping[str, str], secret: SecretLookup
) -> dict[tuple[str, str], str | None]:
    """(target, header) -> value, or None where the source has no value (reported, never guessed)."""
    values: dict[tuple[str, str], str | None] = {}
    for protected in posture.protected:
        for header in protected.required_headers:
            source = header.value
            if source.literal is not None:
                value: str | None = source.literal
            elif source.from_env is not None:
                value = environ.get(source.from_env) or None
            else:
                assert source.secret_ref is not None  # noqa: S101 - the model guarantees one source
                ref = source.secret_ref
                value = secret(ref.namespace or protected.namespace, ref.name, ref.key)
            values[(protected.target, header.name)] = value
    return values
