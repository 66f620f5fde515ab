"""Every check's stable id and metadata: the human story reports and alerts render from.

Ids are ``<property>.<aspect>``; they are part of the output contract and are never reused for a
different meaning. ``docs/checks.md`` is generated from this catalog (``auditor checks --markdown``).
"""

from __future__ import annotations

from auditor.core.model import CheckMeta, Property, Severity

_WORKLOADS = frozenset(
    {"Namespace", "Service", "Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
)
_MTLS = _WORKLOADS | {"PeerAuthentication"}
_WAYPOINT = _WORKLOADS | {"Gateway", "GatewayClass"}
_AUTHZ = _MTLS | _WAYPOINT | {"AuthorizationPolicy", "ServiceAccount"}

SEMANTICS = "docs/ambient-semantics.md"

CAPTURED = CheckMeta(
    id="strict-mtls.captured",
    property=Property.STRICT_MTLS,
    title="Every workload behind the Service is enrolled in ztunnel's capture",
    severity=Severity.CRITICAL,
    protects="Without capture, ztunnel never sees inbound traffic: no mTLS, no STRICT, no L4 policy.",
    remediation=(
        "Label the namespace istio.io/dataplane-mode=ambient and remove pod-level opt-outs "
        "(istio.io/dataplane-mode: none, ambient.istio.io/bypass-inbound-capture), sidecar injection "
        "and hostNetwork from the workload."
    ),
    fix_summary=(
        "A strategic merge patch of each uncaptured workload's pod template (the Deployment, StatefulSet... "
        "whose pods they are): istio.io/dataplane-mode: ambient for a pod opt-out, sidecar.istio.io/inject: "
        '"false" for a sidecar, hostNetwork: false, the bypass annotation removed; or the Namespace label '
        "istio.io/dataplane-mode: ambient when neither is labelled. No YAML when the labels already enrol the"
        " pod and istio-cni did not redirect it (a node's matter)."
    ),
    references=(f"{SEMANTICS} §2, §10", "https://istio.io/latest/docs/ambient/usage/add-workloads/"),
    reads=_WORKLOADS,
)

PEER_AUTHENTICATION = CheckMeta(
    id="strict-mtls.peer-authentication",
    property=Property.STRICT_MTLS,
    title="The effective PeerAuthentication mode is STRICT on every target port",
    severity=Severity.CRITICAL,
    protects="Plaintext from clients outside the mesh is refused (promise 1, strict-mtls).",
    remediation=(
        "Keep one mesh-wide STRICT PeerAuthentication in the root namespace and delete namespace, "
        "workload or port-level overrides that set PERMISSIVE or DISABLE."
    ),
    fix_summary=(
        "The PeerAuthentication that decided each plaintext-accepting port, under its own name, with mode "
        "STRICT (its port-level entry, when that decided); the mesh-wide STRICT policy in the root namespace "
        "when no policy decided."
    ),
    references=(
        f"{SEMANTICS} §3, §10",
        "https://istio.io/latest/docs/reference/config/security/peer_authentication/",
    ),
    reads=_MTLS,
)

NODE_ZTUNNEL = CheckMeta(
    id="strict-mtls.node-ztunnel",
    property=Property.STRICT_MTLS,
    title="Every node that runs the Service's ready pods runs a Ready ztunnel",
    severity=Severity.HIGH,
    protects=(
        "The destination pod's node's ztunnel enforces mTLS and L4 policy (promise 1). A node whose ztunnel "
        "pod is missing or not Ready, reported on freshly autoscaled EKS nodes (istio/istio#61374, "
        "istio/ztunnel#1674), leaves the pods it hosts unenforced or unreachable."
    ),
    remediation=(
        "Find the node's ztunnel pod (kubectl -n istio-system get pods -l app=ztunnel -o wide "
        "--field-selector spec.nodeName=<node>); make the ztunnel DaemonSet tolerate and select every Auto "
        "Mode NodePool, then restart the application pods that started on the node before ztunnel was Ready "
        "so istio-cni captures them."
    ),
    remediation_yaml="""\
# Helm values of Istio's ztunnel chart: run on every node, whatever its taints.
tolerations:
- operator: Exists
""",
    references=(
        f"{SEMANTICS} §1, §2, §6",
        "https://github.com/istio/istio/issues/61374",
        "https://github.com/istio/ztunnel/issues/1674",
    ),
    reads=_WORKLOADS | {"EndpointSlice"},
)

INTRUDERS_REFUSED = CheckMeta(
    id="principal-allowlist.intruders-refused",
    property=Property.PRINCIPAL_ALLOWLIST,
    title="Callers outside the allow-list are refused on Service-addressed traffic",
    severity=Severity.HIGH,
    protects="Only the listed identities reach the Service (promise 2, principal-allowlist).",
    remediation=(
        "Have exactly one ALLOW path at the enforcement point that sees the caller (the waypoint via "
        "targetRefs when the Service uses one, ztunnel otherwise) listing only the allowed principals; "
        "remove wildcards, prefixes, notPrincipals, ipBlocks and extra ALLOW policies that widen it. "
        "Clients that skip the waypoint (sidecar pods; gateways unless the Service has "
        'istio.io/ingress-use-waypoint: "true") meet only ztunnel: add a ztunnel-bound ALLOW admitting '
        "just the waypoint's identity, or move their namespace to ambient."
    ),
    fix_summary=(
        "The AuthorizationPolicies on the path, whole: each ALLOW at the waypoint with its sources cut to the"
        " rules' allowedPrincipals and header conditions set to the required headers (operations kept), "
        "created (targetRefs: the Service) when none; for callers that skip the waypoint, a ztunnel-bound "
        "ALLOW (selector: the Service's) admitting only the waypoint's identity; the waypoint's label and "
        "Gateway when the Service does not use it. No YAML when Istio skips a waypoint the config names (its "
        "status)."
    ),
    references=(
        f"{SEMANTICS} §4.1-§4.4, §4.6, §8, §9",
        "https://istio.io/latest/docs/ambient/usage/l4-policy/",
    ),
    reads=_AUTHZ,
)

ALLOWED_ADMITTED = CheckMeta(
    id="principal-allowlist.allowed-admitted",
    property=Property.PRINCIPAL_ALLOWLIST,
    title="Every allowed identity is admitted on the probe request, waypoint hop included",
    severity=Severity.HIGH,
    protects="The allowed path works; the classic break is a ztunnel ALLOW without the waypoint's identity.",
    remediation=(
        "Move the caller allow-list to a targetRefs policy on the waypoint; any ztunnel-bound ALLOW "
        "left on the workload must admit the waypoint's identity cluster.local/ns/<ns>/sa/<waypoint>."
    ),
    fix_summary=(
        "What refuses the allowed identity, changed: the ztunnel-bound ALLOW behind the waypoint admitting "
        "the waypoint's identity (§4.5), the waypoint's ALLOW holding the allow-list, a DENY that matched it "
        "exempting it (notPrincipals), the caller's pods enrolled in ambient, or the Service labelled "
        "istio.io/ingress-use-waypoint for an allowed gateway."
    ),
    references=(f"{SEMANTICS} §4.5, §8.1, §9", "https://istio.io/latest/docs/ambient/usage/l7-features/"),
    reads=_AUTHZ,
)

WAYPOINT_BOUND = CheckMeta(
    id="waypoint-enrollment.bound",
    property=Property.WAYPOINT_ENROLLMENT,
    title="The Service is labelled to use its waypoint",
    severity=Severity.HIGH,
    protects="L7 policy applies only to traffic that goes through the waypoint (promise 3).",
    remediation="Label the Service (or its namespace) with istio.io/use-waypoint=<waypoint> (and "
    "istio.io/use-waypoint-namespace for a waypoint in another namespace). A typo bypasses the waypoint silently.",
    fix_summary=(
        "A strategic merge patch of the Service: istio.io/use-waypoint (and use-waypoint-namespace for a "
        "waypoint in another namespace) naming the rules' waypoint. No YAML when the labels are right and "
        "Istio reports WaypointBound=False (see the Gateway)."
    ),
    references=(f"{SEMANTICS} §2, §4.7", "https://istio.io/latest/docs/ambient/usage/waypoint/"),
    reads=_WAYPOINT,
)

WAYPOINT_GATEWAY = CheckMeta(
    id="waypoint-enrollment.gateway",
    property=Property.WAYPOINT_ENROLLMENT,
    title="The waypoint Gateway exists, is a valid waypoint, serves Service traffic and is ready where status shows",
    severity=Severity.HIGH,
    protects="A waypoint that does not resolve or is not ready is skipped: traffic goes straight to the pods. "
    "One bound without a 15008 listener fails every connection through it.",
    remediation="Create the Gateway with class istio-waypoint, a listener 15008/HBONE (ztunnel connects to it) and "
    "istio.io/waypoint-for: service (or all); allow other namespaces if it serves them.",
    fix_summary=(
        "The waypoint Gateway the rules name: created when missing; else a merge patch giving it class istio-"
        "waypoint, the one HBONE listener on 15008, istio.io/waypoint-for: service and, across namespaces, "
        "allowedRoutes from All. No YAML when its spec is right and it is not Programmed (the controller's "
        "status)."
    ),
    references=(f"{SEMANTICS} §2, §4.7", "https://istio.io/latest/docs/ambient/usage/waypoint/"),
    reads=_WAYPOINT,
)

HEADERS_ENFORCED = CheckMeta(
    id="required-headers.enforced",
    property=Property.REQUIRED_HEADERS,
    title="Requests without the required header value are refused at the waypoint",
    severity=Severity.HIGH,
    protects="L7 policy demands the header (promise 4); requests without it get 403 RBAC: access denied.",
    remediation="Bind the header condition to the waypoint with targetRefs, require the exact value "
    "(values, not notValues, * or a prefix/suffix pattern), and make sure no other ALLOW rule admits requests "
    "without it. Sidecar pods and gateways skip the waypoint: a ztunnel-bound ALLOW admitting only the waypoint's "
    "identity makes them go through it or be refused.",
    fix_summary=(
        "The waypoint's ALLOW policies with a condition request.headers[<name>] per required header (the "
        "value as ${VARIABLE} for envsubst: header values are never printed), sources cut to the allow-list; "
        "plus what sends every client through the waypoint (ztunnel-bound ALLOW for the waypoint's identity, "
        "enrolled pods)."
    ),
    references=(
        f"{SEMANTICS} §4.3, §4.6, §8.2, §9",
        "https://istio.io/latest/docs/reference/config/security/conditions/",
    ),
    reads=_AUTHZ,
)

TARGET_EXISTS = CheckMeta(
    id="audit.target-exists",
    property=Property.AUDIT_INTEGRITY,
    title="Every Service the rules name exists and every scope selects something",
    severity=Severity.MEDIUM,
    protects="An audit of nothing proves nothing: a renamed or missing Service is not a pass.",
    remediation="Fix the name or namespace in the rules, or add the missing manifests to the audit input.",
    fix_summary=("None: the rules name what the input does not hold; correct the rules or the audit input."),
    references=("docs/rules.md",),
    reads=frozenset({"Service"}),
)

SNAPSHOT_READ = CheckMeta(
    id="audit.snapshot-read",
    property=Property.AUDIT_INTEGRITY,
    title="The auditor could read every kind it needs",
    severity=Severity.HIGH,
    protects="A forbidden list or a missing CRD must never look like an empty, compliant cluster.",
    remediation="Grant the auditor's ClusterRole the missing verb on the resource named in the "
    "finding (deploy/rbac.yaml), or install the missing CRDs.",
    fix_summary=(
        "None: the auditor's own permission (deploy/rbac.yaml, the Helm chart) or a missing CRD, not mesh config."
    ),
    references=("deploy/rbac.yaml",),
)

# --- Probe checks: the same promises, proven with real traffic (docs/probes.md) ---------------

_PROBES = "docs/probes.md"

STRICT_MTLS_PROBE = CheckMeta(
    id="strict-mtls.probe",
    property=Property.STRICT_MTLS,
    title="A plaintext request from a pod outside the mesh is refused",
    severity=Severity.CRITICAL,
    protects="Traffic, not config, shows that STRICT refuses out-of-mesh clients (promise 1).",
    remediation=(
        "If the probe's plaintext request was answered, find the PeerAuthentication or capture gap "
        "the static findings name (strict-mtls.peer-authentication, strict-mtls.captured) and fix it; "
        "a denial only counts when the positive control (control.enabled) succeeded in the same run."
    ),
    fix_summary=(
        "The failing static findings' fixes (strict-mtls.captured, .peer-authentication) when the config "
        "explains the traffic; none when the config passes (the cluster differs from it) or nothing was "
        "proven."
    ),
    references=(f"{SEMANTICS} §1.2, §3", _PROBES),
)

ALLOWLIST_PROBE = CheckMeta(
    id="principal-allowlist.probe",
    property=Property.PRINCIPAL_ALLOWLIST,
    title="An in-mesh intruder is refused and the allowed identity gets through",
    severity=Severity.HIGH,
    protects="Traffic shows only the listed identities reach the Service (promise 2).",
    remediation=(
        "If the intruder got through, tighten the ALLOW policy at the enforcement point the static "
        "finding principal-allowlist.intruders-refused names; if the allowed identity was refused, see "
        "principal-allowlist.allowed-admitted (the waypoint identity pitfall, semantics §4.5)."
    ),
    fix_summary=(
        "The failing static findings' fixes (principal-allowlist.*); none when the config passes or nothing "
        "was proven (a denial without a passing control)."
    ),
    references=(f"{SEMANTICS} §1.1, §1.3, §4.5", _PROBES),
)

HEADERS_PROBE = CheckMeta(
    id="required-headers.probe",
    property=Property.REQUIRED_HEADERS,
    title="The allowed identity is refused at the waypoint without each required header",
    severity=Severity.HIGH,
    protects="Traffic shows the waypoint demands every required header (promise 4).",
    remediation=(
        "If a request without a required header got through, bind the header condition to the "
        "waypoint with targetRefs (see required-headers.enforced). Needs the positive control."
    ),
    fix_summary=(
        "The failing static finding's fix (required-headers.enforced); none when the config passes or nothing"
        " was proven."
    ),
    references=(f"{SEMANTICS} §1.3, §4.3, §4.6, §8.2", _PROBES),
)

WAYPOINT_PROBE = CheckMeta(
    id="waypoint-enrollment.probe",
    property=Property.WAYPOINT_ENROLLMENT,
    title="The allowed identity's response proves it went through the waypoint",
    severity=Severity.HIGH,
    protects="Traffic, not labels, shows the Service's requests meet its waypoint (promise 3).",
    remediation=(
        "If the response carries no waypoint marker (or no server: istio-envoy with "
        "x-envoy-upstream-service-time), the traffic bypasses the waypoint: check the Service's "
        "istio.io/use-waypoint label and the Gateway's status (waypoint-enrollment.bound, .gateway)."
    ),
    fix_summary=(
        "The failing static findings' fixes (waypoint-enrollment.*); none when the config passes or nothing was proven."
    ),
    references=(f"{SEMANTICS} §1.7, §4.7", _PROBES),
)

WAYPOINT_BYPASS = CheckMeta(
    id="waypoint-enrollment.pod-ip-bypass",
    property=Property.WAYPOINT_ENROLLMENT,
    title="A caller on no allow-list cannot reach the Service's pods by pod IP, around its waypoint",
    severity=Severity.LOW,  # advisory by default; settings probes.pod_ip_bypass_severity
    protects=(
        "Traffic addressed to a pod IP skips the Service's waypoint (semantics §4.6): only policy that "
        "ztunnel enforces protects it, or the pod's own waypoint (istio.io/use-waypoint on the pod or its "
        "namespace, waypoint-for workload or all) with the policies targeting that Gateway (§4.8). Proven by a "
        "probe that sends the intruder's request to each ready endpoint by pod IP."
    ),
    remediation=(
        "Add an L4 ALLOW policy enforced by ztunnel on the workload (selector) that admits only the "
        "waypoint's identity, so that every caller must go through the waypoint; or bind the waypoint to "
        "the workloads too (istio.io/use-waypoint on the namespace or pods, waypoint-for: all) with the L7 policy "
        "targeting the Gateway: a policy targeting the Service never applies to pod-IP traffic (§4.8)."
    ),
    remediation_yaml="""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: <service>-only-via-waypoint
  namespace: <namespace>
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: <service>
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/<namespace>/sa/<waypoint>
""",
    references=(f"{SEMANTICS} §4.6, §1.7", "https://istio.io/latest/docs/ambient/usage/waypoint/"),
)

AUTO_MODE = CheckMeta(
    id="audit.eks-auto-mode",
    property=Property.AUDIT_INTEGRITY,
    title="The cluster is an EKS Auto Mode cluster with node pools",
    severity=Severity.MEDIUM,
    protects="Probe pods run on Auto Mode nodes; without Auto Mode they cannot be scheduled as designed.",
    remediation="Enable EKS Auto Mode (computeConfig.enabled) with its built-in node pools, or with custom "
    "NodePools whose nodeClassRef names an eks.amazonaws.com NodeClass; or set the probe node selector "
    "(AUDITOR_PROBES__NODE_SELECTOR) for your nodes.",
    fix_summary=(
        "Merge patches pointing custom NodePools at an existing Auto Mode NodeClass; otherwise none: Auto "
        "Mode is a setting of the EKS cluster in the AWS API, not a Kubernetes object."
    ),
    references=(
        f"{SEMANTICS} §6",
        "https://docs.aws.amazon.com/eks/latest/userguide/automode.html",
        "https://docs.aws.amazon.com/eks/latest/userguide/create-node-pool.html",
    ),
)

ISTIO_SEMANTICS = CheckMeta(
    id="audit.istio-semantics",
    property=Property.AUDIT_INTEGRITY,
    title="The cluster runs the Istio version whose semantics the audit applied",
    severity=Severity.MEDIUM,
    protects="Verdicts are the model's reading of one Istio version; on another, the differences listed "
    "in the finding can turn a verdict.",
    remediation="Weigh the listed differences against the findings they touch, or audit with the "
    "auditor release whose model matches the cluster's istiod.",
    remediation_yaml="",
    references=(f"{SEMANTICS} §12",),
    reads=frozenset({"Deployment", "Pod"}),
)

CONFIG_REVISION = CheckMeta(
    id="audit.config-revision",
    property=Property.AUDIT_INTEGRITY,
    title="Every Istio policy is read by the istiod that serves the mesh",
    severity=Severity.HIGH,
    protects="istiod reads a config object labelled istio.io/rev only when the label is its own revision: a "
    "policy written for another revision (a canary never installed, one rolled back, a revision tag's name) "
    "is never sent to ztunnel or the waypoints, and every promise it was meant to keep is not kept.",
    remediation="Remove the istio.io/rev label from the object (every istiod reads an unlabelled object), or set "
    "it to the revision that serves the mesh (the finding's evidence names it and how it was found). An audit "
    "that cannot see the serving revision (offline manifests without istiod) reports every verdict that "
    "depends on it as INCONCLUSIVE.",
    fix_summary="A patch of the object removing its istio.io/rev label (every istiod reads an unlabelled "
    "object). INCONCLUSIVE when the input does not show the serving revision.",
    references=(
        f"{SEMANTICS} §13",
        "https://istio.io/latest/docs/setup/upgrade/canary/",
    ),
    reads=frozenset(
        {"AuthorizationPolicy", "PeerAuthentication", "ServiceEntry", "HTTPRoute", "DaemonSet", "Deployment", "Pod"}
    ),
)

ALL: tuple[CheckMeta, ...] = (
    CAPTURED,
    PEER_AUTHENTICATION,
    NODE_ZTUNNEL,
    INTRUDERS_REFUSED,
    ALLOWED_ADMITTED,
    WAYPOINT_BOUND,
    WAYPOINT_GATEWAY,
    HEADERS_ENFORCED,
    TARGET_EXISTS,
    SNAPSHOT_READ,
    ISTIO_SEMANTICS,
    CONFIG_REVISION,
    AUTO_MODE,
    STRICT_MTLS_PROBE,
    ALLOWLIST_PROBE,
    HEADERS_PROBE,
    WAYPOINT_PROBE,
    WAYPOINT_BYPASS,
)


def by_id(check_id: str) -> CheckMeta:
    """The ``CheckMeta`` of ``check_id`` in ``ALL``; raises ``KeyError`` for an unknown id."""
    for meta in ALL:
        if meta.id == check_id:
            return meta
    raise KeyError(check_id)
