"""Chaos drills (issue #13): a canary that mirrors a protected Service's protection, the drifts
a drill injects into it one at a time, and how the audit's findings judge each step.

Pure: a protected Service and the sandbox's options in; manifests, JSON Patch operations
(RFC 6902), a step sequence and verdicts out. The runner (``auditor.daemon.drillrun``) performs the
steps through ports (``SandboxWriter``, ``DrillAlerter``) and the audit's own snapshot source,
so a drill is judged by exactly the code that judges the cluster.

The canary (every object in the sandbox namespace, labelled ``app.kubernetes.io/managed-by:
mesh-auditor`` and ``mesh-auditor.dev/drill: canary``):

- a Deployment and its ServiceAccount, enrolled by the sandbox namespace's
  ``istio.io/dataplane-mode: ambient`` label (semantics §2.1);
- a namespace-wide STRICT PeerAuthentication, which wins over the mesh-wide one (§3.2), so that
  the PERMISSIVE drift is a real drift even when the mesh is STRICT;
- a waypoint Gateway (class ``istio-waypoint``) and the Service's ``istio.io/use-waypoint``
  label (§4.1);
- an ALLOW AuthorizationPolicy on the waypoint with the mirrored principal allow-list (the
  protected Service's ServiceAccount names, in the sandbox namespace) and one ``when`` condition
  per required header (§4.3), with drill values, never the real ones.

Drift kinds are data (``DRIFT_KINDS``): what changes, on which object, which promise must catch
it. ``drift_for`` turns a kind into the patch that injects it and the patch that reverts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from auditor.core.checks.catalog import WAYPOINT_BYPASS
from auditor.core.model import Finding, Method, Property, Status
from auditor.core.posture import (
    ControlProbe,
    HeaderValue,
    MeshSettings,
    Posture,
    ProbeTarget,
    ProtectedService,
    RequiredHeader,
    ScopeEntry,
    WaypointRef,
)

MANAGED_BY = ("app.kubernetes.io/managed-by", "mesh-auditor")
DRILL_LABEL = "mesh-auditor.dev/drill"
DRILL_LABEL_VALUE = "canary"
SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]},{DRILL_LABEL}={DRILL_LABEL_VALUE}"
# An operator stops every drill by labelling the sandbox namespace (docs/drills.md).
KILL_SWITCH_LABEL = "mesh-auditor.dev/drills"
KILL_SWITCH_OFF = "off"
USE_WAYPOINT = "istio.io/use-waypoint"
DATAPLANE_MODE = "istio.io/dataplane-mode"
CANARY_PORT = 8080
PROMISES = (
    Property.STRICT_MTLS,
    Property.PRINCIPAL_ALLOWLIST,
    Property.WAYPOINT_ENROLLMENT,
    Property.REQUIRED_HEADERS,
)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object of the canary, always in the sandbox namespace."""

    api_version: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class CanaryOptions:
    """Where the canary lives and what it runs; from settings (``DrillSettings``)."""

    namespace: str = "mesh-auditor-drill"
    name: str = "drill-canary"
    image: str = "ghcr.io/mesh-auditor/mesh-auditor-probe:latest"
    command: tuple[str, ...] = ("python", "-m", "http.server", str(CANARY_PORT), "--directory", "/tmp")  # noqa: S108 - an empty directory to serve; nothing is written
    run_as_user: int = 65532
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # The drill's header values: random per drill (the app draws them), never a real one.
    header_value: str = "mesh-auditor-drill"


