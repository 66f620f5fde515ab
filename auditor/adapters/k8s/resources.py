"""The API resources the snapshot reads: the single source for the reader and for deploy/rbac.yaml.

A test renders the auditor's ClusterRole from this table and compares it with the shipped one,
so the RBAC is exactly what the reader uses, no more.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource kind the snapshot reads: its ``kind``, API ``group`` and ``version``, ``plural``
    (the URL segment), whether it is ``namespaced`` and whether a ``crd`` serves it."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True
    crd: bool = False

    @property
    def list_path(self) -> str:
        """The URL path that lists this resource in every namespace, e.g.
        ``/apis/security.istio.io/v1/peerauthentications``.
        """
        prefix = "/api" if not self.group else f"/apis/{self.group}"
        return f"{prefix}/{self.version}/{self.plural}"

    @property
    def api_version(self) -> str:
        """``group/version``, or ``version`` alone for the core group (``v1``)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as RBAC and ``kubectl auth can-i`` spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def permission(self, verb: str = "list") -> str:
        """``"<verb> <plural.group>"`` (e.g. ``list services``): the RBAC permission a ``ReadProblem`` names."""
        return f"{verb} {self.qualified}"


SNAPSHOT_RESOURCES: tuple[Resource, ...] = (
    Resource("Namespace", "", "v1", "namespaces", namespaced=False),
    Resource("ServiceAccount", "", "v1", "serviceaccounts"),
    Resource("Service", "", "v1", "services"),
    Resource("Pod", "", "v1", "pods"),
    Resource("Deployment", "apps", "v1", "deployments"),
    Resource("StatefulSet", "apps", "v1", "statefulsets"),
    Resource("DaemonSet", "apps", "v1", "daemonsets"),
    Resource("ReplicaSet", "apps", "v1", "replicasets"),
    Resource("Job", "batch", "v1", "jobs"),
    Resource("CronJob", "batch", "v1", "cronjobs"),
    Resource("PeerAuthentication", "security.istio.io", "v1", "peerauthentications", crd=True),
    Resource("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies", crd=True),
    Resource("Gateway", "gateway.networking.k8s.io", "v1", "gateways", crd=True),
    Resource("GatewayClass", "gateway.networking.k8s.io", "v1", "gatewayclasses", namespaced=False, crd=True),
    Resource("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes", crd=True),
    Resource("ServiceEntry", "networking.istio.io", "v1", "serviceentries", crd=True),
    # The endpoints probed by pod IP (auditor/core/endpoints.py, #13), as kube-proxy and istiod see them.
    Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices"),
)

# Watched by the daemon's node trigger (auditor/adapters/k8s/nodes.py, #13), not by the snapshot: a
# new node or a replaced ztunnel pod starts a probe cycle (list, then watch from its resourceVersion).
NODE = Resource("Node", "", "v1", "nodes", namespaced=False)
NODE_VERBS = ("list", "watch")

# Read by the EKS Auto Mode check only (auditor/adapters/aws/eks.py), not by the snapshot: a
# cluster without Karpenter's or Auto Mode's CRDs must not turn the audit's reads into errors.
# Their RBAC is its own ClusterRole (mesh-auditor-automode in deploy/rbac.yaml).
NODE_POOL = Resource("NodePool", "karpenter.sh", "v1", "nodepools", namespaced=False, crd=True)
NODE_CLASS = Resource("NodeClass", "eks.amazonaws.com", "v1", "nodeclasses", namespaced=False, crd=True)
AUTO_MODE_RESOURCES: tuple[Resource, ...] = (NODE_POOL, NODE_CLASS)
