"""The operational commands of ``auditor``: ``daemon`` (the in-cluster process) and ``report``
(render a stored JSON run as HTML, Markdown or JUnit). ``auditor.cli`` registers them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from auditor.errors import InputError

if TYPE_CHECKING:
    from auditor.render.html import HistoryPoint
    from auditor.settings import Settings

# Start-up (#16): registering these commands costs nothing; each imports what it runs.

OPERATIONS = frozenset({"daemon", "drill", "report", "settings"})


def add_operations(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    daemon = commands.add_parser(
        "daemon",
        help="run continuously in the cluster: audits, drift alerts, reports (settings: AUDITOR_*)",
        description="The in-cluster process. Configured by environment (AUDITOR_*) and an optional YAML file "
        "(AUDITOR_CONFIG_FILE); see docs/settings.md and docs/daemon.md. Stops gracefully on SIGTERM.",
    )
    daemon.add_argument(
        "--rules", action="append", metavar="FILE", help="rules file(s); overrides AUDITOR_DAEMON__RULES"
    )
    _add_drill(commands)
    commands.add_parser("settings", help="print every setting (docs/settings.md): variable, default, meaning")
    report = commands.add_parser(
        "report", help="render a stored JSON run (auditor check --output json, or the daemon's archive)"
    )
    report.add_argument("run", metavar="RUN.json", help="the stored audit document")
    report.add_argument(
        "--output", choices=("html", "markdown", "junit"), default="html", help="format (default: html)"
    )
    report.add_argument("--history", metavar="DIR", help="directory of earlier runs, for the HTML history strips")


def _add_drill(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drill = commands.add_parser(
        "drill",
        help="chaos drill: drift a canary in the sandbox namespace, prove detection and alerting",
        description="Deploy a canary that mirrors a protected Service's protection in the sandbox namespace "
        "(AUDITOR_DRILL__NAMESPACE), prove it passes, inject each drift kind in turn, prove it is detected on "
        "the right promise and alerted (marked as a drill), revert, prove the resolution, clean up. "
        "docs/drills.md. Exit 0: all proven; 1: a drift not detected, alerted or resolved, or objects left; "
        "3: aborted (kill switch, baseline never passed, API errors).",
    )
    drill.add_argument("--kubeconfig", metavar="FILE", help="the cluster of this kubeconfig")
    drill.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current one)")
    drill.add_argument("--in-cluster", action="store_true", help="the cluster this pod runs in")
    drill.add_argument("--rules", action="append", required=True, metavar="FILE", help="rules file; repeatable")
    drill.add_argument("--service", metavar="NS/NAME", help="protected Service to mirror (AUDITOR_DRILL__SERVICE)")
    drill.add_argument(
        "--kind", action="append", metavar="KIND", help="drift kind (repeatable; default: AUDITOR_DRILL__KINDS)"
    )
    drill.add_argument(
        "--active",
        action="store_true",
        help="also probe the canary with probe pods (AUDITOR_PROBES__*): each drift must fail its promise's probe "
        "verdict; the JSON drills[].detected_by says which methods detected it",
    )
    drill.add_argument("--output", choices=("table", "json", "markdown"), default="table", help="default: table")


def _drill(args: argparse.Namespace, out: TextIO, settings: Settings) -> int:
    from pydantic import ValidationError  # noqa: PLC0415 - start-up (#16)

    from auditor.app import run_drill  # noqa: PLC0415 - the cluster's SDKs load only for cluster commands
    from auditor.render.drill import render_drill_markdown, render_drill_table  # noqa: PLC0415 - as above
    from auditor.settings import DrillSettings  # noqa: PLC0415 - start-up (#16)

    if not (args.kubeconfig or args.context or args.in_cluster):
        raise InputError("command line", "a drill needs a cluster", fix="add --kubeconfig, --context or --in-cluster")
    update: dict[str, object] = {}
    if args.service:
        update["service"] = args.service
    if args.kind:
        update["kinds"] = args.kind
    if update:
        try:
            drill = DrillSettings.model_validate({**settings.drill.model_dump(), **update})
        except ValidationError as error:
            raise InputError(
                "command line", error.errors()[0]["msg"], field="--kind", fix="see auditor drill --help"
            ) from error
        settings = settings.model_copy(update={"drill": drill})
    result = run_drill(
        args.kubeconfig, args.context, args.rules, settings, probes=settings.probes if args.active else None
    )
    if args.output == "json":
        out.write(json.dumps(result.as_dict()) + "\n")
    elif args.output == "markdown":
        out.write(render_drill_markdown(result))
    else:
        out.write(render_drill_table(result))
    if result.ok:
        return 0
    return 3 if result.aborted or not result.baseline else 1


def run_operation(args: argparse.Namespace, out: TextIO, settings: Settings) -> int:
    if args.command == "drill":
        return _drill(args, out, settings)
    if args.command == "daemon":
        from auditor.app.daemon import run_daemon  # noqa: PLC0415 - the daemon's SDKs load only for the daemon

        if args.rules:
            settings = settings.model_copy(update={"daemon": settings.daemon.model_copy(update={"rules": args.rules})})
        return run_daemon(settings)
    if args.command == "settings":
        from auditor.settings import settings_markdown  # noqa: PLC0415 - start-up (#16)

        out.write(settings_markdown())
        return 0
    return _report(args, out)


def _report(args: argparse.Namespace, out: TextIO) -> int:
    from auditor.render.document import DocumentError, report_from_document  # noqa: PLC0415 - start-up (#16)
    from auditor.render.html import ReportError, render_html  # noqa: PLC0415 - start-up (#16)
    from auditor.render.junit import render_junit  # noqa: PLC0415 - start-up (#16)
    from auditor.render.text import render_markdown  # noqa: PLC0415 - start-up (#16)

    document = _read_document(Path(args.run))
    try:
        report = report_from_document(document)
    except DocumentError as error:
        raise InputError(
            args.run, str(error), fix="render a document written by auditor check --output json"
        ) from error
    if args.output == "junit":
        out.write(render_junit(report))
    elif args.output == "markdown":
        out.write(render_markdown(report))
    else:
        try:
            page = render_html(report, _history(args.history))
        except ReportError as error:
            raise InputError(
                args.run, str(error), fix="render a document written by auditor check --output json"
            ) from error
        out.write(page)
    return 0


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(str(path), f"cannot read the run: {error}", fix="pass a JSON audit document") from error
    if not isinstance(document, dict):
        raise InputError(str(path), "the run is not a JSON object", fix="pass a JSON audit document")
    return document


def _history(directory: str | None) -> list[HistoryPoint]:
    if directory is None:
        return []
    if not Path(directory).is_dir():
        raise InputError(
            directory,
            "no such directory",
            field="--history",
            fix="point --history at the directory of earlier runs (the daemon's report archive)",
        )
    from auditor.render.html import HistoryPoint  # noqa: PLC0415 - start-up (#16)

    points = []
    for path in sorted(Path(directory).glob("*.json")):
        document = _read_document(path)
        try:
            at = str((document.get("run") or {}).get("at", path.stem))
            points.append(HistoryPoint(at, dict(document["summary"]["by_target"])))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise InputError(
                str(path), f"not an audit document: {error!r}", fix="keep only stored runs in DIR"
            ) from error
    return points
