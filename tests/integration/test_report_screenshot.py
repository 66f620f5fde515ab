"""The HTML report as a person sees it: rendered by headless Chromium (Debian's package), then
checked on the pixels: the failure and pass badges, the history strips and the text of every
main section are on screen in the first viewport, without JavaScript."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from auditor.cli import main
from auditor.render.document import report_from_document
from auditor.render.html import HistoryPoint, render_html

ROOT = Path(__file__).resolve().parents[2]
RED, GREEN = (198, 40, 40), (46, 125, 50)  # the FAIL and PASS badge colours
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

pytestmark = pytest.mark.browser


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's chromium package is needed (.ci/run installs it)")
    return found


def _report(tmp_path: Path) -> Path:
    out = io.StringIO()
    main(
        [
            "check",
            "--manifests",
            str(ROOT / "examples" / "retail-store-drifted"),
            "--rules",
            str(ROOT / "rules" / "retail-store.yaml"),
            "--output",
            "json",
        ],
        stdout=out,
    )
    document = json.loads(out.getvalue())
    document["run"] = {"id": "screenshot", "kind": "static", "at": "2026-11-27T06:00:00+00:00", "replica": "ambient"}
    history = [
        HistoryPoint(f"2026-11-{20 + day}", {"default/orders": {"strict-mtls": "pass" if day < 4 else "fail"}})
        for day in range(7)
    ]
    page = tmp_path / "report.html"
    page.write_text(render_html(report_from_document(document), history), encoding="utf-8")
    return page


def _run(tmp_path: Path, *args: str) -> str:
    argv = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def test_main_sections_are_visible_in_the_first_viewport(tmp_path: Path) -> None:
    page = _report(tmp_path)
    shot = tmp_path / "report.png"
    _run(tmp_path, "--window-size=1280,1000", f"--screenshot={shot}", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1000)
    pixels = image.load()
    assert pixels is not None

    def count(colour: tuple[int, int, int], top: int, bottom: int) -> int:
        return sum(1 for y in range(top, bottom, 2) for x in range(0, 900, 2) if pixels[x, y] == colour)

    assert count(RED, 0, 250) > 50  # the overall FAIL badge in the summary
    assert count(RED, 250, 700) > 200  # FAIL badges and a red day in the matrix
    assert count(GREEN, 250, 700) > 200  # PASS badges and green history squares
    assert count(RED, 700, 1000) > 20  # the first failing finding opens below


def test_sections_are_in_the_rendered_dom_without_scripts(tmp_path: Path) -> None:
    dom = _run(tmp_path, "--dump-dom", _report(tmp_path).as_uri())
    for section in ('id="summary"', 'id="properties"', 'id="findings"'):
        assert section in dom
    assert "<script" not in dom
    assert dom.count('<details open="">') == 5  # one open block per failing finding
