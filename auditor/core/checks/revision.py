"""``audit.config-revision``: the Istio config objects the serving istiod does not read (auditor.core.revision)."""

from __future__ import annotations

from collections.abc import Sequence

from auditor.core.checks.catalog import CONFIG_REVISION
from auditor.core.checks.context import finding
from auditor.core.model import NO_FIX, Evidence, Finding, Fix, FixDocument, Status
from auditor.core.revision import CONFIG_API_VERSIONS, REVISION_LABEL
from auditor.core.snapshot import Snapshot


def revision_findings(snapshot: Snapshot) -> tuple[Finding, ...]:
    """An ``audit.config-revision`` per Istio config object the serving istiod does not read, with
    the patch that removes its label; target ``namespace/Kind/name``. FAIL when the input shows the
    serving revision, INCONCLUSIVE when it is assumed. Never raises."""
    revision = snapshot.revision
    found = []
    for ignored in snapshot.ignored_config:
        meta = ignored.meta
        reader = f"an istiod of revision {revision.name}"
        if revision.assumed:
            status, serving = Status.INCONCLUSIVE, f"{reader}, assumed ({revision.source}),"
        else:
            status, serving = Status.FAIL, f"{reader}, the one serving the mesh,"
        message = f"{meta.ref} is labelled {REVISION_LABEL}={ignored.label!r}: {serving} does not read it"
        evidence = [
            Evidence(
                meta.ref, f"metadata.labels.{REVISION_LABEL}", ignored.label, "istiod reads only its own revision"
            ),
            Evidence("serving revision", "", revision.name, revision.source),
        ]
        body = {
            "apiVersion": CONFIG_API_VERSIONS[meta.kind],
            "kind": meta.kind,
            "metadata": {"name": meta.name, "namespace": meta.namespace, "labels": {REVISION_LABEL: None}},
        }
        # An INCONCLUSIVE finding carries no YAML (nothing was proven wrong); its message says what to check.
        fix = (
            Fix((FixDocument(body, patch=True),), "Remove the label: every istiod reads an unlabelled object.")
            if status is Status.FAIL
            else NO_FIX
        )
        found.append(
            finding(CONFIG_REVISION, f"{meta.namespace}/{meta.kind}/{meta.name}", status, message, evidence, fix=fix)
        )
    return tuple(found)


def uncertain_revision(
    read_by_serving: Sequence[Finding], read_by_every: Sequence[Finding], snapshot: Snapshot
) -> list[Finding]:
    """The findings of the input as the assumed revision's istiod reads it (``read_by_serving``),
    each one whose status differs when every left-out object is read (``read_by_every``, same
    check, target and method) made INCONCLUSIVE: it rests on which istiod serves the mesh, which
    the input does not show. Never raises."""
    other = {(f.check.id, f.target, f.method): f for f in read_by_every}
    revision = snapshot.revision
    left_out = [Evidence(i.meta.ref, f"metadata.labels.{REVISION_LABEL}", i.label) for i in snapshot.ignored_config]
    judged = []
    for found in read_by_serving:
        twin = other.get((found.check.id, found.target, found.method))
        if twin is None or twin.status is found.status:
            judged.append(found)
            continue
        message = (
            f"depends on which istiod revision serves the mesh, which the input does not show ({revision.source}): "
            f"{found.status.value} if it is {revision.name}, {twin.status.value} if the objects labelled for "
            f"another revision are read; as revision {revision.name}: {found.message}"
        )
        evidence = (*found.evidence, Evidence("serving revision", "", revision.name, revision.source), *left_out)
        judged.append(finding(found.check, found.target, Status.INCONCLUSIVE, message, evidence))
    return judged
