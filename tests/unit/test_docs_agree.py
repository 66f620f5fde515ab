"""The docs agree with the code and with each other (issue #17, "Docs agree with the code")."""

from __future__ import annotations

import argparse
from pathlib import Path

from auditor.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COLD_BUILD = ("4-8 min", "20-30 min")
MENTIONS_COLD_BUILD = [
    "README.md",
    "CONTRIBUTING.md",
    "docs/controlplane.md",
    "docs/benchmarks.md",
    "scripts/test",
    "scripts/setup",
    "testrigs/devtools/controlplane.py",
]


def test_every_place_that_gives_the_cold_build_time_gives_the_measured_one() -> None:
    """One figure: 4-8 min on an idle 2-core machine, 20-30 min under load."""
    for name in MENTIONS_COLD_BUILD:
        text = " ".join((ROOT / name).read_text(encoding="utf-8").split())
        for figure in COLD_BUILD:
            assert figure in text, f"{name}: no {figure}"
        stale = {"5-10 min", "10-20 min", "15-25 min", "4-8 minutes", "10-20 minutes", "15-25 minutes"}
        assert not [figure for figure in stale if figure in text], name


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings if option.startswith("--")}


def test_docs_cli_names_every_check_option_and_output_format() -> None:
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    check = subcommands.choices["check"]
    cli_md = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = sorted(option for option in _options(check) - {"--help"} if f"`{option}" not in cli_md)
    assert missing == []
    output = next(a for a in check._actions if "--output" in a.option_strings)
    assert output.choices is not None
    for choice in output.choices:
        assert f"`{choice}`" in cli_md, choice


def test_scripts_check_comment_names_only_what_it_runs() -> None:
    text = (ROOT / "scripts" / "check").read_text(encoding="utf-8")
    comment = " ".join(line for line in text.splitlines()[1:4] if line.startswith("#"))
    runs = " ".join(line for line in text.splitlines() if not line.startswith("#"))
    named = {
        "formatting": "ruff format --check",
        "lint": "ruff check",
        "types": "mypy",
        "layer contracts": "lint-imports",
    }
    for words, command in named.items():
        assert words in comment, words
        assert command in runs, command
    listed = comment.split(".")[0]  # the first sentence lists what the script runs
    assert "schema" not in listed or "auditor rules schema" in runs