@dataclass(frozen=True, slots=True)
class Canary:
    """The canary's objects and the posture that protects it like the mirrored Service."""

    source: str  # the protected Service it mirrors, "<namespace>/<name>"
    protected: ProtectedService
    mesh: MeshSettings
    objects: tuple[dict[str, Any], ...]

    @property
    def target(self) -> str:
        """``"namespace/name"`` of the canary Service in the sandbox: the target of its findings. Never raises."""
        return self.protected.target

    @property
    def posture(self) -> Posture:
        """The rules that audit only the canary: its namespace and Service in scope, ``protected`` as the one
        protected Service, under ``mesh``. Never raises.
        """
        scope = ScopeEntry(namespace=self.protected.namespace, services=[self.protected.name])
        return Posture(mesh=self.mesh, scope=(scope,), protected=(self.protected,), names=("mesh-auditor-drill",))

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        """One ``ObjectRef`` per canary object, in ``objects`` order. Never raises."""
        return tuple(ObjectRef(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in self.objects)

    def header_values(self) -> dict[tuple[str, str], str | None]:
        """The resolved required-header values, as ``resolve_header_values`` gives them."""
        return {(self.target, h.name): h.value.literal for h in self.protected.required_headers}

    def object(self, kind: str) -> dict[str, Any]:
        """The first canary object (a manifest dict) of ``kind``; raises ``StopIteration`` when there is none."""
        return next(o for o in self.objects if o["kind"] == kind)


class CanaryError(ValueError):
    """The rules name no protected Service a canary can mirror."""


def choose_source(posture: Posture, wanted: str | None) -> ProtectedService:
    """The protected Service to mirror: ``wanted`` (``ns/name``), else the first with the most
    protection (a waypoint and required headers), so every drift kind applies."""
    if wanted is not None:
        found = posture.protected_service(wanted)
        if found is None:
            known = ", ".join(p.target for p in posture.protected) or "none"
            raise CanaryError(f"{wanted} is not a protected Service of the rules (protected: {known})")
        return found
    if not posture.protected:
        raise CanaryError("the rules protect no Service (spec.protectedServices is empty): nothing to mirror")
    return max(posture.protected, key=lambda p: (p.waypoint is not None, bool(p.required_headers)))


def build_canary(source: ProtectedService, mesh: MeshSettings, options: CanaryOptions) -> Canary:
    """The canary mirroring ``source``: same promises, same number of allowed principals (their
    ServiceAccount names, in the sandbox), same header names, a waypoint when ``source`` has one."""
    namespace, name = options.namespace, options.name
    if namespace == mesh.root_namespace:
        # A PeerAuthentication or AuthorizationPolicy in the root namespace applies mesh-wide (§3.2).
        raise CanaryError(
            f"the sandbox namespace {namespace} is Istio's root namespace: a drill there would drift the mesh"
        )
    accounts = list(dict.fromkeys(p.rsplit("/sa/", 1)[-1] for p in source.allowed_principals))
    principals = [f"{mesh.trust_domain}/ns/{namespace}/sa/{a}" for a in accounts]
    waypoint = WaypointRef(name=f"{name}-waypoint", namespace=namespace) if source.waypoint is not None else None
    headers = [
        RequiredHeader(name=h.name, value=HeaderValue(literal=options.header_value)) for h in source.required_headers
    ]
    # The positive control of a probe run (semantics §1.7): the drill's own first allowed account,
    # in the sandbox, impersonating no real workload.
    control = ControlProbe(enabled=True, service_account=accounts[0]) if accounts else ControlProbe()
    protected = ProtectedService(
        name=name,
        namespace=namespace,
        allowed_principals=principals,
        waypoint=waypoint,
        required_headers=headers,
        probe=ProbeTarget(port=80, path="/"),
        control=control,
    )
    objects = [
        _meta("v1", "ServiceAccount", name, namespace),
        *(_meta("v1", "ServiceAccount", a, namespace) for a in accounts[:1] if a != name),
        _deployment(name, namespace, options),
        _service(name, namespace, waypoint),
        {**_meta("security.istio.io/v1", "PeerAuthentication", f"{name}-strict", namespace), "spec": _strict()},
    ]
    if waypoint is not None:
        objects.append(_waypoint(waypoint.name, namespace))
    objects.append(_allow_policy(name, namespace, principals, headers, waypoint))
    return Canary(source.target, protected, mesh, tuple(objects))


def _labels() -> dict[str, str]:
    return {MANAGED_BY[0]: MANAGED_BY[1], DRILL_LABEL: DRILL_LABEL_VALUE}


def _meta(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
    }


def _strict() -> dict[str, Any]:
    return {"mtls": {"mode": "STRICT"}}


def _deployment(name: str, namespace: str, options: CanaryOptions) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": name, DRILL_LABEL: DRILL_LABEL_VALUE}
    container = {
        "name": "canary",
        "image": options.image,
        "command": list(options.command),
        "ports": [{"name": "http", "containerPort": CANARY_PORT, "protocol": "TCP"}],
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
    }
    spec: dict[str, Any] = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    return {
        **_meta("apps/v1", "Deployment", name, namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": {**_labels(), **selector}}, "spec": spec},
        },
    }


def _service(name: str, namespace: str, waypoint: WaypointRef | None) -> dict[str, Any]:
    service = _meta("v1", "Service", name, namespace)
    if waypoint is not None:
        service["metadata"]["labels"][USE_WAYPOINT] = waypoint.name
    service["spec"] = {
        "selector": {"app.kubernetes.io/name": name, DRILL_LABEL: DRILL_LABEL_VALUE},
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }
    return service


def _waypoint(name: str, namespace: str) -> dict[str, Any]:
    gateway = _meta("gateway.networking.k8s.io/v1", "Gateway", name, namespace)
    gateway["metadata"]["labels"]["istio.io/waypoint-for"] = "service"
    gateway["spec"] = {
        "gatewayClassName": "istio-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    }
    return gateway


def _allow_policy(
    name: str, namespace: str, principals: list[str], headers: list[RequiredHeader], waypoint: WaypointRef | None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": [{"source": {"principals": principals}}]}
    if headers:
        rule["when"] = [{"key": f"request.headers[{h.name}]", "values": [h.value.literal]} for h in headers]
    spec: dict[str, Any] = {"action": "ALLOW", "rules": [rule]}
    if waypoint is not None:
        spec["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": waypoint.name}]
    else:
        spec["selector"] = {"matchLabels": {"app.kubernetes.io/name": name}}
    return {**_meta("security.istio.io/v1", "AuthorizationPolicy", f"{name}-allow", namespace), "spec": spec}


# --- drifts --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftKind:
    """One kind of drift: the object it changes, how, and the promise that must catch it."""

    name: str
    promise: Property
    kind: str  # the canary object's kind
    summary: str
    needs_waypoint: bool = False
    needs_headers: bool = False


DRIFT_KINDS: tuple[DriftKind, ...] = (
    DriftKind(
        "permissive-peer-authentication",
        Property.STRICT_MTLS,
        "PeerAuthentication",
        "the canary's PeerAuthentication set to PERMISSIVE (plaintext accepted, semantics §3.2)",
    ),
    DriftKind(
        "use-waypoint-removed",
        Property.WAYPOINT_ENROLLMENT,
        "Service",
        "the istio.io/use-waypoint label removed from the canary Service (traffic skips the waypoint, §4.1)",
        needs_waypoint=True,
    ),
    DriftKind(
        "principals-widened",
        Property.PRINCIPAL_ALLOWLIST,
        "AuthorizationPolicy",
        'the allowed principals widened to "*" (any mesh identity admitted, §4.2)',
    ),
    DriftKind(
        "header-condition-removed",
        Property.REQUIRED_HEADERS,
        "AuthorizationPolicy",
        "the required-header condition removed from the ALLOW rule (§4.3)",
        needs_headers=True,
    ),
    DriftKind(
        "pod-opted-out",
        Property.STRICT_MTLS,
        "Deployment",
        "the canary pods opted out of the mesh with istio.io/dataplane-mode: none (not captured, §2.1)",
    ),
)


def drift_kind(name: str) -> DriftKind:
    """The ``DriftKind`` called ``name`` in ``DRIFT_KINDS``; raises ``ValueError`` naming the known ones when there
    is none.
    """
    found = next((k for k in DRIFT_KINDS if k.name == name), None)
    if found is None:
        raise ValueError(f"unknown drift kind {name!r}; known: {', '.join(k.name for k in DRIFT_KINDS)}")
    return found


@dataclass(frozen=True, slots=True)
class Drift:
    """One drift of one canary: JSON Patch operations (RFC 6902) that inject and revert it."""

    kind: DriftKind
    ref: ObjectRef
    inject: tuple[dict[str, Any], ...]
    revert: tuple[dict[str, Any], ...]


def applicable(kind: DriftKind, canary: Canary) -> str | None:
    """Why ``kind`` cannot be drilled on ``canary`` (None: it can)."""
    if kind.needs_waypoint and canary.protected.waypoint is None:
        return f"{canary.source} has no waypoint to mirror"
    if kind.needs_headers and not canary.protected.required_headers:
        return f"{canary.source} has no required header to mirror"
    return None


def drift_for(kind: DriftKind, canary: Canary) -> Drift:
    """The patches for ``kind`` on ``canary``; each carries a ``test`` op first, so a patch is
    applied only to the state it was computed from (the API server refuses it otherwise)."""
    target = canary.object(kind.kind)
    ref = ObjectRef(target["apiVersion"], target["kind"], target["metadata"]["name"])
    if kind.name == "permissive-peer-authentication":
        return _replace(kind, ref, "/spec/mtls/mode", "STRICT", "PERMISSIVE")
    if kind.name == "use-waypoint-removed":
        path = f"/metadata/labels/{_pointer(USE_WAYPOINT)}"
        value = target["metadata"]["labels"][USE_WAYPOINT]
        return Drift(kind, ref, _remove(path, value), _add(path, value))
    if kind.name == "principals-widened":
        path = "/spec/rules/0/from/0/source/principals"
        principals = target["spec"]["rules"][0]["from"][0]["source"]["principals"]
        return _replace(kind, ref, path, principals, ["*"])
    if kind.name == "header-condition-removed":
        when = target["spec"]["rules"][0]["when"]
        return Drift(kind, ref, _remove("/spec/rules/0/when", when), _add("/spec/rules/0/when", when))
    if kind.name == "pod-opted-out":
        path = f"/spec/template/metadata/labels/{_pointer(DATAPLANE_MODE)}"
        return Drift(kind, ref, _add(path, "none"), _remove(path, "none"))
    raise ValueError(f"no patch for drift kind {kind.name!r}")


def _pointer(key: str) -> str:
    """A map key as one JSON Pointer token (RFC 6901: ``~`` and ``/`` escaped)."""
    return key.replace("~", "~0").replace("/", "~1")


def _replace(kind: DriftKind, ref: ObjectRef, path: str, before: object, after: object) -> Drift:
    inject = ({"op": "test", "path": path, "value": before}, {"op": "replace", "path": path, "value": after})
    revert = ({"op": "test", "path": path, "value": after}, {"op": "replace", "path": path, "value": before})
    return Drift(kind, ref, inject, revert)


def _remove(path: str, value: object) -> tuple[dict[str, Any], ...]:
    return ({"op": "test", "path": path, "value": value}, {"op": "remove", "path": path})


def _add(path: str, value: object) -> tuple[dict[str, Any], ...]:
    return ({"op": "add", "path": path, "value": value},)


# --- steps ---------------------------------------------------------------------------------------


class Action(StrEnum):
    """What one step of a drill does."""

    SWEEP = "sweep"  # delete what an earlier (crashed) drill left in the sandbox
    DEPLOY = "deploy"
    AWAIT_BASELINE = "await-baseline"  # the canary's promises all pass: the baseline
    INJECT = "inject"
    AWAIT_DETECT = "await-detect"  # the drift's promise fails
    ALERT = "alert"  # a drill alert delivered
    REVERT = "revert"
    AWAIT_RESOLVE = "await-resolve"  # every promise passes again
    CLEANUP = "cleanup"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a drill: the ``action`` and, for the per-drift steps, the ``drift`` it acts on (None for sweep,
    deploy, baseline and cleanup).
    """

    action: Action
    drift: Drift | None = None


def drill_steps(canary: Canary, kinds: Iterable[DriftKind]) -> tuple[Step, ...]:
    """The sequence a drill runs: sweep, deploy, baseline, then per drift inject, detect, alert,
    revert, resolve; cleanup last. One drift at a time, so each detection names one cause."""
    steps = [Step(Action.SWEEP), Step(Action.DEPLOY), Step(Action.AWAIT_BASELINE)]
    for kind in kinds:
        if applicable(kind, canary) is not None:
            continue
        drift = drift_for(kind, canary)
        steps += [
            Step(Action.INJECT, drift),
            Step(Action.AWAIT_DETECT, drift),
            Step(Action.ALERT, drift),
            Step(Action.REVERT, drift),
            Step(Action.AWAIT_RESOLVE, drift),
        ]
    steps.append(Step(Action.CLEANUP))
    return tuple(steps)


# --- judging -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one audit of the canary says: which promises fail (by static checks, by probe verdicts),
    and whether all four pass. ``by_probes``: the audit ran probes, and detection is theirs."""

    failing: Mapping[Property, tuple[str, ...]]  # promise -> failing check ids (static and probe)
    unproven: tuple[str, ...]  # checks neither PASS nor FAIL (ERROR, INCONCLUSIVE, SKIPPED)
    passes: bool
    probe_failing: Mapping[Property, tuple[str, ...]] = field(default_factory=dict)  # probe checks only
    by_probes: bool = False

    def detects(self, promise: Property) -> bool:
        """True when ``promise`` fails for the canary: by a probe verdict when the audit ran probes (the
        issue's "the probes detect it on the right promise"), else by any check. Never raises."""
        if self.by_probes:
            return bool(self.probe_failing.get(promise))
        return bool(self.failing.get(promise))

    def detected_by(self, promise: Property) -> tuple[str, ...]:
        """Which methods fail ``promise`` now: ``"static"`` and/or ``"probe"``, in that order. Never raises."""
        probe = set(self.probe_failing.get(promise, ()))
        static = [c for c in self.failing.get(promise, ()) if c not in probe]
        return (("static",) if static else ()) + (("probe",) if probe else ())

    def describe(self) -> str:
        """The judgement in words: every promise passes, or which promises fail (with check ids) and which checks are
        not proven. Never raises.
        """
        if self.passes:
            return "every promise of the canary passes" + (", static and by probes" if self.by_probes else "")
        parts = [f"{p.value} fails ({', '.join(ids)})" for p, ids in self.failing.items()]
        parts += [f"not proven: {', '.join(self.unproven)}"] if self.unproven else []
        return "; ".join(parts) or "no finding for the canary"


# Advisory checks no drift kind targets: the canary mirrors the protected Service, and with it a
# weakness of that protection that is its own finding (the pod-IP bypass, when the Service has no
# ztunnel ALLOW for its waypoint: found by a drill with probes in the lab). Judged, it would fail
# every baseline, and at each drift it would read as a detection that was there before.
NOT_JUDGED_BY_DRILLS = frozenset({WAYPOINT_BYPASS.id})


def judge(findings: Sequence[Finding], canary: Canary, *, by_probes: bool = False) -> Judgement:
    """The canary's findings (static, and probe ones when probes ran) as a ``Judgement``.

    The baseline passes only when every promise the canary carries has a finding and all of
    them PASS (``NOT_JUDGED_BY_DRILLS`` left out): a promise with no finding, or an unproven one, is never a pass. With
    ``by_probes`` each promise also needs a passing probe verdict (a probe run that proved
    nothing is never a baseline), and a drift counts as detected only by a failing probe verdict.
    """
    mine = [
        f
        for f in findings
        if f.target == canary.target and f.property in PROMISES and f.check.id not in NOT_JUDGED_BY_DRILLS
    ]
    failing: dict[Property, list[str]] = {}
    probe_failing: dict[Property, list[str]] = {}
    for finding in mine:
        if finding.status is Status.FAIL:
            failing.setdefault(finding.property, []).append(finding.check.id)
            if finding.method is Method.PROBE:
                probe_failing.setdefault(finding.property, []).append(finding.check.id)
    unproven = tuple(sorted(f.check.id for f in mine if f.status not in {Status.PASS, Status.FAIL}))
    covered = {f.property for f in mine if f.method is Method.STATIC}
    wanted = set(_promises_of(canary.protected))
    if by_probes:
        covered &= {f.property for f in mine if f.method is Method.PROBE}
    passes = not failing and not unproven and wanted <= covered
    return Judgement(
        {p: tuple(ids) for p, ids in failing.items()},
        unproven,
        passes,
        {p: tuple(ids) for p, ids in probe_failing.items()},
        by_probes,
    )


def _promises_of(protected: ProtectedService) -> tuple[Property, ...]:
    promises = [Property.STRICT_MTLS, Property.PRINCIPAL_ALLOWLIST]
    promises += [Property.WAYPOINT_ENROLLMENT] if protected.waypoint is not None else []
    promises += [Property.REQUIRED_HEADERS] if protected.required_headers else []
    return tuple(promises)


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrillOutcome:
    """One drift kind's run: the JSON output's ``drills[]`` entry."""

    kind: str
    promise: str
    detected: bool
    time_to_detect_s: float | None
    alerted: bool
    time_to_alert_s: float | None
    resolved: bool
    detail: str = ""
    detected_by: tuple[str, ...] = ()  # "static" and/or "probe": what failed the promise at detection

    def as_dict(self) -> dict[str, object]:
        """The JSON ``drills[]`` entry: ``kind``, ``promise`` (str), ``detected``, ``alerted``, ``resolved`` (bool),
        ``time_to_detect_s`` and ``time_to_alert_s`` (seconds or None), ``detected_by`` (a list of ``"static"``
        and ``"probe"``) and ``detail`` (str). Never raises.
        """
        return {
            "kind": self.kind,
            "promise": self.promise,
            "detected": self.detected,
            "time_to_detect_s": self.time_to_detect_s,
            "alerted": self.alerted,
            "time_to_alert_s": self.time_to_alert_s,
            "resolved": self.resolved,
            "detected_by": list(self.detected_by),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class DrillResult:
    """A whole drill: baseline, every drift's outcome, and what was left in the sandbox."""

    canary: str
    source: str
    baseline: bool
    baseline_detail: str
    outcomes: tuple[DrillOutcome, ...]
    leftover_objects: int  # -1: the sandbox could not be listed after the sweep
    aborted: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # (drift kind, why it does not apply to this canary)

    @property
    def ok(self) -> bool:
        """True only for a complete drill: baseline passed, not aborted, nothing left in the sandbox, and every drift
        detected, alerted and resolved. Never raises.
        """
        complete = self.baseline and not self.aborted and self.leftover_objects == 0
        return complete and all(o.detected and o.alerted and o.resolved for o in self.outcomes)

    def as_dict(self) -> dict[str, object]:
        """The drill's JSON document: ``canary``, ``mirrors``, ``baseline`` (``passed``, ``detail``), ``drills``
        (``DrillOutcome.as_dict`` each), ``cleanup`` (``leftover_objects``), ``skipped`` (``kind``, ``reason``),
        ``aborted`` (str or None) and ``ok``. Never raises.
        """
        return {
            "canary": self.canary,
            "mirrors": self.source,
            "baseline": {"passed": self.baseline, "detail": self.baseline_detail},
            "drills": [o.as_dict() for o in self.outcomes],
            "cleanup": {"leftover_objects": self.leftover_objects},
            "skipped": [{"kind": k, "reason": r} for k, r in self.skipped],
            "aborted": self.aborted,
            "ok": self.ok,
        }


def alert_text(canary: Canary, drift: Drift, judgement: Judgement, seconds: float) -> str:
    """The drill alert: marked as a drill in its first words, so nobody acts on it."""
    return (
        f"[DRILL] mesh-auditor chaos drill, no action needed: drift {drift.kind.name} on the canary "
        f"{canary.target} (mirrors {canary.source}) detected on {drift.kind.promise.value} after "
        f"{seconds:.1f} s: {judgement.describe()}"
    )


def resolved_text(canary: Canary, drift: Drift) -> str:
    """The drill's resolution message, marked ``[DRILL]`` in its first word so nobody acts on it. Never raises."""
    return f"[DRILL] resolved: drift {drift.kind.name} reverted on {canary.target}; every promise passes again"


# --- ports ---------------------------------------------------------------------------------------


class SandboxWriter(Protocol):
    """Writes the canary's objects, only in the sandbox namespace; adapters refuse any other."""

    def create(self, manifest: Mapping[str, Any]) -> None:
        """Creates ``manifest`` (a canary object) in the sandbox namespace; raises when refused or unreachable."""

    def patch(self, ref: ObjectRef, operations: Sequence[Mapping[str, Any]]) -> None:
        """Applies JSON Patch ``operations`` (RFC 6902) to the object ``ref``; raises when refused or unreachable."""

    def sweep(self) -> int:
        """Delete every object labelled as a drill's (``SELECTOR``); how many were deleted."""
        ...

    def leftovers(self) -> int:
        """How many objects labelled as a drill's are still in the sandbox."""
        ...

    def killed(self) -> bool:
        """The kill switch: the sandbox namespace labelled ``mesh-auditor.dev/drills=off``."""
        ...


class DrillAlerter(Protocol):
    """Delivers a drill alert to the drill channel/thread; True once the receiver accepted it.

    Never the incident outbox: a drill neither opens nor resolves a real alert."""

    def send(self, text: str) -> bool:
        """Sends ``text`` once; True when the receiver accepted it, False otherwise. Never raises."""
