#!/usr/bin/env python3
"""Benchmark of the offline static audit (not a test): generated manifests of N Services.

Each Service has a Deployment, a ServiceAccount and two policies (a workload PeerAuthentication
and a selector AuthorizationPolicy), 100 Services per namespace; one Service in 100 is protected
by the rules with a waypoint and a header policy. Each size is audited by the real CLI in a child
process; the script prints wall time and the child's peak RSS. Side by side, the same file is
given to ``istioctl analyze -A --use-kube=false`` (the istioctl that ``scripts/controlplane build``
builds from tools/istio; ``--no-istioctl`` skips it), with its wall time, peak RSS and the number
of messages it reports. Usage:

    python scripts/bench_static.py [--sizes 1000 10000] [--no-istioctl]
    python scripts/bench_static.py --paired [--sizes 100 1000 10000 100000]

``--paired`` runs the auditor and ``istioctl analyze -A --use-kube=false`` on the same files, one
after the other per size, and prints wall, CPU (user+sys) and peak RSS of each child (from
``wait4``) and the auditor/istioctl ratios, with the load average before each size. Inputs over
the auditor's 64 MiB input limit (100k Services) are audited with the limit raised for the
benchmark only, and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PER_NAMESPACE = 100
MAX_FILE_CHARS = 64 * 1024 * 1024  # auditor.adapters.yaml_io.MAX_FILE_CHARS (not imported: no auditor start-up here)
PROTECTED_EVERY = 100


def _service_docs(ns: str, name: str, protected: bool) -> list[dict[str, object]]:
    labels = {"app.kubernetes.io/name": name}
    service_labels = {**labels, **({"istio.io/use-waypoint": f"{name}-waypoint"} if protected else {})}
    docs: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": service_labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}],
                    },
                },
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": labels}, "mtls": {"mode": "STRICT"}},
        },
    ]
    if protected:
        docs += _waypoint_docs(ns, name)
    else:
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/client"]}}]}],
                },
            }
        )
    return docs


def _waypoint_docs(ns: str, name: str) -> list[dict[str, object]]:
    return [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": f"{name}-waypoint", "namespace": ns, "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": f"{name}-waypoint"}],
                "rules": [
                    {
                        "from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/client"]}}],
                        "when": [{"key": "request.headers[x-token]", "values": ["t"]}],
                    }
                ],
            },
        },
    ]


def generate(size: int, directory: Path) -> tuple[Path, Path]:
    documents: list[dict[str, object]] = []
    namespaces = sorted({f"ns-{i // PER_NAMESPACE:04d}" for i in range(size)})
    documents += [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}},
        }
        for ns in namespaces
    ]
    documents.append(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }
    )
    protected = []
    for i in range(size):
        ns, name = f"ns-{i // PER_NAMESPACE:04d}", f"svc-{i:05d}"
        is_protected = i % PROTECTED_EVERY == 0
        documents += _service_docs(ns, name, is_protected)
        if is_protected:
            protected.append(
                {
                    "name": name,
                    "namespace": ns,
                    "allowedPrincipals": [f"cluster.local/ns/{ns}/sa/client"],
                    "waypoint": {"name": f"{name}-waypoint"},
                    "requiredHeaders": [{"name": "x-token", "value": {"literal": "t"}}],
                }
            )
    manifests = directory / f"services-{size}.yaml"
    # libyaml's emitter when available: the pure-Python one takes minutes at 100k Services.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    manifests.write_text(yaml.dump_all(documents, Dumper=dumper, sort_keys=False), encoding="utf-8")
    rules = directory / f"rules-{size}.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "mesh-auditor.dev/v1alpha1",
                "kind": "MeshPosture",
                "metadata": {"name": "bench"},
                "spec": {"scope": [{"namespace": ns} for ns in namespaces], "protectedServices": protected},
            }
        ),
        encoding="utf-8",
    )
    return manifests, rules


def measure(manifests: Path, rules: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MiB and exit code of one `auditor check` child process."""
    command = [
        sys.executable,
        "-m",
        "auditor",
        "check",
        "--manifests",
        str(manifests),
        "--rules",
        str(rules),
        "--output",
        "json",
    ]
    started = time.perf_counter()
    # A fresh child per size, so ru_maxrss of RUSAGE_CHILDREN is that child's peak.
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.returncode not in {0, 1, 3}:
        raise SystemExit(f"auditor failed ({result.returncode}): {result.stderr}")
    return elapsed, peak_mib, result.returncode


