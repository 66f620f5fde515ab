"""Which Istio config objects istiod reads: the ``istio.io/rev`` label against istiod's revision.

istiod reads an Istio config object only when ``config.LabelsInRevision(labels, REVISION)`` holds
(``pkg/config/model.go``): an object without the ``istio.io/rev`` label is read by every istiod; one
with the label (an empty value too) is read only by the istiod whose ``REVISION`` equals its value;
an istiod with an empty ``REVISION`` reads everything (Istio's chart always sets it: ``{{
.Values.revision | default "default" }}``). The ambient index filters AuthorizationPolicy,
PeerAuthentication, ServiceEntry and WorkloadEntry so (``pilot/pkg/serviceregistry/ambient/
ambientindex.go``), the CRD client and the Gateway API controller every kind but Gateway and
GatewayClass (``pilot/pkg/config/kube/gateway/controller.go``). Revision tags do not apply to
config objects: a policy labelled with a tag's name is read by no istiod.

An object no istiod reads is as if it were not there. ``build_snapshot`` leaves it out of the
snapshot and lists it (``Snapshot.ignored_config``, reported by ``audit.config-revision``), so a
policy written for a revision that does not serve the mesh cannot pass an audit it takes no part
in (found looking for real-data-plane faults, #12).

The serving revision, the one whose istiod programs ztunnel, is *observed* when the input shows it:

1. the ztunnel workloads (``app: ztunnel``) agree on an ``istio.io/rev`` annotation (or label): the
   ztunnel chart, given a revision, annotates its DaemonSet and pods so and points ``XDS_ADDRESS``
   at ``istiod-<revision>``; without one it points at Service ``istiod``, the revision-less
   release's (REVISION ``default``), observed when an istiod labelled ``default`` is in the input;
2. else the only istiod (``app: istiod``) is labelled ``istio.io/rev`` (the chart labels it with its
   REVISION).

Otherwise it is *assumed* (``default`` when no istiod, or one of several, is ``default``): no
istiod in the input (offline manifests), several istiods and no ztunnel naming one, an istiod
without the label (its REVISION may be empty: it would read everything). A waypoint Gateway or a
namespace labelled for another revision makes it assumed too: istiod programs a waypoint from the
revision that owns it (its label, else its namespace's), which the model does not follow.
When the revision is assumed and objects were left out, the audit judges the input both ways and
reports a verdict that differs as INCONCLUSIVE (``auditor.core.audit``): never a PASS that rests on
a guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from auditor.core.mesh import WAYPOINT_CLASS
from auditor.core.snapshot import (
    AuthorizationPolicy,
    Gateway,
    HTTPRoute,
    IgnoredConfig,
    Namespace,
    PeerAuthentication,
    ServiceEntry,
    ServingRevision,
    Snapshot,
    Workload,
)

REVISION_LABEL = "istio.io/rev"
DEFAULT_REVISION = "default"
# The kinds the model holds that istiod filters by revision (Gateway is not: revision tags).
FILTERED_KINDS = (AuthorizationPolicy, PeerAuthentication, ServiceEntry, HTTPRoute)
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


def serving_revision(
    workloads: Iterable[Workload], gateways: Iterable[Gateway] = (), namespaces: Iterable[Namespace] = ()
) -> ServingRevision:
    """The revision whose istiod serves ztunnel, observed or assumed (module docstring). Never raises."""
    mesh = [w for w in workloads if w.pod_labels.get("app") in ("ztunnel", "istiod")]
    ordered = sorted(mesh, key=lambda w: (w.is_pod, w.meta.namespace, w.meta.name))
    istiods: dict[str | None, str] = {}  # revision label (None: unlabelled) -> the first istiod's ref
    ztunnels: dict[str, str] = {}  # revision annotation ("" without) -> the first ztunnel's ref
    for workload in ordered:
        if workload.pod_labels.get("app") == "istiod":
            label = workload.pod_labels.get(REVISION_LABEL, workload.meta.labels.get(REVISION_LABEL))
            istiods.setdefault(label, workload.meta.ref)
        else:
            ztunnels.setdefault(_ztunnel_revision(workload), workload.meta.ref)
    found = _observed(ztunnels, istiods)
    if found is None:
        named = {r for r in istiods if r}
        name = DEFAULT_REVISION if not named or DEFAULT_REVISION in named else sorted(named)[0]
        found = ServingRevision(name, _why_assumed(ztunnels, istiods), assumed=True)
    owners = _other_revision_owners(found.name, gateways, namespaces)
    if not owners:
        return found
    return ServingRevision(
        found.name,
        f"{found.source}; but {owners[0]}, and istiod programs a waypoint from the revision that owns it",
        assumed=True,
    )


def _ztunnel_revision(workload: Workload) -> str:
    for values in (workload.meta.annotations, workload.pod_annotations, workload.meta.labels, workload.pod_labels):
        if values.get(REVISION_LABEL):
            return values[REVISION_LABEL]
    return ""


def _observed(ztunnels: Mapping[str, str], istiods: Mapping[str | None, str]) -> ServingRevision | None:
    if len(ztunnels) == 1:
        ((revision, ref),) = ztunnels.items()
        if revision:
            return ServingRevision(revision, f"{ref} annotations.{REVISION_LABEL}")
        if DEFAULT_REVISION in istiods:
            return ServingRevision(
                DEFAULT_REVISION,
                f"{ref} has no {REVISION_LABEL}: it connects to Service istiod, the revision-less release's "
                f"({istiods[DEFAULT_REVISION]} labels.{REVISION_LABEL})",
            )
        return None
    if not ztunnels and len(istiods) == 1:
        ((label, ref),) = istiods.items()
        if label:
            return ServingRevision(label, f"{ref} labels.{REVISION_LABEL}")
    return None


def _why_assumed(ztunnels: Mapping[str, str], istiods: Mapping[str | None, str]) -> str:
    if len(ztunnels) > 1:
        return f"the ztunnels name different revisions ({', '.join(sorted(r or '(none)' for r in ztunnels))})"
    if not istiods:
        return "no istiod in the input; Istio's chart default"
    if None in istiods:
        return f"{istiods[None]} has no {REVISION_LABEL} label: its REVISION is unknown"
    return f"istiod revisions {', '.join(sorted(r for r in istiods if r))} and no ztunnel naming one"


def _other_revision_owners(revision: str, gateways: Iterable[Gateway], namespaces: Iterable[Namespace]) -> list[str]:
    """Waypoint Gateways and namespaces labelled for another revision (their waypoints' istiod)."""
    owners = [
        f"waypoint {g.meta.namespace}/{g.meta.name} is labelled {REVISION_LABEL}={g.meta.labels[REVISION_LABEL]}"
        for g in gateways
        if g.class_name == WAYPOINT_CLASS and g.meta.labels.get(REVISION_LABEL, revision) != revision
    ]
    owners += [
        f"namespace {n.meta.name} is labelled {REVISION_LABEL}={n.meta.labels[REVISION_LABEL]}"
        for n in namespaces
        if n.meta.labels.get(REVISION_LABEL, revision) != revision
    ]
    return owners


def every_revision(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with the objects it left out put back, as an istiod reading every revision
    would see it (in ``build_snapshot`` order); the same snapshot when none was left out. Never raises."""
    if not snapshot.ignored_config:
        return snapshot
    back: dict[type, list[Any]] = {}
    for ignored in snapshot.ignored_config:
        back.setdefault(type(ignored.obj), []).append(ignored.obj)

    def merged(objects: tuple[_Filtered, ...], kind: type[_Filtered]) -> tuple[_Filtered, ...]:
        return tuple(sorted((*objects, *back.get(kind, ())), key=lambda o: (o.meta.namespace, o.meta.name)))

    return dataclasses.replace(
        snapshot,
        peer_authentications=merged(snapshot.peer_authentications, PeerAuthentication),
        authorization_policies=merged(snapshot.authorization_policies, AuthorizationPolicy),
        http_routes=merged(snapshot.http_routes, HTTPRoute),
        service_entries=merged(snapshot.service_entries, ServiceEntry),
        ignored_config=(),
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
            ignored.append(IgnoredConfig(obj, obj.meta.labels[REVISION_LABEL]))
    return tuple(read), tuple(ignored)
