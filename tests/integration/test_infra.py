"""infra/ checked with the real tooling: ``scripts/infra validate`` (OpenTofu and the providers
built from their Go modules; the first run builds them, which takes many minutes)."""

from __future__ import annotations

import subprocess
import sys

from testrigs.devtools import infra
from tests.cases import ROOT

BUILD_AND_VALIDATE_TIMEOUT_S = 3600


def test_scripts_infra_validate_passes_and_names_what_it_cannot_validate() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "infra"), "validate"],
        capture_output=True,
        text=True,
        check=False,
        timeout=BUILD_AND_VALIDATE_TIMEOUT_S,
    )
    sys.stderr.write(result.stderr[-3000:])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   tofu fmt -check -recursive infra/" in result.stdout
    assert "ok   tofu validate infra/modules/mesh (helm)" in result.stdout
    # Every configuration that needs hashicorp/aws is named, with the reason: never a silent skip.
    for directory in ("infra", "infra/modules/cluster", "infra/examples/fleet"):
        assert f"NOT VALIDATED {directory}: needs aws" in result.stderr
    assert "terraform-provider-aws" in result.stderr


def test_configurations_and_their_providers_are_found_from_the_files() -> None:
    found = {str(c.path.relative_to(ROOT)): c.providers for c in infra.configurations()}
    assert found == {
        "infra": frozenset({"aws", "helm"}),
        "infra/examples/fleet": frozenset({"aws", "helm"}),
        "infra/modules/cluster": frozenset({"aws"}),
        "infra/modules/mesh": frozenset({"helm"}),
    }
