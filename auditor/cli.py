"""The ``auditor`` command line. Exit codes are a contract (docs/cli.md):

0 every finding passes; 1 at least one FAIL (drift); 2 invalid input or usage;
3 no FAIL, but at least one ERROR or INCONCLUSIVE finding (or nothing was audited).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

# Start-up (#16): importing the audit makes some 100,000 objects that live as long as the process
# (pydantic's models, the core's dataclasses); the cyclic collector re-scanned them during the
# import and found nothing (about a tenth of the import's CPU). Paused for these imports only.
_COLLECTING = gc.isenabled()
gc.disable()
try:
    from auditor import __version__
    from auditor.app import AuditResult, check_live, check_offline, configure_logging, without_cycle_collection
    from auditor.cli_ops import OPERATIONS, add_operations, run_operation
    from auditor.core.model import summarize
    from auditor.errors import ClusterUnreachableError, InputError, InputProblemsError
    from auditor.render.document import audit_document
    from auditor.render.escape import visible
finally:
    if _COLLECTING:
        gc.enable()

if TYPE_CHECKING:
    from auditor.settings import Settings

# Start-up (#16): each command imports what it uses. An offline `auditor check` never imports the
# settings (pydantic-settings), structlog, the other renderers, the rules schema or the cluster SDKs
# unless it needs them; the imports below inside functions say so with "start-up (#16)".

EXIT_USAGE = 2
PROGRESS_AFTER_S = 2.0
"""An audit that runs longer than this shows a progress line (stderr, terminals only)."""
EXIT_UNPROVEN = 3

_EPILOG = """\
exit codes: 0 all pass, 1 drift (a FAIL), 2 invalid input or usage,
            3 no FAIL but an ERROR/INCONCLUSIVE finding (never proven = never a pass)

example:
  auditor check --manifests examples/retail-store --rules rules/retail-store.yaml
  auditor check --kubeconfig ~/.kube/config --rules rules/retail-store.yaml --active
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditor",
        description="Prove the zero-trust promises of an Istio ambient mesh: strict-mtls, "
        "principal-allowlist, waypoint-enrollment, required-headers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mesh-auditor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(commands)
    rules = commands.add_parser("rules", help="work with rules files (schema, validation)")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    rules_commands.add_parser("schema", help="print the JSON Schema of rules files")
    validate = rules_commands.add_parser("validate", help="validate rules files without auditing")
    validate.add_argument("files", nargs="+", metavar="FILE")
    checks = commands.add_parser("checks", help="list every check with its id, property and severity")
    checks.add_argument("--markdown", action="store_true", help="print docs/checks.md")
    add_operations(commands)
    return parser


