"""Rules files to a merged ``Posture``; header values from literals, environment or Secrets.

Validation errors name the file, the field path as written in YAML (camelCase) and a fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from auditor.adapters.yaml_io import MAX_FILE_CHARS, InputTooLargeError, YamlSyntaxError, check_size, load_documents
from auditor.core.posture import (
    API_VERSION,
    KIND,
    Posture,
    PostureConflictError,
    PostureDocument,
    field_names_at,
    merge,
)
from auditor.errors import InputError, InputProblemsError

if TYPE_CHECKING:
    from auditor.ports import SecretLookup  # the probing ports: not imported by an offline check (#16)

_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove the field or fix its spelling (see rules/schema.json)",
    "literal_error": "use one of the listed values",
    "string_pattern_mismatch": "use the documented format",
    "too_short": "give at least one entry",
}


def load_rules(paths: Sequence[str]) -> Posture:
    """Read, validate and merge rules files.

    Raises ``InputProblemsError`` listing every problem of every file (unknown fields first, each with
    the closest known name), or ``InputError`` for a conflict between files.
    """
    documents: list[tuple[str, PostureDocument]] = []
    problems: list[InputError] = []
    for path in paths:
        try:
            documents += _load_file(path)
        except InputProblemsError as error:
            problems += error.problems
        except InputError as error:
            problems.append(error)
    if problems:
        raise InputProblemsError(problems, all_hint=f"auditor rules validate {' '.join(paths)} lists them all")
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
    lines: dict[int, int] = {}
    try:
        raw = list(load_documents(text, lines=lines))
    except YamlSyntaxError as problem:
        raise InputError(path, problem.message, document=problem.document, fix=problem.fix) from problem
    if not raw:
        raise InputError(
            path,
            "the file holds no rules document",
            fix=f"start it with apiVersion: {API_VERSION} and kind: {KIND}",
        )
    validated: list[tuple[str, PostureDocument]] = []
    problems: list[InputError] = []
    for index, body in raw:
        try:
            validated.append((path, PostureDocument.model_validate(body)))
        except ValidationError as error:
            problems += validation_problems(path, index, error, line=lines.get(index))
    if problems:
        raise InputProblemsError(problems)
    return validated


def validation_problems(path: str, index: int, error: ValidationError, *, line: int | None = None) -> list[InputError]:
    """Every problem of one document, unknown fields first: a misspelt field also makes the
    intended one "required", and the cause reads better than the symptom."""
    details = error.errors()
    unknown = [d for d in details if d["type"] == "extra_forbidden"]
    suggested: set[tuple[int | str, ...]] = set()
    problems: list[InputError] = []
    for detail in unknown:
        parent, name = tuple(detail["loc"][:-1]), str(detail["loc"][-1])
        close = difflib.get_close_matches(name, field_names_at(parent), n=1, cutoff=0.6)
        if close:
            suggested.add((*parent, close[0]))
        fix = f"rename it to {close[0]}" if close else "remove it (the known fields are in rules/schema.json)"
        problem = f"unknown field {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        field = _field_path(detail["loc"])
        problems.append(InputError(path, problem, field=field, document=index, line=line, fix=fix))
    for detail in details:
        if detail["type"] == "extra_forbidden" or (detail["type"] == "missing" and tuple(detail["loc"]) in suggested):
            continue  # the missing field is the misspelt one, already named above
        problems.append(
            InputError(
                path,
                detail["msg"].removeprefix("Value error, "),
                field=_field_path(detail["loc"]),
                document=index,
                line=line,
                fix=_FIXES.get(detail["type"], "see docs/rules.md"),
            )
        )
    return problems


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


def unresolved_sources(posture: Posture, values: Mapping[tuple[str, str], str | None]) -> tuple[str, ...]:
    """One line per required header whose value could not be resolved, naming its source:
    the environment variable (unset or empty) or the Secret key. The affected findings are
    INCONCLUSIVE; these lines say what to set."""
    lines: list[str] = []
    for protected in posture.protected:
        for header in protected.required_headers:
            if values.get((protected.target, header.name)) is not None:
                continue
            source = header.value
            where = f"{protected.target} header {header.name}"
            if source.from_env is not None:
                lines.append(
                    f"{where}: environment variable {source.from_env} (value.fromEnv) is unset or empty; "
                    f"export {source.from_env}=... in the auditor's environment"
                )
            elif source.secret_ref is not None:
                ref = source.secret_ref
                lines.append(
                    f"{where}: Secret {ref.namespace or protected.namespace}/{ref.name} key {ref.key} "
                    "(value.secretRef) was not found or could not be read"
                )
    return tuple(lines)
