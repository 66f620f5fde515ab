#!/usr/bin/env python3
"""Daemon figures (not a test): memory while watching 5,000 Services, and one audit cycle.

Starts its own control plane (kube-apiserver + etcd), creates N Services (headless: the test
control plane's Service CIDR is small) with a Deployment and a PeerAuthentication each across
N/100 namespaces, then, in a fresh child process, starts the
watch-based snapshot, waits for it to sync, runs one static audit, and reports the time to sync,
the audit cycle's duration and the process's RSS. Usage: python scripts/bench_daemon.py [--services 5000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.adapters.k8s.watcher import SnapshotWatcher  # noqa: E402 - after the path setup
from auditor.adapters.rules.loader import load_rules  # noqa: E402
from auditor.core.audit import run_static_audit  # noqa: E402
from testrigs.devtools import controlplane  # noqa: E402


def _manifests(services: int) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for ns in sorted({f"bench-{i // 100:03d}" for i in range(services)}):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}},
            }
        )
    for i in range(services):
        ns, name, labels = f"bench-{i // 100:03d}", f"svc-{i:05d}", {"app": f"svc-{i:05d}"}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]},
                    },
                },
            }
        )
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": labels}, "mtls": {"mode": "STRICT"}},
            }
        )
    return docs


def _child(kubeconfig: str, rules: str) -> None:
    api = controlplane.KubeAPI(Path(kubeconfig), Path("kubectl")).new_client()
    watcher = SnapshotWatcher(api)
    started = time.perf_counter()
    watcher.start()
    if not watcher.wait_synced(600):
        raise SystemExit("never synced")
    synced = time.perf_counter() - started
    posture = load_rules([rules])
    started = time.perf_counter()
    findings = run_static_audit(watcher.snapshot(), posture, {})
    cycle = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "services": len(watcher.snapshot().services),
                "sync_s": round(synced, 2),
                "cycle_s": round(cycle, 2),
                "findings": len(findings),
                "peak_rss_mib": round(rss),
            }
        )
    )
    watcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "cp"
        kubeconfig = controlplane.up(state)
        try:
            kube = controlplane.KubeAPI(kubeconfig, controlplane.build().kubectl)
            manifests = Path(tmp) / "bench.yaml"
            manifests.write_text(yaml.safe_dump_all(_manifests(args.services)), encoding="utf-8")
            started = time.perf_counter()
            kube.kubectl("apply", "--server-side", f"--filename={manifests}")
            took = time.perf_counter() - started
            print(
                f"created {args.services} Services (+Deployments, PeerAuthentications) in {took:.0f} s", file=sys.stderr
            )
            namespaces = sorted({f"bench-{i // 100:03d}" for i in range(args.services)})
            rules = Path(tmp) / "rules.yaml"
            rules.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "mesh-auditor.dev/v1alpha1",
                        "kind": "MeshPosture",
                        "metadata": {"name": "bench"},
                        "spec": {"scope": [{"namespace": ns} for ns in namespaces]},
                    }
                ),
                encoding="utf-8",
            )
            result = subprocess.run(
                [sys.executable, __file__, "--child", str(kubeconfig), str(rules)],
                capture_output=True,
                text=True,
                check=True,
            )
            print(result.stdout.strip())
        finally:
            controlplane.down(state)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
