"""Speed never changes a verdict (#16): a generated 1,000-Service audit gives the recorded output.

The recorded output (tests/fixtures/perf/audit-1k.json) was produced by the code before the
performance work (commit d88efd5) from the input ``generate_manifests`` writes; every target's
status per property is compared, and the whole JSON document by its SHA-256 (messages, evidence,
order). A deliberate change of semantics regenerates it: ``python tests/unit/test_speed_keeps_verdicts.py``.
The input mixes passes with drift (PERMISSIVE mTLS, namespaces outside the mesh, missing
waypoints, wrong principals, missing header rules, Services without workloads) so that every
kind of finding is on the path the optimisations touch.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from auditor.cli import main

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "perf" / "audit-1k.json"
SERVICES = 1000
PER_NAMESPACE = 50


def _service(ns: str, name: str, i: int) -> list[dict[str, Any]]:
    labels = {"app": name}
    protected = i % 10 == 0
    service_labels = {**labels, **({"istio.io/use-waypoint": f"{name}-wp"} if protected and i % 30 != 10 else {})}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": service_labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    ]
    if i % 13 != 5:
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "app"}]},
                    },
                },
            }
        )
    if i % 11 != 2:
        mode = "PERMISSIVE" if i % 7 == 1 else "STRICT"
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": labels}, "mtls": {"mode": mode}},
            }
        )
    principal = f"cluster.local/ns/{ns}/sa/{'intruder' if i % 30 == 20 else 'client'}"
    rule: dict[str, Any] = {"from": [{"source": {"principals": [principal]}}]}
    if protected:
        if i % 40 != 0:
            rule["when"] = [{"key": "request.headers[x-token]", "values": ["t"]}]
        if i % 30 != 10:
            docs.append(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "metadata": {"name": f"{name}-wp", "namespace": ns, "labels": {"istio.io/waypoint-for": "service"}},
                    "spec": {
                        "gatewayClassName": "istio-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                    },
                }
            )
        target: dict[str, Any] = {
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": f"{name}-wp"}]
        }
    else:
        target = {"selector": {"matchLabels": labels}}
    if i % 17 != 3:
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": {**target, "rules": [rule]},
            }
        )
    return docs


def generate_manifests(directory: Path) -> tuple[Path, Path]:
    """Write the 1,000-Service input and its rules; return their paths."""
    namespaces = [f"ns-{n:02d}" for n in range(SERVICES // PER_NAMESPACE)]
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {} if n % 5 == 3 else {"istio.io/dataplane-mode": "ambient"}},
        }
        for n, ns in enumerate(namespaces)
    ]
    protected = []
    for i in range(SERVICES):
        ns, name = namespaces[i // PER_NAMESPACE], f"svc-{i:04d}"
        docs += _service(ns, name, i)
        if i % 10 == 0:
            protected.append(
                {
                    "name": name,
                    "namespace": ns,
                    "allowedPrincipals": [f"cluster.local/ns/{ns}/sa/client"],
                    "waypoint": {"name": f"{name}-wp"},
                    "requiredHeaders": [{"name": "x-token", "value": {"literal": "t"}}],
                }
            )
    manifests, rules = directory / "services.yaml", directory / "rules.yaml"
    manifests.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    scope = [{"namespace": ns} for ns in namespaces] + [{"namespace": "empty-namespace"}]
    posture = {
        "apiVersion": "mesh-auditor.dev/v1alpha1",
        "kind": "MeshPosture",
        "metadata": {"name": "speed"},
        "spec": {"scope": scope, "protectedServices": protected},
    }
    rules.write_text(yaml.safe_dump(posture), encoding="utf-8")
    return manifests, rules


def audit(directory: Path) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON document of ``auditor check`` on the generated input (paths made relative)."""
    manifests, rules = generate_manifests(directory)
    out = io.StringIO()
    code = main(["check", "--manifests", str(manifests), "--rules", str(rules), "--output", "json"], stdout=out)
    document = json.loads(out.getvalue())
    document["summary"]["inputs"].update(manifests=["services.yaml"], rules=["rules.yaml"])
    document["summary"]["inputs"].pop("istio_semantics", None)  # which Istio, not a verdict (#11)
    return code, document


def recorded_form(code: int, document: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(document, sort_keys=True)
    return {
        "exit_code": code,
        "counts": document["summary"]["counts"],
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "by_target": document["summary"]["by_target"],
    }


def test_generated_1k_audit_is_identical_to_the_recorded_output(tmp_path: Path) -> None:
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))
    actual = recorded_form(*audit(tmp_path))
    # The input really mixes outcomes, so the comparison covers failures and errors too.
    assert {status for status, count in recorded["counts"].items() if count} >= {"pass", "fail", "error"}
    assert actual["exit_code"] == recorded["exit_code"]
    assert actual["counts"] == recorded["counts"]
    assert actual["by_target"] == recorded["by_target"]
    assert actual["sha256"] == recorded["sha256"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        form = recorded_form(*audit(Path(tmp)))
    RECORDED.write_text(json.dumps(form, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    sys.stdout.write(f"recorded {RECORDED}: {form['counts']}\n")
