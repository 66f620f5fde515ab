"""Upstream CRDs for the integration tests, from the Go modules pinned in tools/test-crds.

``go mod download`` puts each pinned module in the Go module cache; the CRD files are read from
there, never copied into the repository. A missing ``go`` or a failed download is a test failure,
never a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from tests.cases import ROOT

PIN_DIR = ROOT / "tools" / "test-crds"
POLICY_WG = "sigs.k8s.io/wg-policy-prototypes"
KARPENTER = "sigs.k8s.io/karpenter"


@cache
def module_dir(module: str) -> Path:
    """The pinned version of ``module``, downloaded into the Go module cache."""
    pinned = re.search(rf"^\s*{re.escape(module)}\s+v\S+", (PIN_DIR / "go.mod").read_text(encoding="utf-8"), re.M)
    assert pinned is not None, f"tools/test-crds/go.mod does not pin {module}"
    go = shutil.which("go")
    assert go is not None, "go is not on PATH: it fetches the upstream CRDs (tools/test-crds)"
    result = subprocess.run(
        [go, "mod", "download", "-json", module], cwd=PIN_DIR, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, f"go mod download {module} failed: {result.stdout}{result.stderr}"
    return Path(json.loads(result.stdout)["Dir"])


def _files(module: str, *relative: str) -> tuple[Path, ...]:
    files = tuple(module_dir(module) / r for r in relative)
    for path in files:
        assert path.is_file(), f"{path} missing from {module}"
    return files


def policyreport_crds() -> tuple[Path, ...]:
    """The Policy WG's PolicyReport and ClusterPolicyReport CRDs (wgpolicyk8s.io/v1alpha2)."""
    base = "policy-report/crd/v1alpha2"
    return _files(
        POLICY_WG, f"{base}/wgpolicyk8s.io_policyreports.yaml", f"{base}/wgpolicyk8s.io_clusterpolicyreports.yaml"
    )


def nodepool_crd() -> Path:
    """Karpenter's NodePool CRD (karpenter.sh/v1), the API EKS Auto Mode's NodePools use."""
    return _files(KARPENTER, "pkg/apis/crds/karpenter.sh_nodepools.yaml")[0]
