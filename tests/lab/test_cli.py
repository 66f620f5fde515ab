"""Stage 4: ``python -m testrigs.lab up|status|down`` with the translator daemon following live changes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testrigs.lab.lab import Lab
from tests.lab import labkit

pytestmark = pytest.mark.lab
LIVE_CHANGE_DEADLINE_S = 15.0


def _lab_cli(state_dir: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "testrigs.lab", "--state-dir", str(state_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def _outcome_within(lab: Lab, pod: str, url: str, wanted: str, deadline_s: float) -> tuple[str, float]:
    started = time.monotonic()
    outcome = ""
    while time.monotonic() - started < deadline_s:
        outcome = lab.probe(pod, [{"id": "r", "url": url, "timeout_s": 2.0}])["r"]["outcome"]
        if outcome == wanted:
            break
        time.sleep(0.2)
    return outcome, time.monotonic() - started


def test_cli_up_follows_live_changes_and_down_leaves_nothing() -> None:
    """up prints the kubeconfig last; a STRICT applied later is enforced within seconds; down twice is clean."""
    state_dir = Path(f"/tmp/malab-cli-{secrets.token_hex(3)}")
    manifests = [arg for path in labkit.BASE_MANIFESTS for arg in ("--manifests", str(path))]
    record = None
    try:
        up = _lab_cli(state_dir, "up", "--emulated", *manifests)
        assert up.returncode == 0, up.stderr[-3000:]
        kubeconfig = Path(up.stdout.strip().splitlines()[-1])
        assert kubeconfig.is_file()
        status = _lab_cli(state_dir, "status")
        assert status.returncode == 0, status.stdout
        assert json.loads(status.stdout)["healthy"] is True
        lab = Lab(state_dir)
        record = lab.load()
        url = "http://catalog.default/catalog/tags"
        assert lab.probe("curl/curl-pod", [{"id": "r", "url": url}])["r"]["outcome"] == "allowed"
        lab.kube().apply_text(labkit.STRICT)
        outcome, took = _outcome_within(lab, "curl/curl-pod", url, "l4-denied", LIVE_CHANGE_DEADLINE_S)
        assert outcome == "l4-denied", f"still {outcome} after {took:.1f} s"
    finally:
        first = _lab_cli(state_dir, "down")
        second = _lab_cli(state_dir, "down")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert record is not None
    labkit.assert_gone(state_dir, record)
    assert _lab_cli(state_dir, "status").returncode == 1
