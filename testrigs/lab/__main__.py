"""Command line of the lab: ``python -m testrigs.lab up|down|status|verify|...`` (run as ``scripts/lab ...``).

``up --manifests PATH [--manifests PATH ...] [--fault NAME ...]`` starts the lab on the **real data
plane** (#12, ``testrigs.lab.realnode``): one node with istiod, the CNI-agent stand-in and the real
ztunnel built from source (``build`` first), the lab's Envoy waypoints, the auditor's ``deploy/``
and the control Role of namespace default, and the probe kubelet; it waits until ztunnel holds every
ambient pod, writes a kubeconfig for the auditor's ServiceAccount (its path goes to stderr) and
prints the admin kubeconfig path as the last stdout line. Its faults are the real data plane's:
``ztunnel-down``, ``uncaptured-pod=NS/NAME``, ``ztunnel-restart[=S]``, ``istiod-stale`` (a bad one
exits 2 before anything starts). ``up --emulated [--nodes N]`` starts the Envoy emulation instead
(the project's translator plays ztunnel; its planted faults, e.g. ``l4-allow-all``, exist only
there). ``down`` removes whatever runs in the state directory (both default ones without
``--state-dir``; safe to repeat); ``status`` prints JSON (``data_plane``: ``real`` or ``emulated``),
exit 0 only when healthy.

``build`` builds ztunnel from its pinned source archive (``--ztunnel-source``). The explicit forms
of the real node's commands: ``real-up`` (``up`` without the auditor unless ``--with-auditor``),
``real-sync`` (picks up new pods and gives the waypoints the current policies), ``real-status``
(lists the ztunnel, waypoint and kubelet processes) and ``real-down`` (default state dir
``/tmp/malab-real``; the emulated lab's is ``/tmp/malab``).

``verify --manifests PATH --rules FILE [--output json] [--keep]`` (``testrigs.lab.verify``): the
static audit's witnesses sent as real traffic on the real node (reused when one runs, else brought
up and taken down unless ``--keep``); exit 0 agree, 1 a disagreement, 2 bad input, 3 inconclusive.
``_translate`` and ``_kubelet`` are the emulated lab's daemons; not for people.
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

REAL_FAULTS = "ztunnel-down, uncaptured-pod=NS/NAME, ztunnel-restart[=S], istiod-stale"


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Ambient-mesh lab on this host.")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: /tmp/malab-real (the real data plane), /tmp/malab (--emulated); down and status: both",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{up,down,status,build,real-up,real-sync,real-down,real-status,verify}"
    )
    up = commands.add_parser(
        "up",
        help="start the lab (real ztunnel; --emulated: the Envoy emulation) with the auditor; prints the kubeconfig",
    )
    up.add_argument("--manifests", type=Path, action="append", required=True, help="file or folder; repeatable")
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        help=f"real data plane: {REAL_FAULTS}; --emulated: {', '.join(sorted(FAULTS))}; repeatable",
    )
    up.add_argument("--emulated", action="store_true", help="the Envoy emulation of ztunnel (the translator's faults)")
    up.add_argument(
        "--nodes", type=int, default=None, help=f"--emulated only: lab nodes (1-16); default {DEFAULT_NODES}"
    )
    commands.add_parser("down", help="stop and remove whatever runs in the state directory; safe to repeat")
    commands.add_parser("status", help="JSON report (data_plane: real or emulated); exit 0 only when healthy")
    build = commands.add_parser("build", help="build the real ztunnel with cargo (cached by the archive's sha256)")
    build.add_argument("--ztunnel-source", type=Path, default=None, help="the source archive (sha256-pinned)")
    real_up = commands.add_parser("real-up", help="one node on the real ztunnel and istiod; prints the kubeconfig")
    real_up.add_argument("--manifests", type=Path, action="append", required=True, help="file or folder; repeatable")
    real_up.add_argument(
        "--fault",
        action="append",
        default=[],
        help=f"one of: {REAL_FAULTS}",
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
    if args.command in ("build", "verify", "up") and not getattr(args, "emulated", False):
        return _real(args)
    if args.command.startswith("real-"):
        return _real(args)
    if args.command in ("down", "status") and _is_real(args.state_dir):
        return _real(args)
    lab = Lab(args.state_dir or DEFAULT_STATE_DIR)
    try:
        if args.command == "up":
            nodes = DEFAULT_NODES if args.nodes is None else args.nodes
            kubeconfig = lab.up(args.manifests, args.fault, with_auditor=True, nodes=nodes)
            print(f"lab: the auditor's ServiceAccount kubeconfig: {lab.auditor_kubeconfig}", file=sys.stderr)
            print(kubeconfig, flush=True)
        elif args.command == "down":
            lab.down()
            if args.state_dir is None:  # both default labs: the real node's too (nothing there is fine)
                return _real(args)
        elif args.command == "status":
            report = {"data_plane": "emulated", **lab.status()}
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


def _is_real(state_dir: Path | None) -> bool:
    """Whether ``down``/``status`` are about a real node: one runs there (``realnode.json``), or no
    emulated lab runs in the default directory while the real node's default one exists."""
    from testrigs.lab import realnode  # noqa: PLC0415 - the emulated lab's commands never need it

    if state_dir is not None:
        return (state_dir / "realnode.json").exists()
    return not (DEFAULT_STATE_DIR / "lab.json").exists() and realnode.DEFAULT_STATE_DIR.exists()


def _real(args: argparse.Namespace) -> int:
    from testrigs.devtools import ztunnel  # noqa: PLC0415 - only these commands need cargo's side
    from testrigs.lab import realnode  # noqa: PLC0415 - the emulated lab's commands never need it

    state_dir = args.state_dir or realnode.DEFAULT_STATE_DIR
    node = realnode.RealNode(state_dir)
    try:
        if args.command == "verify":
            return _verify(args, state_dir)
        if args.command == "build":
            print(ztunnel.build(args.ztunnel_source).directory)
        elif args.command in ("up", "real-up"):
            emulated_only = sorted({f.partition("=")[0] for f in args.fault} & FAULTS.keys())
            if args.command == "up" and emulated_only:
                print(
                    f"lab: error: --fault {', '.join(emulated_only)}: planted by the emulated lab's translator, "
                    "not a fault of the real data plane (fix: add --emulated; the real data plane's forms of "
                    "these faults are in docs/lab.md)",
                    file=sys.stderr,
                )
                return 2
            if args.command == "up" and args.nodes not in (None, 1):
                print("lab: error: --nodes: the real data plane runs one node (fix: add --emulated)", file=sys.stderr)
                return 2
            try:
                faults = realnode.parse_faults(args.fault)
            except realnode.FaultError as error:
                print(f"lab: error: --fault: {error}", file=sys.stderr)
                return 2
            node.up(faults)
            files = [f for path in args.manifests for f in (sorted(path.glob("*.yaml")) if path.is_dir() else [path])]
            node.kubectl("apply", "-f", "-", stdin="\n---\n".join(f.read_text() for f in files))
            node.settle()
            if args.command == "up" or args.with_auditor:
                kubeconfig = node.deploy_auditor(control_roles=(realnode.CONTROL_ROLE,))
                node.start_kubelet()
                print(f"lab: the auditor's ServiceAccount kubeconfig: {kubeconfig}", file=sys.stderr)
            node.apply_faults()
            print(node.kubeconfig, flush=True)
        elif args.command == "real-sync":
            node.sync_pods()
        elif args.command in ("down", "real-down"):
            node.down()
        else:
            report = {"data_plane": "real", **node.status()}
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
