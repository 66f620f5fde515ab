"""Which Istio config objects istiod reads: the ``istio.io/rev`` label against istiod's revision.

istiod reads an Istio config object only when ``config.LabelsInRevision(labels, REVISION)`` holds
(``pkg/config/model.go``): an object without the ``istio.io/rev`` label is read by every istiod; one
with the label is read only by the istiod whose ``REVISION`` equals its value (an istiod with an
empty ``REVISION`` reads everything, but Istio's chart always sets it: ``{{ .Values.revision |
default "default" }}``). The ambient index filters AuthorizationPolicy, PeerAuthentication,
ServiceEntry and WorkloadEntry so (``pilot/pkg/serviceregistry/ambient/ambientindex.go``), and the
Gateway API controller every kind it reads except Gateway, whose revision tags it resolves
separately (``pilot/pkg/config/kube/gateway/controller.go``). Revision tags do not apply to config
objects: a policy labelled with a tag's name is read by no istiod.

An object no istiod reads is as if it were not there: ztunnel and the waypoints never get it. The
audit therefore drops it from the snapshot (``auditor.core.decode.build_snapshot``) and reports it
(``audit.config-revision``), so that a policy written for a revision that does not serve the mesh
cannot pass an audit it has no part in (found by the real data plane, #12).

The serving revision, the one whose istiod programs ztunnel, is read from the input:

1. a ztunnel workload (``app: ztunnel``) labelled ``istio.io/rev`` (the ztunnel chart labels its
   DaemonSet and points ``XDS_ADDRESS`` at ``istiod-<revision>`` when given a revision);
2. otherwise the one revision of the istiods in the input (``app: istiod``, their ``istio.io/rev``
   label, ``default`` when absent, as the chart labels them);
3. otherwise ``default``: the chart's revision when none is given, and the assumption the finding
   states (several istiods and no ztunnel: ``default`` if one of them is, else the first by name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from auditor.core.checks.catalog import CONFIG_REVISION
from auditor.core.checks.context import finding
from auditor.core.model import Evidence, Finding, Fix, FixDocument, Status
from auditor.core.snapshot import (
    AuthorizationPolicy,
    HTTPRoute,
    IgnoredConfig,
    PeerAuthentication,
    ServiceEntry,
    ServingRevision,
    Snapshot,
    Workload,
)

REVISION_LABEL = "istio.io/rev"
DEFAULT_REVISION = "default"
# The kinds the model holds that istiod filters by revision (Gateway is not: revision tags).
_Filtered = TypeVar("_Filtered", AuthorizationPolicy, PeerAuthentication, ServiceEntry, HTTPRoute)
CONFIG_API_VERSIONS = {
    "AuthorizationPolicy": "security.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "ServiceEntry": "networking.istio.io/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}


def in_revision(labels: Mapping[str, str], revision: str) -> bool:
    """``config.LabelsInRevision``: whether an istiod of ``revision`` reads an object with ``labels``.

    An unlabelled object is read by every istiod; an empty ``revision`` reads everything. Never raises.
    """
    label = labels.get(REVISION_LABEL)
    return label is None or not revision or label == revision


def serving_revision(workloads: Iterable[Workload]) -> ServingRevision:
    """The revision whose istiod serves ztunnel, from the workloads of the input (module docstring).

    Controllers (DaemonSet, Deployment) are read before Pods. Never raises.
    """
    mesh = [w for w in workloads if w.pod_labels.get("app") in ("ztunnel", "istiod")]
    ordered = sorted(mesh, key=lambda w: (w.is_pod, w.meta.namespace, w.meta.name))
    for workload in ordered:
        if workload.pod_labels.get("app") == "ztunnel":
            label = workload.meta.labels.get(REVISION_LABEL) or workload.pod_labels.get(REVISION_LABEL)
            if label:
                return ServingRevision(label, f"{workload.meta.ref} labels.{REVISION_LABEL}")
    istiods: dict[str, str] = {}
    for workload in ordered:
        if workload.pod_labels.get("app") == "istiod":
            label = workload.pod_labels.get(REVISION_LABEL) or workload.meta.labels.get(REVISION_LABEL)
            istiods.setdefault(label or DEFAULT_REVISION, workload.meta.ref)
    if len(istiods) == 1:
        ((name, ref),) = istiods.items()
        return ServingRevision(name, f"{ref} labels.{REVISION_LABEL}")
    if not istiods:
        return ServingRevision(DEFAULT_REVISION, "assumed: no istiod or ztunnel in the input; Istio's chart default")
    name = DEFAULT_REVISION if DEFAULT_REVISION in istiods else sorted(istiods)[0]
    return ServingRevision(
        name, f"assumed: istiod revisions {', '.join(sorted(istiods))} and no ztunnel naming one; {name} serves it"
    )


def split_by_revision(
    objects: Sequence[_Filtered], revision: str
) -> tuple[tuple[_Filtered, ...], tuple[IgnoredConfig, ...]]:
    """``objects`` istiod of ``revision`` reads, and the ones it ignores. Never raises."""
    read: list[_Filtered] = []
    ignored: list[IgnoredConfig] = []
    for obj in objects:
        if in_revision(obj.meta.labels, revision):
            read.append(obj)
        else:
            ignored.append(IgnoredConfig(obj.meta, obj.meta.labels[REVISION_LABEL]))
    return tuple(read), tuple(ignored)


def revision_findings(snapshot: Snapshot) -> tuple[Finding, ...]:
    """A FAIL ``audit.config-revision`` per Istio config object the serving istiod ignores, with the
    patch that removes its label; target ``namespace/name`` of the object. Never raises."""
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
