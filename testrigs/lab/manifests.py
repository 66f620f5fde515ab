"""Reading manifest files for the lab, and what the lab's API server needs besides them.

Role: ``lab up --manifests PATH`` reads YAML files or folders (recursively, in name order) into
plain dicts, the shape ``mesh.py`` reads. ``supplement`` adds what a real cluster would have
created on its own and this control plane (no controller-manager, see docs/controlplane.md) does
not: the Namespaces and ServiceAccounts that workloads reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from testrigs.lab.mesh import Obj, name_of, namespace_of, spec


class ManifestError(ValueError):
    """A manifest file that cannot be read or parsed; the message names the file."""


def load(paths: Sequence[Path]) -> list[Obj]:
    """Every object in the given files and folders (``.yaml``/``.yml``/``.json``), ``List`` kinds flattened."""
    objects: list[Obj] = []
    for path in paths:
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json")) if path.is_dir() else [path]
        )
        for file in files:
            objects.extend(_load_file(file))
    return objects


def _load_file(path: Path) -> list[Obj]:
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as error:
        raise ManifestError(f"{path}: {error}") from error
    found: list[Obj] = []
    for document in documents:
        if isinstance(document, dict) and document.get("kind", "").endswith("List"):
            found.extend(item for item in document.get("items") or [] if isinstance(item, dict))
        elif isinstance(document, dict) and document.get("kind"):
            found.append(document)
    return found


def supplement(objects: Iterable[Obj]) -> list[Obj]:
    """The objects plus the Namespaces and ServiceAccounts they reference but do not declare."""
    given = list(objects)
    declared = {(o.get("kind"), namespace_of(o) if o.get("kind") != "Namespace" else "", name_of(o)) for o in given}
    extra: list[Obj] = []
    for namespace in sorted({namespace_of(o) for o in given if o.get("kind") != "Namespace"}):
        if ("Namespace", "", namespace) not in declared and namespace != "default":
            extra.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for namespace, account in sorted(_service_accounts(given)):
        if ("ServiceAccount", namespace, account) not in declared:
            metadata = {"name": account, "namespace": namespace}
            extra.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata})
    return [*extra, *given]


def _service_accounts(objects: Iterable[Obj]) -> set[tuple[str, str]]:
    accounts = set()
    for obj in objects:
        pod_spec = spec(obj) if obj.get("kind") == "Pod" else (spec(obj).get("template") or {}).get("spec")
        if obj.get("kind") in ("Pod", "Deployment") and isinstance(pod_spec, dict):
            accounts.add((namespace_of(obj), str(pod_spec.get("serviceAccountName") or "default")))
    return accounts


def apply_order(objects: Iterable[Obj]) -> list[list[Obj]]:
    """Namespaces, then ServiceAccounts, then everything else: each batch's references exist."""
    given = list(objects)
    first = [o for o in given if o.get("kind") == "Namespace"]
    second = [o for o in given if o.get("kind") == "ServiceAccount"]
    rest = [o for o in given if o.get("kind") not in ("Namespace", "ServiceAccount")]
    return [batch for batch in (first, second, rest) if batch]


def dump(objects: Iterable[Obj]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False)
