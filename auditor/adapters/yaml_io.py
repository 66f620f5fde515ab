"""Strict, fast YAML reading shared by the file adapters.

- Duplicate keys are errors: PyYAML keeps the last one silently, which in a policy or a rules
  file hides a mistake (two ``values:`` under one condition).
- Timestamps stay strings, as ``kubectl`` (sigs.k8s.io/yaml, via JSON) keeps them.
- Nodes come from libyaml's C composer when available and are turned into Python values by a
  small converter here: PyYAML's own constructor was most of an audit's time at 10k Services
  (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

# The base loaders compose without resolving implicit tags: resolution of plain scalars happens
# once, here, with the YAML 1.1 rules SafeLoader uses (ints, floats, bools, nulls).
_Loader: type[yaml.BaseLoader] = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_BOOL = dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True)
_BOOL.update(dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False))
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAX_DEPTH = 100


class YamlSyntaxError(ValueError):
    def __init__(self, document: int, message: str) -> None:
        super().__init__(message)
        self.document = document
        self.message = message


def load_documents(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (index, document) for every non-empty document; errors become ``YamlSyntaxError``."""
    loader = _Loader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            document = None if node is None else _convert(loader, node, 0)
            if document is not None:
                yield index, document
            index += 1
    except yaml.YAMLError as error:
        raise YamlSyntaxError(index, _describe(error)) from error
    finally:
        loader.dispose()


def _convert(loader: yaml.BaseLoader, node: yaml.Node, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise yaml.constructor.ConstructorError(None, None, "nesting too deep (a recursive alias?)", node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR:
            return node.value if node.style else _plain(node)
        if node.tag == _TIMESTAMP:
            return node.value
        return _CONSTRUCTOR.construct_object(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, depth + 1) for item in node.value]
    if isinstance(node, yaml.MappingNode):
        return _mapping(loader, node, depth)
    raise yaml.constructor.ConstructorError(None, None, f"unsupported node {node.tag}", node.start_mark)


def _plain(node: yaml.ScalarNode) -> Any:
    """Resolve a plain (unquoted) scalar like SafeLoader, but keep timestamps as strings."""
    value: str = node.value
    if value in _NULL:
        return None
    if value in _BOOL:
        return _BOOL[value]
    if value[:1] in "0123456789+-.":
        tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if tag not in (_STR, _TIMESTAMP):
            return _CONSTRUCTOR.construct_object(yaml.ScalarNode(tag, value), deep=True)
    return value


_RESOLVER = yaml.resolver.Resolver()


def _mapping(loader: yaml.BaseLoader, node: yaml.MappingNode, depth: int) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    merged: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        if _is_merge_key(key_node):
            merged.update(_merge_source(loader, value_node, depth))
            continue
        key = _convert(loader, key_node, depth + 1)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a scalar", key_node.start_mark)
        if key in result:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        result[key] = _convert(loader, value_node, depth + 1)
    return {**merged, **result}


def _is_merge_key(node: yaml.Node) -> bool:
    plain_merge = isinstance(node, yaml.ScalarNode) and node.value == "<<" and not node.style
    return node.tag == _MERGE or plain_merge


def _merge_source(loader: yaml.BaseLoader, node: yaml.Node, depth: int) -> dict[Any, Any]:
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    merged: dict[Any, Any] = {}
    for source in reversed(sources):
        value = _convert(loader, source, depth + 1)
        if not isinstance(value, dict):
            raise yaml.constructor.ConstructorError(None, None, "a merge key (<<) needs a mapping", node.start_mark)
        merged.update(value)
    return merged


def _describe(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"
