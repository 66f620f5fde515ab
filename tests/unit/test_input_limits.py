"""Issue 10 item 1: every YAML reader refuses hostile input fast, in bounded memory, naming the file.

The readers are the manifests (files and stdin), rules files (``auditor check`` and
``auditor rules validate``), the settings file (``AUDITOR_CONFIG_FILE``) and the daemon's rules
reload (which keeps its last good rules). Each runs in a child process so that its peak RSS is
its own (``os.wait4``); the budget is 100 MB. docs/cli.md, "Input limits", states the limits.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from auditor.adapters.manifests import reader
from auditor.adapters.rules.loader import load_rules
from auditor.app import daemon as daemon_main
from auditor.errors import InputError
from tests.cases import ROOT

EXAMPLE = str(ROOT / "examples" / "retail-store")
RULES = str(ROOT / "rules" / "retail-store.yaml")
RSS_BUDGET_KIB = 100 * 1024


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """Nine levels, each a list of ten aliases of the level below: 10**9 strings if expanded."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def depth_bomb(levels: int = 200_000) -> str:
    """Crashed libyaml's C composer (SIGSEGV) before the reader built values itself."""
    return "a: " + "[" * levels + "]" * levels + "\n"


# Peak RSS from the child's own /proc/self/status VmHWM, written at exit: the rusage of a child
# (os.wait4, /usr/bin/time) also counts the parent's RSS at fork/exec on Linux.
_MEASURED = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status, open(os.environ["AUDITOR_TEST_PEAK"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
atexit.register(_peak)
sys.argv = ["auditor", *sys.argv[1:]]
runpy.run_module("auditor", run_name="__main__")
"""


def run_child(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, float, int]:
    """Exit code, stderr, wall seconds and peak RSS (KiB) of one ``auditor`` child process."""
    with tempfile.TemporaryDirectory() as scratch:
        peak = Path(scratch) / "peak"
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "AUDITOR_TEST_PEAK": str(peak), **(env or {})}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", _MEASURED, *argv],
            input=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
            timeout=120,
            check=False,
        )
        wall = time.monotonic() - started
        return result.returncode, result.stderr, wall, int(peak.read_text(encoding="utf-8"))


def _bomb_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("bomb", "problem"), [(alias_bomb(), "too many alias expansions"), (depth_bomb(), "nesting too deep")]
)
@pytest.mark.parametrize("reader", ["manifests", "stdin", "rules", "rules validate", "settings"])
def test_every_reader_refuses_a_bomb_naming_the_file(tmp_path: Path, reader: str, bomb: str, problem: str) -> None:
    path = _bomb_file(tmp_path, "bomb.yaml", bomb)
    arguments = {
        "manifests": ("check", "--manifests", str(path), "--rules", RULES),
        "stdin": ("check", "--manifests", "-", "--rules", RULES),
        "rules": ("check", "--manifests", EXAMPLE, "--rules", str(path)),
        "rules validate": ("rules", "validate", str(path)),
        "settings": ("check", "--manifests", EXAMPLE, "--rules", RULES),
    }[reader]
    env = {"AUDITOR_CONFIG_FILE": str(path)} if reader == "settings" else {}
    code, err, wall, rss_kib = run_child(*arguments, stdin=bomb if reader == "stdin" else "", env=env)
    assert code == 2, err
    assert ("<stdin>" if reader == "stdin" else str(path)) in err
    assert "(document 1)" in err
    assert problem in err
    assert rss_kib < RSS_BUDGET_KIB, f"peak RSS {rss_kib} KiB"
    # The whole child, interpreter start-up included; the rejection itself is in-process below.
    assert wall < 30


def test_the_rejection_itself_takes_milliseconds(tmp_path: Path) -> None:
    path = _bomb_file(tmp_path, "rules.yaml", alias_bomb())
    started = time.monotonic()
    with pytest.raises(InputError, match="too many alias expansions"):
        load_rules([str(path)])
    assert time.monotonic() - started < 1


def test_manifests_over_the_total_size_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is on all files together: two files each under it, over it together."""
    monkeypatch.setattr(reader, "MAX_FILE_CHARS", 1000)
    first = _bomb_file(tmp_path, "a.yaml", "# " + "x" * 600 + "\n")
    second = _bomb_file(tmp_path, "b.yaml", "# " + "x" * 600 + "\n")
    with pytest.raises(InputError) as error:
        reader.read_manifests([str(first), str(second)], stdin=io.StringIO())
    assert error.value.source == str(second)
    assert "too large" in error.value.problem


class _Daemon:
    def __init__(self) -> None:
        self.replaced: list[Any] = []

    def replace_posture(self, posture: Any, header_values: Any) -> None:
        self.replaced.append(posture)


class _Secrets:
    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        return None


def test_the_daemon_keeps_its_last_good_rules_when_a_reload_meets_a_bomb(tmp_path: Path) -> None:
    rules = _bomb_file(tmp_path, "rules.yaml", Path(RULES).read_text(encoding="utf-8"))
    good = load_rules([str(rules)])
    current = [good]
    daemon = _Daemon()
    rules.write_text(alias_bomb(), encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        daemon_main._reload_rules(daemon, [str(rules)], current, _Secrets(), structlog.get_logger())  # type: ignore[arg-type]  # fakes of Daemon and ClusterSecretReader
    assert time.monotonic() - started < 1
    assert current == [good]
    assert daemon.replaced == []
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["event"] == "rules invalid; keeping the last good rules"
    assert str(rules) in warning["error"]
    assert "too many alias expansions" in warning["error"]