def _add_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="audit manifests (offline, for CI) or a live cluster against rules",
        description="Audit Kubernetes manifests or a live cluster against a mesh posture. "
        "Findings are grouped by target.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = check.add_argument_group("what to audit: --manifests, or a cluster")
    source.add_argument(
        "--manifests",
        action="append",
        metavar="PATH",
        help="manifest file, directory (recursive) or - for stdin; repeatable",
    )
    source.add_argument("--kubeconfig", metavar="FILE", help="audit the cluster of this kubeconfig (read-only)")
    source.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current one)")
    source.add_argument("--in-cluster", action="store_true", help="audit the cluster this pod runs in")
    check.add_argument("--rules", action="append", required=True, metavar="FILE", help="rules file; repeatable")
    check.add_argument(
        "--active",
        action="store_true",
        help="with a cluster: also run probe pods that send real traffic (docs/probes.md); settings: AUDITOR_PROBES__*",
    )
    check.add_argument(
        "--output",
        choices=("table", "json", "markdown", "junit"),
        default="table",
        help="output format (default: table; junit for CI test reports)",
    )
    check.add_argument("-v", "--verbose", action="store_true", help="table: evidence and check ids for every finding")


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    try:
        settings = _settings(args, os.environ)
        configure_logging(settings)
        return _dispatch(args, stdin or sys.stdin, out, settings)
    except InputError as error:
        print(f"auditor: error: {error.render()}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterUnreachableError as error:
        # One line, not a finding per resource each advising an RBAC fix: nothing was read.
        print(f"auditor: error: {error.render()}", file=sys.stderr)
        return EXIT_UNPROVEN


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings | None:
    """The settings, or None for an offline ``check`` when no ``AUDITOR_*`` variable is set.

    The only settings an offline check reads are the logging ones, and with no ``AUDITOR_*``
    variable (``AUDITOR_CONFIG_FILE`` included) every setting is its default: then nothing is
    built or validated, and logging builds them itself if a record is ever written
    (``configure_logging(None)``). Any ``AUDITOR_*`` variable: the settings are built and
    validated first, as for every other command (a bad value is exit 2).
    """
    offline = args.command == "check" and not (args.kubeconfig or args.context or args.in_cluster)
    if offline and not any(name.upper().startswith("AUDITOR_") for name in environ):
        return None
    from auditor.settings import load_settings  # noqa: PLC0415 - start-up (#16)

    return load_settings()


def _dispatch(args: argparse.Namespace, stdin: TextIO, out: TextIO, settings: Settings | None) -> int:
    if args.command == "check":
        return _check(args, stdin, out, settings)
    if args.command == "rules":
        return _rules(args, out)
    if args.command in OPERATIONS:
        assert settings is not None  # noqa: S101 - _settings builds them for every command but an offline check
        return run_operation(args, out, settings)
    return _checks(args, out)


def _check(args: argparse.Namespace, stdin: TextIO, out: TextIO, settings: Settings | None) -> int:
    live = args.kubeconfig is not None or args.context is not None or args.in_cluster
    if bool(args.manifests) == live:
        raise InputError(
            "command line",
            "give either --manifests or a cluster (--kubeconfig, --context or --in-cluster)",
            fix="see auditor check --help",
        )
    if args.active and not live:
        raise InputError("command line", "--active needs a cluster", fix="add --kubeconfig, --context or --in-cluster")
    # An offline check is one-shot: no cyclic garbage collection from reading to rendering (#16).
    with contextlib.nullcontext() if live else without_cycle_collection():
        with progress(sys.stderr, "auditing"):
            if live:
                assert settings is not None  # noqa: S101 - _settings builds them for a live check
                probes = settings.probes if args.active else None
                result = check_live(args.kubeconfig, args.context, args.rules, os.environ, probes=probes)
            else:
                result = check_offline(args.manifests, args.rules, os.environ, stdin)
        for problem in result.problems:
            print(f"auditor: warning: {visible(problem)}", file=sys.stderr)
        _render(args.output, result, out, verbose=args.verbose)
        return summarize(result.findings).exit_code


@contextlib.contextmanager
def progress(stream: TextIO, what: str, *, after_s: float | None = None) -> Iterator[None]:
    """Show ``auditor: WHAT... N s`` on ``stream`` once the block has run ``after_s`` seconds.

    Only when ``stream`` is a terminal (a pipe or a CI log gets nothing); the line is rewritten
    every second and erased when the block ends, before anything else is printed.
    """
    if not stream.isatty():
        yield
        return
    delay = PROGRESS_AFTER_S if after_s is None else after_s
    done = threading.Event()
    started = time.monotonic()

    def show() -> None:
        if done.wait(delay):
            return
        while True:
            stream.write(f"\rauditor: {what}... {time.monotonic() - started:.0f} s")
            stream.flush()
            if done.wait(1.0):
                break
        stream.write("\r\033[K")
        stream.flush()

    thread = threading.Thread(target=show, name="auditor-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _render(output: str, result: AuditResult, out: TextIO, *, verbose: bool) -> None:
    if output == "json":
        # One line: the C encoder (indent disables it) keeps 10k-Service audits fast; jq reads it.
        out.write(json.dumps(audit_document(result.report)) + "\n")
        return
    from auditor.render.junit import render_junit  # noqa: PLC0415 - start-up (#16)
    from auditor.render.text import render_markdown, render_table  # noqa: PLC0415 - start-up (#16)

    if output == "markdown":
        out.write(render_markdown(result.report))
    elif output == "junit":
        out.write(render_junit(result.report))
    else:
        out.write(render_table(result.report, verbose=verbose))


def _rules(args: argparse.Namespace, out: TextIO) -> int:
    from auditor.adapters.rules.loader import load_rules  # noqa: PLC0415 - start-up (#16)

    if args.rules_command == "schema":
        out.write(schema_text())
        return 0
    try:
        posture = load_rules(args.files)
    except InputProblemsError as errors:
        for problem in errors.problems:
            print(f"auditor: error: {problem.render()}", file=sys.stderr)
        print(f"auditor: {len(errors.problems)} problem(s) in {len(args.files)} file(s)", file=sys.stderr)
        return EXIT_USAGE
    out.write(
        f"ok: {len(args.files)} file(s), {len(posture.scope)} scope entries, "
        f"{len(posture.protected)} protected service(s)\n"
    )
    return 0


def schema_text() -> str:
    from auditor.core.posture import PostureDocument  # noqa: PLC0415 - start-up (#16)

    schema = PostureDocument.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mesh-auditor.dev/schemas/mesh-posture-v1alpha1.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _checks(args: argparse.Namespace, out: TextIO) -> int:
    from auditor.core.checks.catalog import ALL  # noqa: PLC0415 - start-up (#16)

    if args.markdown:
        out.write(checks_markdown())
        return 0
    for meta in ALL:
        out.write(f"{meta.id:<40} {meta.property.value:<20} {meta.severity.value}\n    {meta.title}\n")
    return 0


def checks_markdown() -> str:
    from auditor.core.checks.catalog import ALL  # noqa: PLC0415 - start-up (#16)

    lines = [
        "# Checks",
        "",
        "Generated by `auditor checks --markdown`; ids are stable.",
        "",
        "Every finding that is not a PASS carries its own fix, filled in from the objects that decided it "
        "(names, namespaces, labels, principals, the rules' allow-list and header names), never YAML the input "
        "already holds, or says plainly why there is no YAML fix. Header values are never printed: a fix writes "
        "`${VARIABLE}` for `envsubst`.",
        "",
    ]
    for meta in ALL:
        lines += [
            f"## `{meta.id}`",
            "",
            f"**{meta.title}** ({meta.property.value}, severity {meta.severity.value})",
            "",
            f"Protects: {meta.protects}",
            "",
            f"Fix: {meta.remediation}",
            "",
        ]
        if meta.fix_summary:
            lines += [f"Each finding's own fix (`remediation_yaml`, `-v` in the table): {meta.fix_summary}", ""]
        lines += [f"References: {', '.join(meta.references)}", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
