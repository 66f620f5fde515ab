"""The image locks cover what the code needs: a dependency added to pyproject without
`scripts/image lock` would ship an image that fails at import."""

from __future__ import annotations

import re
import tomllib

from testrigs.devtools.image import IMAGES_DIR, REPO_ROOT


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]).lower()


def _locked(lock: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (IMAGES_DIR / lock).read_text(encoding="utf-8"), re.MULTILINE)
    return {_name(name): version for name, version in pins}


def test_auditor_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    assert wanted <= set(_locked("auditor.lock")), "run scripts/image lock"
    text = (IMAGES_DIR / "auditor.lock").read_text(encoding="utf-8")
    assert text.count("==") == len(re.findall(r"==\S+ \\\n\s+--hash=sha256:", text))


def test_probe_lock_is_a_subset_of_the_auditor_lock_with_the_same_versions() -> None:
    probe, auditor = _locked("probe.lock"), _locked("auditor.lock")
    assert {"httpx", "pydantic"} <= set(probe)
    assert {name: auditor.get(name) for name in probe} == probe
