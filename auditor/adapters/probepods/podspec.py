"""The probe pod manifest: a pure function from one batch's plan to a hardened Pod dict.

The spec satisfies ``deploy/probe-guard.yaml`` (managed-by label, no token, non-root, read-only
root filesystem, no privilege escalation, ALL capabilities dropped, no host namespaces) and
suits EKS Auto Mode (semantics §6): a node selector for Auto Mode nodes, ``do-not-disrupt`` so
consolidation does not kill a probe mid-run, no privileges Bottlerocket would refuse.

How the plan gets in: a pod has no stdin, so the plan JSON travels in the environment variable
``MESH_AUDITOR_PROBE_PLAN`` and a three-line ``python -c`` shim hands it to ``python -m probes
--plan -`` as stdin (the image needs only Python, no shell). The plan is part of the pod spec,
readable by anyone who may ``get`` pods in that namespace, so it never holds a secret header
value (``by_reference``): a value from ``secretRef`` or ``fromEnv`` reaches the probe program as
``MESH_AUDITOR_HEADER_<n>``, which the kubelet fills from a Secret in the pod's own namespace
(``secretKeyRef``: the rules' ``probeSecretRef``, else the ``secretRef`` name and key; the
platform team provides it). The auditor neither reads nor writes that Secret; creating a pod
that refers to it needs no Secret permission. Only a ``literal`` (already in the rules file)
travels by value.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from auditor import __version__
from auditor.core.mesh import PROBE_MANAGED_BY, PROBE_ROLE_LABEL
from auditor.core.posture import HeaderValue, ProbeSecretRef
from auditor.core.probing.probeplan import WITH_HEADERS, ProbeBatch, RunPlan
from probes.wire import HEADER_ENV_PREFIX, ProbePlan

MANAGED_BY, MANAGED_BY_VALUE = PROBE_MANAGED_BY  # the core recognises its own probe pods by these
RUN_ID_LABEL = "mesh-auditor.dev/run-id"
ROLE_LABEL = PROBE_ROLE_LABEL
BATCH_ANNOTATION = "mesh-auditor.dev/batch"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
DATAPLANE_MODE = "istio.io/dataplane-mode"
AUTO_MODE_SELECTOR = {"eks.amazonaws.com/compute-type": "auto"}
PLAN_ENV = "MESH_AUDITOR_PROBE_PLAN"
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "probe"
DEFAULT_IMAGE = f"ghcr.io/mesh-auditor/mesh-auditor:{__version__}"
# The plan arrives as stdin of `python -m probes --plan -` (see the module docstring).
BOOTSTRAP = (
    "import io, os, runpy, sys\n"
    f"sys.stdin = io.TextIOWrapper(io.BytesIO(os.environb[b'{PLAN_ENV}']))\n"
    f"sys.argv = ['probes', '--plan', '-', '--termination-log', '{TERMINATION_LOG}']\n"
    "runpy.run_module('probes', run_name='__main__')\n"
)


@dataclass(frozen=True, slots=True)
class PodOptions:
    """What settings decide about every probe pod (``auditor.settings.ProbeSettings``)."""

    image: str = DEFAULT_IMAGE
    node_selector: Mapping[str, str] = field(default_factory=lambda: dict(AUTO_MODE_SELECTOR))
    run_as_user: int = 65532
    active_deadline_s: int = 120
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "128Mi"


class SecretValueError(ValueError):
    """A secret header value would have to travel in a pod spec: the pod is not created."""


def by_reference(batch: ProbeBatch, plan: RunPlan) -> tuple[ProbePlan, list[dict[str, Any]]]:
    """``batch``'s wire plan with every secret header value replaced by a reference, and the
    ``env`` entries (``valueFrom.secretKeyRef``) the references need.

    A header is secret when its rules source is ``secretRef`` or ``fromEnv`` (or has a
    ``probeSecretRef``). Its real value is the one the plan's ``with-headers`` requests carry; a
    request carrying the real value plus a suffix (the near miss) gets the reference and the
    suffix; a request carrying an unrelated value (a deliberate wrong value) keeps that value.
    ``SecretValueError`` when a secret header has no Secret for probe pods.
    """
    sources = {(t.target, h.name): h.value for t in plan.targets for h in t.required_headers}
    real = _real_values(plan)
    env: dict[tuple[str, str], str] = {}
    requests = []
    for planned in batch.requests:
        wire = planned.wire
        headers, refs, suffixes = dict(wire.headers), dict(wire.header_refs), dict(wire.header_ref_suffixes)
        for name, value in wire.headers.items():
            source = sources.get((planned.target, name))
            secret_value = real.get((planned.target, name), value)
            if source is None or not _secret(source) or not value.startswith(secret_value):
                continue
            secret = source.probe_secret
            if secret is None:
                raise SecretValueError(
                    f"header {name} of {planned.target} has no Secret for probe pods (probeSecretRef)"
                )
            variable = env.setdefault((secret.name, secret.key), f"{HEADER_ENV_PREFIX}{len(env)}")
            refs[name] = variable
            if value != secret_value:
                suffixes[name] = value.removeprefix(secret_value)
            del headers[name]
        requests.append(
            wire.model_copy(update={"headers": headers, "header_refs": refs, "header_ref_suffixes": suffixes})
        )
    wire_plan = batch.wire_plan(plan.run_id, plan.marker_header).model_copy(update={"requests": tuple(requests)})
    return wire_plan, [_secret_env(variable, ProbeSecretRef(name=n, key=k)) for (n, k), variable in env.items()]


def secret_values(plan: RunPlan) -> set[str]:
    """The real values of the plan's secret headers (what no pod spec may hold)."""
    sources = {(t.target, h.name): h.value for t in plan.targets for h in t.required_headers}
    return {value for key, value in _real_values(plan).items() if key in sources and _secret(sources[key])}


