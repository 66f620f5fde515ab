"""The probe pod manifest: a pure function from one batch's plan to a hardened Pod dict.

The spec satisfies ``deploy/probe-guard.yaml`` (managed-by label, no token, non-root, read-only
root filesystem, no privilege escalation, ALL capabilities dropped, no host namespaces) and
suits EKS Auto Mode (semantics §6): a node selector for Auto Mode nodes, ``do-not-disrupt`` so
consolidation does not kill a probe mid-run, no privileges Bottlerocket would refuse.

How the plan gets in: a pod has no stdin, so the plan JSON travels in the environment variable
``MESH_AUDITOR_PROBE_PLAN`` and a three-line ``python -c`` shim hands it to ``python -m probes
--plan -`` as stdin (the image needs only Python, no shell). Trade-off: the plan, header values
included, is part of the pod spec, readable by anyone who may ``get`` pods in that namespace
(the probe namespaces are the auditor's own; a control pod lives in the protected Service's
namespace, whose readers may usually read that Service's Secrets anyway). A Secret volume would
hide it better but needs the auditor to write Secrets, which its RBAC deliberately forbids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from auditor import __version__
from auditor.core.probeplan import ProbeBatch

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "mesh-auditor"
RUN_ID_LABEL = "mesh-auditor.dev/run-id"
ROLE_LABEL = "mesh-auditor.dev/role"
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


def probe_pod(batch: ProbeBatch, plan_json: str, run_id: str, options: PodOptions) -> dict[str, Any]:
    """The Pod manifest for ``batch``; ``plan_json`` is its wire plan (it may carry header values)."""
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
        "spec": _pod_spec(batch, plan_json, options),
    }


def _labels(batch: ProbeBatch, run_id: str) -> dict[str, str]:
    labels = {MANAGED_BY: MANAGED_BY_VALUE, RUN_ID_LABEL: run_id, ROLE_LABEL: batch.identity.role.value}
    if not batch.identity.in_mesh:
        # The pod label beats an ambient namespace label (semantics §2): never captured.
        labels[DATAPLANE_MODE] = "none"
    return labels


def _pod_spec(batch: ProbeBatch, plan_json: str, options: PodOptions) -> dict[str, Any]:
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
        "containers": [_container(plan_json, options)],
    }


def _container(plan_json: str, options: PodOptions) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", BOOTSTRAP],
        "env": [
            {"name": PLAN_ENV, "value": plan_json},
            # The root filesystem is read-only: no bytecode cache to write.
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
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
