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
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.adapters.k8s.watcher import SnapshotWatcher, WatchTiming  # noqa: E402 - after the path setup
from auditor.adapters.rules.loader import load_rules  # noqa: E402
from auditor.core.audit import run_static_audit  # noqa: E402
from auditor.core.incremental import IncrementalAudit  # noqa: E402
from auditor.core.posture import Posture  # noqa: E402
from testrigs.devtools import controlplane  # noqa: E402

BATCH = 1500  # documents per kubectl apply


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
    arrived: list[float] = []
    seen = threading.Event()

    def on_change() -> None:
        arrived.append(time.perf_counter())
        seen.set()

    # No periodic relist while measuring: a relist re-audits everything (by design), which is not
    # the path measured here.
    watcher = SnapshotWatcher(api, on_change=on_change, timing=WatchTiming(resync=3600.0))
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
    _incremental(watcher, posture, Path(kubeconfig), arrived, seen)
    watcher.stop()


def _incremental(
    watcher: SnapshotWatcher, posture: Posture, kubeconfig: Path, arrived: list[float], seen: threading.Event
) -> None:
    """Event to verdict (#16): one real change through kube-apiserver, the watch event, and the
    incremental re-evaluation of what it reaches; checked against a full audit of the snapshot."""
    kube = controlplane.KubeAPI(kubeconfig, controlplane.build().kubectl)
    start = watcher.changes_since(0)
    if start.objects is None:
        raise SystemExit("the watcher gave no objects")
    started = time.process_time()
    audit = IncrementalAudit(start.objects, posture, {}, live=True)
    print(json.dumps({"incremental_initial_cpu_s": round(time.process_time() - started, 2)}))
    cursor = start.cursor
    edits = [
        (
            "PeerAuthentication to PERMISSIVE",
            [
                "patch",
                "peerauthentication",
                "svc-00105",
                "--namespace=bench-001",
                "--type=merge",
                "--patch",
                '{"spec":{"mtls":{"mode":"PERMISSIVE"}}}',
            ],
        ),
        (
            "Deployment opts out of ambient",
            [
                "patch",
                "deployment",
                "svc-00106",
                "--namespace=bench-001",
                "--type=merge",
                "--patch",
                '{"spec":{"template":{"metadata":{"labels":{"istio.io/dataplane-mode":"none"}}}}}',
            ],
        ),
        ("Service deleted", ["delete", "service", "svc-00107", "--namespace=bench-001"]),
    ]
    for label, command in edits:
        seen.clear()
        arrived.clear()
        issued = time.perf_counter()
        kube.kubectl(*command)
        if not seen.wait(60):
            raise SystemExit(f"{label}: no watch event")
        delta = watcher.changes_since(cursor)
        thread_cpu = time.thread_time()
        if delta.changes is None:  # a relist or a failed watch: everything, as the daemon does
            if delta.objects is None:
                raise SystemExit("the watcher gave neither changes nor objects")
            audit = IncrementalAudit(delta.objects, posture, {}, live=True)
            update = audit.apply(())
        else:
            update = audit.apply(delta.changes)
        cpu = time.thread_time() - thread_cpu
        verdict = time.perf_counter()
        cursor = delta.cursor
        same = update.findings == run_static_audit(watcher.snapshot(), posture, {})
        print(
            json.dumps(
                {
                    "event": label,
                    "changes": "relist" if delta.changes is None else len(delta.changes),
                    "event_to_verdict_ms": round((verdict - arrived[0]) * 1000, 1),
                    "reevaluation_cpu_ms": round(cpu * 1000, 1),
                    "kubectl_to_verdict_ms": round((verdict - issued) * 1000, 1),
                    "namespaces": sorted(update.namespaces),
                    "same_as_full_audit": same,
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "cp"
        kubeconfig = controlplane.up(state)
        try:
            kube = controlplane.KubeAPI(kubeconfig, controlplane.build().kubectl)
            documents = _manifests(args.services)
            started = time.perf_counter()
            # In batches: one kubectl call per batch stays inside its 120 s timeout on a loaded machine.
            for first in range(0, len(documents), BATCH):
                manifests = Path(tmp) / f"bench-{first}.yaml"
                manifests.write_text(yaml.safe_dump_all(documents[first : first + BATCH]), encoding="utf-8")
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
