"""Command line of the lab: ``python -m testrigs.lab up|down|status`` (run as ``scripts/lab ...``).

``up --manifests PATH [--manifests PATH ...] [--fault NAME ...]`` starts the lab with the
auditor's ``deploy/`` objects (namespaces, ServiceAccounts, RBAC, probe-guard), waits until the
data plane serves the manifests, writes a kubeconfig for the auditor's ServiceAccount (its path
goes to stderr and into ``status``), and prints the lab's admin kubeconfig path as the last
stdout line; ``down`` removes everything (safe to repeat); ``status`` prints JSON, exit 0 only
when healthy. ``_translate`` and ``_kubelet`` are the daemons ``up`` starts; not for people.
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
from testrigs.lab.proxy import ProxyError


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Ambient-mesh lab on this host.")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status}")
    up = commands.add_parser("up", help="start the lab with the auditor's deploy/; prints the kubeconfig path last")
    up.add_argument("--manifests", type=Path, action="append", required=True, help="file or folder; repeatable")
    up.add_argument("--fault", action="append", default=[], help=f"one of: {', '.join(sorted(FAULTS))}; repeatable")
    commands.add_parser("down", help="stop and remove everything; safe to repeat")
    commands.add_parser("status", help="JSON report; exit 0 only when healthy")
    commands.add_parser("_translate")  # daemons: no help, so not listed
    commands.add_parser("_kubelet")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "scripts/lab") -> int:
    args = _parser(prog).parse_args(argv)
    lab = Lab(args.state_dir)
    try:
        if args.command == "up":
            kubeconfig = lab.up(args.manifests, args.fault, with_auditor=True)
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
