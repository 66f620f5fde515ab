"""The real PolicyReport CRDs for the integration tests, from the Go module pinned in tools/.

The Policy WG publishes ``wgpolicyk8s.io`` as controller-gen output in
``sigs.k8s.io/wg-policy-prototypes`` (policy-report/crd/v1alpha2); tools/policyreport-crd/go.mod
pins the version and ``go mod download`` puts it in the Go module cache. A missing ``go`` or a
failed download is a test failure, never a skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

from tests.cases import ROOT

MODULE = "sigs.k8s.io/wg-policy-prototypes"
PIN_DIR = ROOT / "tools" / "policyreport-crd"


@cache
def policyreport_crds() -> tuple[Path, Path]:
    """(policyreports, clusterpolicyreports) CRD files of the pinned module."""
    go = shutil.which("go")
    assert go is not None, "go is not on PATH: it fetches the PolicyReport CRDs (tools/policyreport-crd)"
    result = subprocess.run(
        [go, "mod", "download", "-json", MODULE], cwd=PIN_DIR, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, f"go mod download {MODULE} failed: {result.stdout}{result.stderr}"
    directory = Path(json.loads(result.stdout)["Dir"]) / "policy-report" / "crd" / "v1alpha2"
    files = (directory / "wgpolicyk8s.io_policyreports.yaml", directory / "wgpolicyk8s.io_clusterpolicyreports.yaml")
    for path in files:
        assert path.is_file(), f"{path} missing from {MODULE}"
    return files
