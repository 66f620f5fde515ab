"""Which Istio's semantics an audit applies, and which Istio the cluster runs.

Role: the model (``mesh``, ``authz``) follows Istio ``MODEL_VERSION``, the version the translation
oracle runs (tests/integration/test_translation_oracle.py). An audit reads the control plane's
version from the istiod Deployments (or, without one, its Pods) in the snapshot and says which
semantics it applied; where the cluster's minor version differs from the model's, the
differences known to matter (``DIFFERENCES``, docs/ambient-semantics.md §12) are reported as an
INCONCLUSIVE ``audit.istio-semantics`` finding: a verdict that rests on them is the model's
reading of another Istio. Pure: built from a ``Snapshot`` only.

Where the version comes from (Istio's chart ``manifests/charts/istio-control/istio-discovery``,
which both Helm and ``istioctl install`` render): the istiod Deployment is labelled ``app: istiod``
and ``istio.io/rev``, its container ``discovery`` runs image ``<hub>/pilot:<tag>``, and released
charts stamp ``app.kubernetes.io/version: <appVersion>``; older ``istioctl`` installs add
``operator.istio.io/version``. In that order: the label, the image tag, the operator label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from auditor.core.checks.catalog import ISTIO_SEMANTICS
from auditor.core.checks.context import finding
from auditor.core.model import Evidence, Finding, Status
from auditor.core.snapshot import Snapshot, Workload

MODEL_VERSION = "1.31"
CONTROL_PLANE_NAMESPACE = "istio-system"

_VERSION_LABELS = ("app.kubernetes.io/version", "operator.istio.io/version")
_DISCOVERY = "discovery"
# Istio's chart in its source tree says appVersion 1.0.0; the release process stamps the real one.
_UNRELEASED_CHART = "1.0.0"
# A release tag: 1.28.0, 1.28.0-distroless, 1.31.0-rc.0; not a digest, not "latest".
_TAG = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+][0-9A-Za-z.-]+)?$")


@dataclass(frozen=True, slots=True)
class Difference:
    """One change between Istio minor versions that changes a verdict of the model.

    ``since``: the first minor (``"1.30"``) with the 1.31 behaviour the model implements.
    """

    since: str
    name: str
    what: str
    source: str


# Read in Istio's source and release notes (docs/ambient-semantics.md §12 gives the detail).
DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "1.29",
        "bypass-inbound-capture",
        "ambient.istio.io/bypass-inbound-capture: before, inbound HBONE to such a pod timed out (the mark "
        "rule was missing); the model has it reach the pod",
        "istio/istio#58577",
    ),
    Difference(
        "1.29",
        "ServiceEntry port names",
        "ServiceEntry ports are matched to container ports by name in ztunnel",
        "istio/istio#57713",
    ),
    Difference(
        "1.30",
        "trustDomains",
        "AuthorizationPolicy source.trustDomains / notTrustDomains exist; an older Istio does not know them "
        "(its CRD prunes them, its istiod ignores them): the source then matches every trust domain",
        "istio/api#3665, istio/istio#59358",
    ),
    Difference(
        "1.30",
        "serviceAccounts quoting",
        "serviceAccounts in AuthorizationPolicy are matched with the name quoted in the regex (names with "
        "special characters matched differently before)",
        "istio/istio#59700",
    ),
    Difference(
        "1.30",
        "istio-cni excludeNamespaces",
        "the istio-cni agent honours excludeNamespaces (before, only the plugin did: ambient pods there were "
        "still captured)",
        "istio/istio#59295",
    ),
    Difference(
        "1.31",
        "agentgateway waypoints",
        "GatewayClass istio-agentgateway-waypoint: istiod binds such a waypoint; the model recognises class "
        "istio-waypoint only",
        "docs/controlplane.md (Istio 1.31 versus 1.28)",
    ),
    Difference(
        "1.31",
        "waypoint canary",
        "istio.io/use-waypoint-canary: a weighted share of a Service's connections goes to a second waypoint "
        "(the model does not follow the canary share)",
        "istio/istio#60805",
    ),
)


@dataclass(frozen=True, slots=True)
class ControlPlane:
    """One istiod (one revision) and the version it runs, with the field that said so."""

    revision: str
    version: str
    evidence: Evidence

    @property
    def minor(self) -> str | None:
        """``"<major>.<minor>"`` of ``version`` (``1.31.0``, ``v1.31-dev`` ...); None when it is no version tag.
        Never raises.
        """
        match = _TAG.match(self.version)
        return f"{match.group(1)}.{match.group(2)}" if match else None


@dataclass(frozen=True, slots=True)
class Semantics:
    """The model's Istio version and the cluster's istiod versions (empty: unknown)."""

    model: str
    control_planes: tuple[ControlPlane, ...]

    @property
    def cluster(self) -> str:
        """The cluster's istiod versions, sorted and joined by ``", "``; ``"unknown"`` when none was found."""
        return ", ".join(sorted({c.version for c in self.control_planes})) or "unknown"

    def differences(self, control_plane: ControlPlane) -> tuple[Difference, ...]:
        """The known differences between the control plane's minor and the model's."""
        minor = control_plane.minor
        if minor is None or minor == self.model:
            return ()
        low, high = sorted((_key(minor), _key(self.model)))
        return tuple(d for d in DIFFERENCES if low < _key(d.since) <= high)

    def line(self) -> str:
        """One line for the reports: ``Istio semantics applied: 1.31 (model); cluster istiod: ...``."""
        text = f"Istio semantics applied: {self.model} (the model's); cluster istiod: {self.cluster}"
        if not self.control_planes:
            return text + " (no istiod Deployment or Pod in the input)"
        differing = [c for c in self.control_planes if c.minor != self.model]
        if differing:
            return text + f" (differs from the model: see {ISTIO_SEMANTICS.id})"
        return text

    def as_dict(self) -> dict[str, object]:
        """The JSON form: ``model``, ``cluster`` and ``line`` (str) and ``control_planes`` (``revision``,
        ``version``, ``source``: the object and field that said so). Never raises.
        """
        return {
            "model": self.model,
            "cluster": self.cluster,
            "line": self.line(),
            "control_planes": [
                {"revision": c.revision, "version": c.version, "source": f"{c.evidence.object} {c.evidence.field}"}
                for c in self.control_planes
            ],
        }


