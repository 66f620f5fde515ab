"""Strict YAML reading shared by the file adapters: safe loading, duplicate keys rejected.

PyYAML keeps the last of two duplicate keys silently; in a policy or a rules file that hides a
mistake (two ``values:`` under one condition), so it is an error here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping_without_duplicates(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


class YamlProblem(ValueError):
    def __init__(self, document: int, message: str) -> None:
        super().__init__(message)
        self.document = document
        self.message = message


def load_documents(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (index, document) for every non-empty document; YAML errors become ``YamlProblem``."""
    index = 0
    try:
        for index, document in enumerate(yaml.load_all(text, Loader=_StrictLoader)):  # noqa: S506 - _StrictLoader is a SafeLoader
            if document is not None:
                yield index, document
    except yaml.YAMLError as error:
        raise YamlProblem(index, _describe(error)) from error


def _describe(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"
