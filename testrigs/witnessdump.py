"""The static audit's findings and witnesses as JSON: ``python -m testrigs.witnessdump --manifests M --rules R``.

Role: the process boundary between the auditor and the lab. ``testrigs.lab`` never imports the
auditor it checks (an import-linter contract); ``scripts/lab verify`` (``testrigs.lab.verify``)
runs this module as a subprocess to learn what the static audit decided, then sends each witness
as real traffic. Reads the input exactly as ``auditor check --manifests`` does (``read_manifests``,
``load_rules``, ``resolve_header_values`` with the environment and the manifests' Secrets).

Prints one JSON document on stdout: ``{"findings": [{"target", "check", "property", "status",
"message"}], "witnesses": [Witness.as_dict(with_values=True)]}``: header values are included
(the lab must send them); the caller never prints them. Exit 0, or 2 with ``auditor``'s one-line
error on stderr for bad input (a file, field and fix), nothing printed on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules, resolve_header_values
from auditor.core.audit import run_static_audit
from auditor.core.checks.witnessplan import plan_witnesses
from auditor.errors import InputError

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testrigs.witnessdump")
    parser.add_argument("--manifests", action="append", required=True)
    parser.add_argument("--rules", action="append", required=True)
    args = parser.parse_args(argv)
    try:
        posture = load_rules(args.rules)
        loaded = read_manifests(args.manifests, io.StringIO(""))
    except InputError as error:
        print(f"auditor: error: {error.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT

    def secret(namespace: str, name: str, key: str) -> str | None:
        return loaded.secrets.get((namespace, name), {}).get(key)

    values = resolve_header_values(posture, os.environ, secret)
    findings = run_static_audit(loaded.snapshot, posture, values)
    document = {
        "findings": [
            {
                "target": f.target,
                "check": f.check.id,
                "property": str(f.check.property),
                "status": str(f.status),
                "message": f.message,
            }
            for f in findings
        ],
        "witnesses": [w.as_dict(with_values=True) for w in plan_witnesses(loaded.snapshot, posture, values)],
    }
    json.dump(document, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