def spec_strings(manifest: Mapping[str, Any]) -> set[str]:
    """Every string in a pod manifest, the plan's own strings (it is JSON in an env value) included."""
    found: set[str] = set()
    pending: list[Any] = [manifest]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            pending += [*node.keys(), *node.values()]
        elif isinstance(node, list | tuple):
            pending += node
        elif isinstance(node, str):
            found.add(node)
            if node.startswith("{"):
                with contextlib.suppress(ValueError):
                    pending.append(json.loads(node))
    return found


def _secret(source: HeaderValue) -> bool:
    return source.literal is None or source.probe_secret_ref is not None


def _real_values(plan: RunPlan) -> dict[tuple[str, str], str]:
    return {
        (r.target, name): value
        for b in plan.batches
        for r in b.requests
        if r.variant == WITH_HEADERS
        for name, value in r.wire.headers.items()
    }


def _secret_env(variable: str, secret: ProbeSecretRef) -> dict[str, Any]:
    # optional: false: a missing Secret or key keeps the pod Pending (CreateContainerConfigError),
    # which the runner reports as INCONCLUSIVE with the kubelet's reason; never an empty header.
    return {
        "name": variable,
        "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key, "optional": False}},
    }


def probe_pod(
    batch: ProbeBatch,
    plan_json: str,
    run_id: str,
    options: PodOptions,
    *,
    secret_env: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The Pod manifest for ``batch``; ``plan_json`` is its wire plan from ``by_reference`` (no
    secret value), ``secret_env`` the ``secretKeyRef`` entries its ``header_refs`` name."""
    identity = batch.identity
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"mesh-auditor-probe-{identity.role.value}-",
            "namespace": identity.namespace,
            "labels": _labels(batch, run_id),
            "annotations": {DO_NOT_DISRUPT: "true", BATCH_ANNOTATION: batch.key},
        },
        "spec": {**_pod_spec(batch, plan_json, options, secret_env), "topologySpreadConstraints": _spread(run_id)},
    }


def _labels(batch: ProbeBatch, run_id: str) -> dict[str, str]:
    labels = {MANAGED_BY: MANAGED_BY_VALUE, RUN_ID_LABEL: run_id, ROLE_LABEL: batch.identity.role.value}
    if not batch.identity.in_mesh:
        # The pod label beats an ambient namespace label (semantics §2): never captured.
        labels[DATAPLANE_MODE] = "none"
    return labels


def _spread(run_id: str) -> list[dict[str, Any]]:
    """A run's probe pods spread over nodes (#13): each node's ztunnel judges the traffic of the
    pods it runs, so pods on several nodes exercise several enforcement points. Soft
    (ScheduleAnyway): a one-node cluster still runs every probe."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {RUN_ID_LABEL: run_id}},
        }
    ]


def _pod_spec(
    batch: ProbeBatch, plan_json: str, options: PodOptions, secret_env: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "serviceAccountName": batch.identity.service_account,
        "automountServiceAccountToken": False,
        # Service links would add an environment variable per Service in the namespace.
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "activeDeadlineSeconds": options.active_deadline_s,
        "terminationGracePeriodSeconds": 5,
        "nodeSelector": dict(options.node_selector),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(plan_json, options, secret_env)],
    }


def _container(plan_json: str, options: PodOptions, secret_env: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", BOOTSTRAP],
        "env": [
            {"name": PLAN_ENV, "value": plan_json},
            # The root filesystem is read-only: no bytecode cache to write.
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            *(dict(entry) for entry in secret_env),
        ],
        "resources": {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
