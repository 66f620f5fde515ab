"""``audit.config-revision``: the Istio config objects the serving istiod does not read (auditor.core.revision)."""

from __future__ import annotations

from auditor.core.checks.catalog import CONFIG_REVISION
from auditor.core.checks.context import finding
from auditor.core.model import Evidence, Finding, Fix, FixDocument, Status
from auditor.core.revision import CONFIG_API_VERSIONS, REVISION_LABEL
from auditor.core.snapshot import Snapshot


def revision_findings(snapshot: Snapshot) -> tuple[Finding, ...]:
    """A FAIL ``audit.config-revision`` per Istio config object the serving istiod ignores, with the
    patch that removes its label; target ``namespace/Kind/name`` of the object. Never raises."""
    revision = snapshot.revision
    found = []
    for ignored in snapshot.ignored_config:
        meta = ignored.meta
        message = (
            f"{meta.ref} is labelled {REVISION_LABEL}={ignored.label}: the istiod that serves the mesh "
            f"(revision {revision.name}) does not read it, so ztunnel and the waypoints never get it"
        )
        evidence = [
            Evidence(
                meta.ref, f"metadata.labels.{REVISION_LABEL}", ignored.label, "istiod reads only its own revision"
            ),
            Evidence("serving revision", "", revision.name, revision.source),
        ]
        metadata: dict[str, object] = {"name": meta.name, "labels": {REVISION_LABEL: None}}
        if meta.namespace:
            metadata["namespace"] = meta.namespace
        body = {"apiVersion": CONFIG_API_VERSIONS[meta.kind], "kind": meta.kind, "metadata": metadata}
        fix = Fix(
            (FixDocument(body, patch=True),),
            f"Remove the label (every istiod reads an unlabelled object), or set it to {revision.name}.",
        )
        target = f"{meta.namespace}/{meta.kind}/{meta.name}" if meta.namespace else f"/{meta.kind}/{meta.name}"
        found.append(finding(CONFIG_REVISION, target, Status.FAIL, message, evidence, fix=fix))
    return tuple(found)