def measure_istioctl(istioctl: Path, manifests: Path) -> tuple[float, float, int, int]:
    """Wall seconds, peak RSS in MiB, exit code and message count of `istioctl analyze` on the file.

    ``-A``: every namespace (without it only ``default`` is analysed); ``--use-kube=false``: the
    files only, no cluster. Exit 0 means no Error message, 79 that there was one.
    """
    command = [str(istioctl), "analyze", "-A", "--use-kube=false", "--output=json", str(manifests)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.returncode not in {0, 79}:
        raise SystemExit(f"istioctl analyze failed ({result.returncode}): {result.stderr[-2000:]}")
    messages = json.loads(result.stdout or "[]")
    return elapsed, peak_mib, result.returncode, len(messages)


def _istioctl() -> Path:
    # The binary scripts/controlplane build put in the cache (built on first use if missing).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from testrigs.devtools import istio  # noqa: PLC0415 - after the repository is on sys.path

    return istio.build().istioctl


def _run_child(command: list[str], output: Path | None = None) -> tuple[float, float, float, int]:
    """Wall s, CPU s (user+sys), peak RSS MiB and exit code of one child, from its own rusage."""
    started = time.perf_counter()
    with output.open("wb") if output is not None else open(os.devnull, "wb") as sink:  # noqa: PTH123 - os.devnull
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, child.returncode


def _auditor_command(manifests: Path, rules: Path) -> tuple[list[str], bool]:
    check = ["check", "--manifests", str(manifests), "--rules", str(rules), "--output", "json"]
    if manifests.stat().st_size < MAX_FILE_CHARS:
        return [sys.executable, "-m", "auditor", *check], False
    # Over the input limit: the same CLI in a child whose limit is raised for the benchmark only.
    code = (
        "import sys, auditor.adapters.manifests.reader as r; r.MAX_FILE_CHARS = 1 << 30; "
        "from auditor.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", code, *check], True


def paired(sizes: list[int]) -> None:
    """Print the auditor-versus-istioctl table (docs/benchmarks.md) for ``sizes`` Services."""
    istioctl = str(_istioctl())
    print(
        "| Services | load (1 min) | auditor wall / CPU / peak RSS | istioctl wall / CPU / peak RSS "
        "| wall ratio | CPU ratio |"
    )
    print("|---:|---:|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            manifests, rules = generate(size, Path(tmp))
            load = os.getloadavg()[0]
            command, raised = _auditor_command(manifests, rules)
            report = Path(tmp) / "report.json"
            a_wall, a_cpu, a_rss, a_code = _run_child(command, report)
            # Exit 1 is also Python's for an uncaught exception: a real audit wrote its report.
            with report.open("rb") as written:
                started_right = written.read(20) == b'{"schema_version": 1'
            if a_code not in {0, 1, 3} or not started_right:
                raise SystemExit(f"auditor failed with exit code {a_code} at {size} Services")
            report.unlink()
            i_wall, i_cpu, i_rss, _ = _run_child([istioctl, "analyze", "-A", "--use-kube=false", str(manifests)])
            mark = " (input limit raised)" if raised else ""
            print(
                f"| {size:,} | {load:.1f} | {a_wall:.2f} s / {a_cpu:.2f} s / {a_rss:.0f} MiB{mark} "
                f"| {i_wall:.2f} s / {i_cpu:.2f} s / {i_rss:.0f} MiB | {a_wall / i_wall:.2f} | {a_cpu / i_cpu:.2f} |",
                flush=True,
            )
            manifests.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--no-istioctl", action="store_true", help="skip istioctl analyze")
    parser.add_argument("--paired", action="store_true", help="the auditor-versus-istioctl table (wall, CPU, RSS)")
    args = parser.parse_args()
    if args.paired:
        paired(args.sizes or [100, 1000, 10000, 100000])
        return
    args.sizes = args.sizes or [1000, 10000]
    istioctl = None if args.no_istioctl else _istioctl()
    header = f"{'services':>9} {'policies':>9} {'manifest MiB':>13} {'wall s':>8} {'peak RSS MiB':>13} {'exit':>5}"
    if istioctl:
        header += f" | istioctl {'wall s':>8} {'peak RSS MiB':>13} {'exit':>5} {'messages':>9}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            manifests, rules = generate(size, Path(tmp))
            # Each size in its own interpreter, so one size's peak does not mask the next's.
            child = [sys.executable, __file__, "--one", str(manifests), str(rules)]
            line = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip()
            if istioctl:
                child = [sys.executable, __file__, "--istioctl", str(istioctl), str(manifests)]
                line += (
                    " |          " + subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip()
                )
            mib = manifests.stat().st_size / 2**20
            print(f"{size:>9} {2 * size:>9} {mib:>13.1f} {line}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        wall, rss, code = measure(Path(sys.argv[2]), Path(sys.argv[3]))
        print(f"{wall:>8.2f} {rss:>13.0f} {code:>5}")
    elif len(sys.argv) == 4 and sys.argv[1] == "--istioctl":
        wall, rss, code, count = measure_istioctl(Path(sys.argv[2]), Path(sys.argv[3]))
        print(f"{wall:>8.2f} {rss:>13.0f} {code:>5} {count:>9}")
    else:
        main()
