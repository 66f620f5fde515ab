"""strict-mtls.node-ztunnel: every node that runs a Service's ready pods runs a Ready ztunnel.

In ambient mode the destination pod's node's ztunnel enforces mTLS and L4 policy (semantics §1,
§2): a pod on a node whose ztunnel pod is missing or not Ready is not protected, whatever the
policies say. Reported on freshly autoscaled EKS nodes (istio/istio#61374, istio/ztunnel#1674).

From the live snapshot alone: the Service's endpoints and their nodes come from its
EndpointSlices (ready entries with a ``nodeName``, as ``auditor.core.endpoints`` reads them), or,
for a Service without slices, from the Ready pods its selector matches (pods carry
``spec.nodeName`` and their Ready condition only on a live cluster). No finding at all (never a
PASS) when the Service has no ready endpoint on a known node (manifest files, templates), or when
the cluster shows no ztunnel (no pod and no DaemonSet labelled ``app: ztunnel``: nothing tells
where ztunnel should run).
"""

from __future__ import annotations

from auditor.core.checks.catalog import NODE_ZTUNNEL
from auditor.core.checks.context import AuditContext, finding
from auditor.core.checks.fixes import none
from auditor.core.endpoints import serves
from auditor.core.mesh import istio_service
from auditor.core.model import Evidence, Finding, Fix, FixDocument, Status
from auditor.core.snapshot import ZTUNNEL_LABEL, Service

_SHOWN = 5  # endpoint pods named per node; the rest are counted


def check_node_ztunnel(ctx: AuditContext, service: Service) -> Finding | None:
    """strict-mtls.node-ztunnel for ``service`` (see the module docstring): FAIL naming each node of its ready pods
    without a Ready ztunnel pod, PASS when every such node has one; None (no finding) for Istio's own Services,
    without ztunnel in the snapshot, or without ready pods on known nodes. Never raises.
    """
    if istio_service(service, ctx.index) is not None:
        return None  # Istio's own Services: their pods are outside capture by design (§10)
    ztunnels = ctx.index.ztunnels()
    if not ztunnels.deployed:
        return None
    endpoints = _endpoints_by_node(ctx, service)
    if not endpoints:
        return None
    evidence: list[Evidence] = []
    broken: list[str] = []
    missing: list[str] = []  # nodes with no ztunnel pod
    unready: list[str] = []  # nodes whose ztunnel pod is not Ready
    for node, pods in sorted(endpoints.items()):
        hosted = _pods(pods)
        found = ztunnels.by_node.get(node, ())
        ready = [z for z in found if z.ready]
        if ready:
            evidence.append(Evidence(f"Node {node}", "ztunnel pod", ready[0].meta.ref, f"Ready; hosts {hosted}"))
        elif found:
            evidence.append(Evidence(f"Node {node}", "ztunnel pod", found[0].meta.ref, f"not Ready; hosts {hosted}"))
            broken.append(f"node {node}: ztunnel pod {found[0].meta.ref} is not Ready (hosts {hosted})")
            unready.append(node)
        else:
            evidence.append(Evidence(f"Node {node}", "ztunnel pod", "(none)", f"hosts {hosted}"))
            broken.append(f"node {node}: no ztunnel pod (hosts {hosted})")
            missing.append(node)
    if broken:
        fix = _fix(ctx, missing, unready)
        message = "unprotected node(s): " + "; ".join(broken)
        return finding(NODE_ZTUNNEL, service, Status.FAIL, message, evidence, fix=fix)
    nodes = ", ".join(sorted(endpoints))
    return finding(
        NODE_ZTUNNEL, service, Status.PASS, f"a Ready ztunnel runs on every node of its pods: {nodes}", evidence
    )


def _endpoints_by_node(ctx: AuditContext, service: Service) -> dict[str, list[str]]:
    """Node name -> the Service's ready endpoints there (``Pod ns/name``, or ``endpoint <ip>`` for a
    slice entry that names no Pod): from its EndpointSlices when it has any, else its Ready pods."""
    found: dict[str, list[str]] = {}
    slices = ctx.index.slices_for(service)
    if slices:
        for piece in slices:
            for entry in piece.endpoints:
                if not serves(entry) or not entry.node_name:
                    continue
                name = f"Pod {entry.pod}" if entry.pod else f"endpoint {entry.addresses[0]}"
                if name not in found.get(entry.node_name, []):
                    found.setdefault(entry.node_name, []).append(name)
        return found
    for pod in ctx.index.workloads_for(service):
        if pod.is_pod and pod.node_name and pod.ready:
            found.setdefault(pod.node_name, []).append(pod.meta.ref)
    return found


def _pods(pods: list[str]) -> str:
    names = sorted(pods)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _fix(ctx: AuditContext, missing: list[str], unready: list[str]) -> Fix:
    """No ztunnel pod on a node: the ztunnel DaemonSet tolerates every taint (Auto Mode NodePools
    taint their nodes), patched under its real name. A ztunnel pod that is not Ready has no YAML
    fix: its logs and events say why (istio/ztunnel#1674)."""
    after = "then restart the application pods listed above, which started before ztunnel could capture them"
    daemonsets = [
        w
        for w in ctx.index.snapshot.workloads
        if not w.is_pod and w.meta.kind == "DaemonSet" and w.pod_labels.get(ZTUNNEL_LABEL[0]) == ZTUNNEL_LABEL[1]
    ]
    if missing and daemonsets:
        daemonset = daemonsets[0].meta
        body = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": daemonset.name, "namespace": daemonset.namespace},
            "spec": {"template": {"spec": {"tolerations": [{"operator": "Exists"}]}}},
        }
        nodes = ", ".join(sorted(missing))
        note = f"Patch {daemonset.ref} to tolerate every taint so it runs on {nodes}; {after}."
        if unready:
            note += f" Also see why the ztunnel pod on {', '.join(sorted(unready))} is not Ready (its logs and events)."
        return Fix((FixDocument(body, patch=True),), note)
    if missing:
        return none(
            f"the snapshot holds no ztunnel DaemonSet to patch: make it tolerate every taint (Helm value "
            f"tolerations: [{{operator: Exists}}]) so it runs on {', '.join(sorted(missing))}; {after}"
        )
    return none(
        f"a ztunnel pod that is not Ready has no YAML fix: see its logs and events on {', '.join(sorted(unready))}; "
        f"{after}"
    )
