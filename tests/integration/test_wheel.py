"""The shipped wheel holds the product only: no test rig (lab, control-plane tooling, fakes), no tests.

Builds the wheel from this checkout as a user would (``pip wheel --no-deps``: the build backend named in
pyproject.toml comes from the package index) and reads its file list.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_contains_no_test_rig(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("mesh_auditor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_levels == {"auditor", "probes"}, top_levels
    assert "auditor/cli.py" in names
    assert "probes/sender.py" in names
    rigs = [name for name in names if name.startswith(("testrigs/", "tests/")) or "/lab/" in name or "devtools" in name]
    assert rigs == []
    assert not any(name.endswith("testing.py") for name in names)
