"""A finding's fix as YAML text: the one serialization every renderer shows.

Documents are dumped with PyYAML's safe dumper, libyaml's when available (every hostile string is
quoted or escaped as a YAML scalar, never markup: a newline or ``: `` in a name stays inside its
value; non-ASCII is written as ``\\u`` escapes, so no bidi or invisible character reaches a reader). Each document
starts with a comment naming how to apply it; names in that comment pass through
``escape.visible``, so none can end the comment line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from auditor.core.model import Fix, FixDocument
from auditor.render.escape import visible

# Plain scalars that kubectl's Go YAML (YAML 1.1 rules plus strconv's numbers) reads as something
# other than a string, while PyYAML, which quotes only what its own resolver would read otherwise,
# writes them plain: "4e12345678" (a commit-like label value) or "0x1F" would reach the API server
# as numbers and be refused. Quoting a string that needed no quotes changes nothing.
_GO_NOT_STRING = re.compile(
    r"(?i)^(?:[-+]?(?:\.?[0-9][0-9_]*(?:\.[0-9_]*)?(?:e[-+]?[0-9]+)?|\.inf|inf|\.nan|nan)"
    r"|0x[0-9a-f_]+|0o?[0-7_]+|0b[01_]+"
    r"|y|n|yes|no|on|off|true|false|null|~|)$"
)


# libyaml's emitter when PyYAML was built with it, else PyYAML's own (same representation).
_BASE: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _KubectlSafeDumper(_BASE):  # type: ignore[misc,valid-type]  # the base is chosen at import time
    """The safe dumper (libyaml's emitter when PyYAML was built with it: the same representation,
    ~10x faster on a 1k-Service audit's fixes), quoting every string kubectl would not read as one."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if _GO_NOT_STRING.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_KubectlSafeDumper.add_representer(str, _represent_str)
_DUMPER = _KubectlSafeDumper
# Core and apps kinds take a strategic merge patch; custom resources (Gateway) only a merge patch.
_STRATEGIC = frozenset({"v1", "apps/v1", "batch/v1"})


def fix_yaml(fix: Fix) -> str:
    """The fix's documents as one multi-document YAML text (``""`` when there are none)."""
    if fix.yaml:
        return fix.yaml
    return "---\n".join(_document(d) for d in fix.documents)


def _document(document: FixDocument) -> str:
    body = _plain(document.body)
    text = yaml.dump(body, Dumper=_DUMPER, sort_keys=False, width=1_000_000, allow_unicode=False)
    return _how(document) + "\n" + text


def _how(document: FixDocument) -> str:
    if not document.patch:
        return "# kubectl apply -f FILE"
    body = document.body
    metadata = body.get("metadata") or {}
    kind = str(body.get("kind", "")).lower()
    strategy = "strategic" if body.get("apiVersion") in _STRATEGIC else "merge"
    where = f" -n {metadata['namespace']}" if metadata.get("namespace") else ""
    return visible(f"# kubectl patch {kind} {metadata.get('name', '')}{where} --type {strategy} --patch-file FILE")


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists: the safe dumper represents nothing else."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
