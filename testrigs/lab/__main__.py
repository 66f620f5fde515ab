"""Command line of the lab: ``python -m testrigs.lab up|down|status`` (run as ``scripts/lab ...``).

``up --manifests PATH [--manifests PATH ...] [--fault NAME ...] [--nodes N]`` starts the lab with the
auditor's ``deploy/`` objects (namespaces, ServiceAccounts, RBAC, probe-guard), waits until the
data plane serves the manifests, writes a kubeconfig for the auditor's ServiceAccount (its path
goes to stderr and into ``status``), and prints the lab's admin kubeconfig path as the last
stdout line; ``down`` removes everything (safe to repeat); ``status`` prints JSON, exit 0 only
when healthy. ``_translate`` and ``_kubelet`` are the daemons ``up`` starts; not for people.

The real data plane (#12, ``testrigs.lab.realnode``; not yet the default): ``build`` builds
ztunnel from its pinned source archive (``--ztunnel-source``); ``real-up --manifests PATH`` starts
one node with istiod, the CNI-agent stand-in and the real ztunnel, applies the manifests and waits
until ztunnel holds every ambient pod (``--fault``: ``ztunnel-down``, ``uncaptured-pod=NS/NAME``,
``ztunnel-restart[=S]``, ``istiod-stale``; a bad one exits 2 before anything starts; ``--with-auditor``
also deploys the auditor's ``deploy/`` and the control Role of namespace default, starts the probe
kubelet, and prints the auditor's kubeconfig path to stderr, so ``auditor check --active`` runs
against the node); ``real-sync`` picks up new pods and gives the waypoints the current policies;
``real-status`` (JSON, lists the ztunnel, waypoint and kubelet processes) and ``real-down``
(default state dir ``/tmp/malab-real``).

``verify --manifests PATH --rules FILE [--output json] [--keep]`` (``testrigs.lab.verify``): the
static audit's witnesses sent as real traffic on the real node (reused when one runs, else brought
up and taken down unless ``--keep``); exit 0 agree, 1 a disagreement, 2 bad input, 3 inconclusive.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from testrigs.devtools.controlplane import ControlPlaneError
from testrigs.lab.image import ImageError
from testrigs.lab.lab import DEFAULT_STATE_DIR, FAULTS, Lab, LabError
from testrigs.lab.manifests import ManifestError
from testrigs.lab.netns import NetnsError
from testrigs.lab.nodes import DEFAULT_NODES
from testrigs.lab.proxy import ProxyError


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Ambient-mesh lab on this host.")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{up,down,status,build,real-up,real-sync,real-down,real-status,verify}"
    )
    up = commands.add_parser("up", help="start the lab with the auditor's deploy/; prints the kubeconfig path last")
    up.add_argument("--manifests", type=Path, action="append", required=True, help="file or folder; repeatable")
    up.add_argument("--fault", action="append", default=[], help=f"one of: {', '.join(sorted(FAULTS))}; repeatable")
    up.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="lab nodes (1-16); default: %(default)s")
    commands.add_parser("down", help="stop and remove everything; safe to repeat")
    commands.add_parser("status", help="JSON report; exit 0 only when healthy")
    build = commands.add_parser("build", help="build the real ztunnel with cargo (cached by the archive's sha256)")
    build.add_argument("--ztunnel-source", type=Path, default=None, help="the source archive (sha256-pinned)")
    real_up = commands.add_parser("real-up", help="one node on the real ztunnel and istiod; prints the kubeconfig")
    real_up.add_argument("--manifests", type=Path, action="append", required=True, help="file or folder; repeatable")
    real_up.add_argument(
        "--fault",
        action="append",
        default=[],
        help="one of: ztunnel-down, uncaptured-pod=NS/NAME, ztunnel-restart[=S], istiod-stale",
    )
    real_up.add_argument(
        "--with-auditor",
        action="store_true",
        help="also deploy the auditor (deploy/ and the control Role of namespace default) and start the probe "
        "kubelet, so 'auditor check --active' runs against the node; its kubeconfig path goes to stderr",
    )
    commands.add_parser("real-sync", help="pick up new pods and give the waypoints the current policies")
    commands.add_parser("real-down", help="stop and remove the real-ztunnel node; safe to repeat")
    commands.add_parser("real-status", help="JSON report of the real-ztunnel node; exit 0 only when ztunnel runs")
    verify = commands.add_parser("verify", help="send the static audit's witnesses as traffic on the real node")
    verify.add_argument("--manifests", type=Path, action="append", required=True, help="file or folder; repeatable")
    verify.add_argument("--rules", type=Path, action="append", required=True, help="rules file; repeatable")
    verify.add_argument("--output", choices=("text", "json"), default="text")
    verify.add_argument("--keep", action="store_true", help="leave a node verify started running")
    commands.add_parser("_translate")  # daemons: no help, so not listed
    commands.add_parser("_kubelet")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "scripts/lab") -> int:
    args = _parser(prog).parse_args(argv)
    lab = Lab(args.state_dir)
    try:
        if args.command == "build" or args.command.startswith("real-") or args.command == "verify":
            return _real(args)
        if args.command == "up":
            kubeconfig = lab.up(args.manifests, args.fault, with_auditor=True, nodes=args.nodes)
            print(f"lab: the auditor's ServiceAccount kubeconfig: {lab.auditor_kubeconfig}", file=sys.stderr)
            print(kubeconfig, flush=True)
        elif args.command == "down":
            lab.down()
        elif args.command == "status":
            report = lab.status()
            print(json.dumps(report, indent=2))
            return 0 if report.get("healthy") else 1
        elif args.command == "_kubelet":
            from testrigs.lab import kubelet  # noqa: PLC0415 - only the daemon needs the executor

            return kubelet.run(lab)
        else:
            return _translate(lab)
    except (LabError, ManifestError, NetnsError, ProxyError, ControlPlaneError, ImageError) as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1
    return 0


def _real(args: argparse.Namespace) -> int:
    from testrigs.devtools import ztunnel  # noqa: PLC0415 - only these commands need cargo's side
    from testrigs.lab import realnode  # noqa: PLC0415

    state_dir = realnode.DEFAULT_STATE_DIR if args.state_dir == DEFAULT_STATE_DIR else args.state_dir
    node = realnode.RealNode(state_dir)
    try:
        if args.command == "verify":
            return _verify(args, state_dir)
        if args.command == "build":
            print(ztunnel.build(args.ztunnel_source).directory)
        elif args.command == "real-up":
            try:
                faults = realnode.parse_faults(args.fault)
            except realnode.FaultError as error:
                print(f"lab: error: --fault: {error}", file=sys.stderr)
                return 2
            node.up(faults)
            files = [f for path in args.manifests for f in (sorted(path.glob("*.yaml")) if path.is_dir() else [path])]
            node.kubectl("apply", "-f", "-", stdin="\n---\n".join(f.read_text() for f in files))
            node.settle()
            if args.with_auditor:
                kubeconfig = node.deploy_auditor(control_roles=(realnode.CONTROL_ROLE,))
                node.start_kubelet()
                print(f"lab: the auditor's ServiceAccount kubeconfig: {kubeconfig}", file=sys.stderr)
            node.apply_faults()
            print(node.kubeconfig, flush=True)
        elif args.command == "real-sync":
            node.sync_pods()
        elif args.command == "real-down":
            node.down()
        else:
            report = node.status()
            print(json.dumps(report, indent=2))
            return 0 if any(z["running"] for z in report.get("ztunnel") or []) else 1
    except (realnode.RealNodeError, NetnsError, ControlPlaneError, ImageError) as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace, state_dir: Path) -> int:
    from testrigs.lab import verify  # noqa: PLC0415 - only this command runs the static audit's dump

    missing = [str(p) for p in [*args.manifests, *args.rules] if not p.exists()]
    if missing:
        print(
            f"lab: error: no such file: {', '.join(missing)} (fix: give existing --manifests/--rules)", file=sys.stderr
        )
        return verify.EXIT_BAD_INPUT
    try:
        report = verify.verify(state_dir, args.manifests, args.rules, keep=args.keep)
    except verify.VerifyInputError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return verify.EXIT_BAD_INPUT
    print(json.dumps(report.as_dict(), indent=2) if args.output == "json" else report.text())
    return report.exit_code


def _translate(lab: Lab) -> int:
    from testrigs.lab import translator  # noqa: PLC0415 - only the daemon needs the kubernetes client

    record = lab.load()
    if record is None:
        return 1
    # reconcile() re-reads the API server under the lab's lock: never an older snapshot than the
    # kubelet's or a test's (the translator's own list only tells that something changed).
    translator.run(Path(record.kubeconfig), lambda _objects: lab.reconcile(), lab.record_path.exists)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