def _key(minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in minor.split("."))


def semantics_of(snapshot: Snapshot) -> Semantics:
    """The model's version and every istiod's version found in the snapshot.

    istiod is a workload labelled ``app: istiod`` with a ``discovery`` container, in any
    namespace (``istio-system`` by default); Deployments are read first, Pods only when no
    Deployment names a version (a snapshot may hold either).
    """
    found: dict[str, ControlPlane] = {}
    for pods in (False, True):
        for workload in snapshot.workloads:
            if workload.is_pod is not pods or not _is_istiod(workload):
                continue
            control_plane = _control_plane(workload)
            if control_plane is not None:
                found.setdefault(control_plane.revision, control_plane)
        if found:
            break
    return Semantics(MODEL_VERSION, tuple(found[r] for r in sorted(found)))


def _is_istiod(workload: Workload) -> bool:
    return workload.pod_labels.get("app") == "istiod" and any(c.name == _DISCOVERY for c in workload.containers)


def _control_plane(workload: Workload) -> ControlPlane | None:
    ref = workload.meta.ref
    revision = workload.pod_labels.get("istio.io/rev") or workload.meta.labels.get("istio.io/rev") or "default"
    labels = {**workload.pod_labels, **workload.meta.labels}
    chart, operator = (labels.get(key, "") for key in _VERSION_LABELS)
    if _TAG.match(chart) and chart != _UNRELEASED_CHART:
        return ControlPlane(revision, chart, Evidence(ref, f"labels.{_VERSION_LABELS[0]}", chart))
    for container in workload.containers:
        tag = _image_tag(container.image) if container.name == _DISCOVERY else ""
        if _TAG.match(tag):
            return ControlPlane(revision, tag, Evidence(ref, "spec.containers[discovery].image", container.image))
    if _TAG.match(operator):
        return ControlPlane(revision, operator, Evidence(ref, f"labels.{_VERSION_LABELS[1]}", operator))
    return None


def _image_tag(image: str) -> str:
    name = image.split("@", 1)[0]
    tail = name.rsplit("/", 1)[-1]
    return tail.split(":", 1)[1] if ":" in tail else ""


def semantics_findings(semantics: Semantics) -> tuple[Finding, ...]:
    """INCONCLUSIVE ``audit.istio-semantics`` per istiod whose minor version is not the model's."""
    findings = []
    for control_plane in semantics.control_planes:
        if control_plane.minor == semantics.model:
            continue
        differences = semantics.differences(control_plane)
        evidence = [control_plane.evidence]
        evidence += [Evidence(f"Istio {d.since}", "", d.source, d.what) for d in differences]
        newer = control_plane.minor is None or _key(control_plane.minor) > _key(semantics.model)
        if newer:
            detail = "a version the model was not checked against: differences unknown"
        else:
            detail = f"{len(differences)} known difference(s) can turn a verdict (see the evidence): " + ", ".join(
                f"{d.name} ({d.since})" for d in differences
            )
        message = (
            f"istiod {control_plane.version} (revision {control_plane.revision}) is not Istio {semantics.model}, "
            f"whose semantics the audit applied; {detail}"
        )
        target = f"cluster/istiod-{control_plane.revision}"
        findings.append(finding(ISTIO_SEMANTICS, target, Status.INCONCLUSIVE, message, evidence))
    return tuple(findings)
