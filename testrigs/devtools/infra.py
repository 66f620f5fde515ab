"""Build OpenTofu and the Terraform providers from their Go modules, and validate ``infra/``.

Role: ``infra/`` is the Terraform (OpenTofu) module that stands up the auditor's AWS stack. This
module checks it with the real tooling, offline: OpenTofu is built from the Go module pinned in
``tools/opentofu`` and each provider from the Go module pinned in
``tools/terraform-providers/<type>``, into a cache outside the repository; the providers are laid
out as an unpacked filesystem mirror that ``tofu init`` installs from (no registry is reached).
It is developer tooling: the auditor never imports it.

Commands (``scripts/infra CMD`` or ``python3 -m testrigs.devtools.infra CMD``):

* ``build``: build ``tofu`` and every pinned provider (a warm call returns at once; each build runs
  under ``nice -n 19`` and its wall time is kept in a ``build-seconds.json`` of the cache).
* ``validate``: build what is missing, then ``tofu fmt -check -recursive`` over ``infra/`` and
  ``tofu init`` + ``tofu validate`` on a copy of every configuration whose providers were built.
  Configurations that need a provider which cannot be built (see ``UNBUILDABLE``) are named on
  stderr as NOT VALIDATED, never skipped silently. Exit 0 when everything that could be checked
  passed, 1 when a check failed, 2 on a build error.

Cache: ``${MESH_AUDITOR_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/mesh-auditor/{opentofu,terraform-providers}``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO_ROOT / "infra"
TOFU_MODULE_DIR = REPO_ROOT / "tools" / "opentofu"
PROVIDERS_DIR = REPO_ROOT / "tools" / "terraform-providers"
TOFU_PACKAGE = "github.com/opentofu/opentofu/cmd/tofu"
# Provider addresses are written as registry.opentofu.org/<namespace>/<type>; every provider
# pinned here is one of HashiCorp's.
PROVIDER_HOST = "registry.opentofu.org"
PROVIDER_NAMESPACE = "hashicorp"
# Providers the configurations use that cannot be built here, with the reason (docs/aws.md has
# the measurement). A configuration requiring one of these is reported, not validated.
UNBUILDABLE = {
    "aws": (
        "hashicorp/aws cannot be built from its Go module: github.com/hashicorp/terraform-provider-aws "
        "tags its releases v2+ without a /vN module path, so the Go module proxy serves only v1.60.0 "
        "(2019, plugin protocol 4, no EKS Auto Mode or Pod Identity) and refuses pseudo-versions; "
        "see docs/aws.md"
    ),
}
# Bump when the build recipe changes so that cached binaries are rebuilt.
BUILD_RECIPE = "2"
# OpenTofu's release build (.goreleaser.yaml) marks the binary as a release, not "-dev".
TOFU_LDFLAGS = "-X github.com/opentofu/opentofu/version.dev=no"


class InfraError(Exception):
    """A build or validation step failed; the message says which."""


def _log(message: str) -> None:
    print(f"infra: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """The per-user cache for built binaries: never inside the repository."""
    base = os.environ.get("MESH_AUDITOR_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base or Path.home() / ".cache") / "mesh-auditor"
    if root.resolve().is_relative_to(REPO_ROOT):
        raise InfraError(f"the binary cache {root} must be outside the repository")
    return root


def _required_version(go_mod: Path, module: str) -> str:
    text = go_mod.read_text(encoding="utf-8")
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise InfraError(f"{go_mod.relative_to(REPO_ROOT)} does not require {module}")
    return match.group(1)


@dataclass(frozen=True)
class Provider:
    """One provider pinned by ``tools/terraform-providers/<type>/go.mod``."""

    type: str
    module: str
    version: str  # the Go module version, e.g. v1.3.2

    @property
    def mirror_version(self) -> str:
        return self.version.removeprefix("v")

    def binary(self, mirror: Path) -> Path:
        target = f"{platform.system().lower()}_{_go_arch()}"
        return (
            mirror
            / PROVIDER_HOST
            / PROVIDER_NAMESPACE
            / self.type
            / self.mirror_version
            / target
            / f"terraform-provider-{self.type}_{self.version}"
        )


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def pinned_providers() -> list[Provider]:
    providers = []
    for go_mod in sorted(PROVIDERS_DIR.glob("*/go.mod")):
        provider_type = go_mod.parent.name
        module = f"github.com/hashicorp/terraform-provider-{provider_type}"
        providers.append(Provider(provider_type, module, _required_version(go_mod, module)))
    return providers


def tofu_version() -> str:
    return _required_version(TOFU_MODULE_DIR / "go.mod", "github.com/opentofu/opentofu")


def tofu_binary() -> Path:
    return cache_root() / "opentofu" / f"{tofu_version()}-r{BUILD_RECIPE}" / "bin" / "tofu"


def provider_mirror() -> Path:
    return cache_root() / "terraform-providers" / f"r{BUILD_RECIPE}"


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    lock_path = cache_root() / "infra-build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another build of the same binaries waits here
        yield


def _go_build(module_dir: Path, package: str, output: Path, record: Path, ldflags: str = "") -> float:
    """``go build`` one package of a pinned wrapper module under ``nice -n 19``; returns seconds."""
    go = shutil.which("go")
    if go is None:
        raise InfraError("go is not on PATH: install Go (see tools/opentofu/go.mod for the version)")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    # As the projects' release builds do: static (CGO_ENABLED=0), stripped, no local paths.
    command = [
        "nice",
        "-n",
        "19",
        go,
        "build",
        "-trimpath",
        f"-ldflags=-s -w {ldflags}".strip(),
        "-o",
        str(partial),
        package,
    ]
    _log(f"building {package} in {module_dir.relative_to(REPO_ROOT)} (this can take many minutes)")
    started = time.monotonic()
    result = subprocess.run(command, cwd=module_dir, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise InfraError(f"go build {package} failed after {seconds:.0f} s:\n{result.stderr[-4000:]}")
    partial.replace(output)  # atomic: a half-written binary is never taken for a built one
    _record_seconds(record, output.name, seconds)
    _log(f"built {output} in {seconds:.0f} s")
    return seconds


def _record_seconds(record: Path, name: str, seconds: float) -> None:
    # Beside the binaries, not among them: a provider's platform directory must hold the provider only.
    known = json.loads(record.read_text(encoding="utf-8")) if record.exists() else {}
    known[name] = round(seconds, 1)
    record.write_text(json.dumps(known, indent=2, sort_keys=True), encoding="utf-8")


def build() -> tuple[Path, Path]:
    """Build tofu and every pinned provider once; returns (tofu binary, provider mirror)."""
    with _build_lock():
        tofu = tofu_binary()
        if not tofu.exists():
            _go_build(TOFU_MODULE_DIR, TOFU_PACKAGE, tofu, tofu.parent.parent / "build-seconds.json", TOFU_LDFLAGS)
        mirror = provider_mirror()
        for provider in pinned_providers():
            binary = provider.binary(mirror)
            if not binary.exists():
                _go_build(PROVIDERS_DIR / provider.type, provider.module, binary, mirror / "build-seconds.json")
    return tofu, mirror


@dataclass(frozen=True)
class Configuration:
    """One directory of ``infra/`` that ``tofu validate`` can check on its own."""

    path: Path
    providers: frozenset[str]


def configurations() -> list[Configuration]:
    """Every directory of infra/ with .tf files and the provider types it (or a local module) needs."""
    found = []
    for directory in sorted({p.parent for p in INFRA_DIR.rglob("*.tf")}):
        if ".terraform" in directory.parts:
            continue
        found.append(Configuration(directory, frozenset(_providers_of(directory, set()))))
    return found


def _providers_of(directory: Path, seen: set[Path]) -> set[str]:
    if directory in seen:
        return set()
    seen.add(directory)
    types: set[str] = set()
    for tf in directory.glob("*.tf"):
        text = tf.read_text(encoding="utf-8")
        types |= set(re.findall(r'source\s*=\s*"(?:[^"/]+/)?hashicorp/([a-z0-9-]+)"', text))
        types |= {m.split("_", 1)[0] for m in re.findall(r'^(?:resource|data)\s+"([a-z0-9_]+)"', text, re.MULTILINE)}
        for local in re.findall(r'source\s*=\s*"(\.\.?/[^"]+)"', text):
            types |= _providers_of((directory / local).resolve(), seen)
    return types - {"terraform"}  # terraform_data is built in


def _cli_config(mirror: Path, directory: Path) -> Path:
    config = directory / "tofurc"
    config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n    include = ["*/*/*"]\n  }}\n'
        "}\n",
        encoding="utf-8",
    )
    return config


def _tofu(tofu: Path, args: Sequence[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tofu), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def validate() -> int:
    """fmt -check over infra/, then init + validate of every configuration that can be checked."""
    tofu, mirror = build()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mesh-auditor-infra-") as scratch:
        work = Path(scratch)
        env = dict(
            os.environ,
            TF_CLI_CONFIG_FILE=str(_cli_config(mirror, work)),
            TF_IN_AUTOMATION="1",
            CHECKPOINT_DISABLE="1",
        )
        env.pop("TF_PLUGIN_CACHE_DIR", None)
        fmt = _tofu(tofu, ["fmt", "-check", "-recursive", "-diff", str(INFRA_DIR)], REPO_ROOT, env)
        if fmt.returncode != 0:
            failures += 1
            print(f"FAIL tofu fmt -check infra/:\n{fmt.stdout}{fmt.stderr}")
        else:
            print("ok   tofu fmt -check -recursive infra/")
        # A copy, so that init's .terraform/ and lock file never land in the repository.
        copy = work / "repo"
        shutil.copytree(INFRA_DIR, copy / "infra", ignore=shutil.ignore_patterns(".terraform*"))
        built = {p.type for p in pinned_providers()}
        for configuration in configurations():
            relative = configuration.path.relative_to(REPO_ROOT)
            missing = sorted(configuration.providers - built)
            if missing:
                reasons = "; ".join(UNBUILDABLE.get(t, f"hashicorp/{t} is not pinned in tools/") for t in missing)
                print(f"NOT VALIDATED {relative}: needs {', '.join(missing)}: {reasons}", file=sys.stderr)
                continue
            where = copy / relative
            init = _tofu(tofu, ["init", "-backend=false", "-input=false", "-no-color"], where, env)
            checked = init
            if init.returncode == 0:
                checked = _tofu(tofu, ["validate", "-no-color"], where, env)
            if checked.returncode != 0:
                failures += 1
                print(f"FAIL tofu validate {relative}:\n{checked.stdout}{checked.stderr}")
            else:
                print(f"ok   tofu validate {relative} ({', '.join(sorted(configuration.providers)) or 'no providers'})")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/infra", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=("build", "validate"))
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            tofu, mirror = build()
            print(tofu)
            print(mirror)
            return 0
        return validate()
    except InfraError as error:
        _log(str(error))
        return 2


if __name__ == "__main__":
    sys.exit(main())
