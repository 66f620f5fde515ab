"""Start-up of ``auditor check --manifests`` (#16): it imports only what an offline audit uses.

With no ``AUDITOR_*`` variable the settings are not built (every one is its default) and
logging configures itself from them on the first record it writes; any ``AUDITOR_*`` variable
builds and validates them first, as before. Each case runs the real CLI in a child process, so
the modules it imported are its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.app import _DEFAULT_LEVEL
from auditor.settings import LoggingSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "retail-store")
RULES = str(ROOT / "rules" / "retail-store.yaml")
# What only other commands need: the settings model's loader, the log renderer, the cluster's,
# AWS's and Slack's SDKs, the daemon's scheduler and HTTP clients, probing and drills.
NOT_FOR_AN_OFFLINE_CHECK = (
    "pydantic_settings",
    "structlog",
    "rich",
    "kubernetes",
    "boto3",
    "botocore",
    "slack_sdk",
    "httpx",
    "urllib3",
    "apscheduler",
    "auditor.settings",
    "auditor.render.html",
    "auditor.core.probing.probeplan",
    "auditor.core.drill",
    "probes.wire",
)
_PROBE = """
import json, sys
from auditor.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _check(extra_env: dict[str, str]) -> tuple[int, set[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDITOR_")} | extra_env
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "check", "--manifests", EXAMPLE, "--rules", RULES, "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    *logged, last = result.stderr.strip().splitlines() or [""]
    probe = json.loads(last)
    return probe["code"], set(probe["modules"]), "\n".join(logged)


def _top(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in {n.split(".")[0] for n in NOT_FOR_AN_OFFLINE_CHECK}}


def test_an_offline_check_imports_no_settings_logging_or_cluster_sdk() -> None:
    code, modules, logged = _check({})
    assert code == 0
    assert logged == ""
    loaded = {name for name in NOT_FOR_AN_OFFLINE_CHECK if name in modules}
    assert loaded == set(), sorted(_top(modules))


def test_any_auditor_variable_builds_the_settings_and_their_logging() -> None:
    code, modules, logged = _check({"AUDITOR_LOGGING__LEVEL": "info", "AUDITOR_LOGGING__FORMAT": "json"})
    assert code == 0
    assert {"pydantic_settings", "structlog", "auditor.settings"} <= modules
    lines = [json.loads(line) for line in logged.splitlines()]
    assert [line["event"] for line in lines] == ["inputs read", "audit done"]
    assert lines[0]["logger"] == "auditor.check"
    assert lines[0]["files"] > 0


@pytest.mark.parametrize("variable", ["AUDITOR_LOGGING__LEVEL", "auditor_logging__level"])
def test_a_bad_auditor_variable_still_stops_an_offline_check(variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDITOR_")} | {variable: "loud"}
    result = subprocess.run(
        [sys.executable, "-m", "auditor", "check", "--manifests", EXAMPLE, "--rules", RULES],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "AUDITOR_LOGGING__LEVEL" in result.stderr


def test_a_warning_configures_logging_from_the_settings_when_it_is_written() -> None:
    probe = (
        "import logging, sys, warnings\n"
        "from auditor.app import configure_logging\n"
        "configure_logging(None)\n"
        "logging.getLogger('x').info('dropped')\n"
        "assert 'structlog' not in sys.modules\n"
        "warnings.warn('planted', stacklevel=1)\n"
        "logging.getLogger('x').warning('written %s', 1)\n"
        "assert 'structlog' in sys.modules\n"
        "raise RuntimeError('uncaught')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDITOR_")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 1
    assert "dropped" not in result.stderr
    assert "[warning  ] <string>:6: UserWarning: planted" in result.stderr
    assert "[warning  ] written 1" in result.stderr
    assert "[error    ] uncaught exception" in result.stderr


def test_the_first_record_level_is_the_settings_default() -> None:
    assert getattr(logging, LoggingSettings().level.upper()) == _DEFAULT_LEVEL
