"""Build the real ztunnel from its upstream source archive, for the lab's data plane.

Role: developer tooling next to ``controlplane`` and ``istio``; the auditor never imports it.
No package registry serves ztunnel, so the lab builds it from the source archive of the release
that pairs with the pinned istiod (``tools/ztunnel/source.json``: file name, upstream tag and
commit, SHA-256). ``build()``:

1. finds the archive: ``$MESH_AUDITOR_ZTUNNEL_SOURCE``, else ``../shared/vendor/<file>`` next to the
   repository (a user with internet access fetches the same upstream tag and points the setting at
   it), and refuses it unless its SHA-256 equals the pinned one;
2. unpacks it into ``<cache>/mesh-auditor/ztunnel-<sha256[:12]>/src`` and applies the one local
   build patch the vendor README names: the optional ``boring-rustls-provider`` dependency is a git
   URL no machine here can reach, and only the ``tls-boring`` feature uses it, so its line and its
   mention in that feature are removed;
3. runs ``cargo build --no-default-features --features tls-ring,testing`` (debug, as upstream's
   Development.md; ``testing`` enables ``FAKE_CA``) under ``nice -n 19``, with ``protoc`` from
   Debian's ``protobuf-compiler``, the cargo target folder kept in the cache (about 2.4 GB), so a
   warm build only re-links;
4. copies the binary to ``bin/ztunnel`` and records ``build.json`` (fingerprint, ``ztunnel
   version``, rustc, seconds) with the same bookkeeping as the other binaries
   (``controlplane.build_info``, ``recipe_fingerprint``, ``is_built``).

Errors are ``controlplane.ControlPlaneError`` naming the step and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testrigs.devtools import controlplane
from testrigs.devtools.controlplane import ControlPlaneError

PIN_FILE = controlplane.REPO_ROOT / "tools" / "ztunnel" / "source.json"
SOURCE_ENV = "MESH_AUDITOR_ZTUNNEL_SOURCE"
CARGO_FEATURES = "tls-ring,testing"
# Bump when the recipe (patch, features, profile, environment) changes.
BUILD_RECIPE = "1"
# The patch: the git-URL dependency used only by the tls-boring feature (vendor/README.md).
_GIT_DEPENDENCY = "boring-rustls-provider"


@dataclass(frozen=True)
class SourcePin:
    """The ztunnel source archive the repository pins (``tools/ztunnel/source.json``)."""

    file: str
    tag: str
    commit: str
    sha256: str

    @property
    def version(self) -> str:
        return self.tag


def read_pin(path: Path = PIN_FILE) -> SourcePin:
    """Read the pin; raises ControlPlaneError naming the field when one is missing."""
    try:
        data = json.loads(path.read_text())
        return SourcePin(str(data["file"]), str(data["tag"]), str(data["commit"]), str(data["sha256"]).lower())
    except (OSError, ValueError, KeyError) as error:
        raise ControlPlaneError(f"{path}: cannot read the ztunnel source pin ({error!r})") from error


@dataclass(frozen=True)
class ZtunnelBinaries:
    """The ztunnel binary of one build (``bin/ztunnel``) and its build.json."""

    directory: Path

    @property
    def ztunnel(self) -> Path:
        return self.directory / "ztunnel"

    def all(self) -> tuple[Path]:
        return (self.ztunnel,)


def default_source(pin: SourcePin) -> Path:
    """``$MESH_AUDITOR_ZTUNNEL_SOURCE``, else ``../shared/vendor/<file>`` relative to the repository."""
    configured = os.environ.get(SOURCE_ENV)
    if configured:
        return Path(configured)
    return controlplane.REPO_ROOT.parent / "shared" / "vendor" / pin.file


def cache_dir(pin: SourcePin) -> Path:
    """``<cache>/mesh-auditor/ztunnel-<sha256[:12]>``: source, cargo target folder and bin/."""
    directory = controlplane.cache_root().parent / f"ztunnel-{pin.sha256[:12]}"
    if directory.resolve().is_relative_to(controlplane.REPO_ROOT):
        raise ControlPlaneError(f"the ztunnel cache {directory} must be outside the repository")
    return directory


def binaries(pin: SourcePin | None = None) -> ZtunnelBinaries:
    """Where build() puts (or has put) the binary; it may not be built yet (see ``is_built``)."""
    return ZtunnelBinaries(cache_dir(pin or read_pin()) / "bin")


def fingerprint(pin: SourcePin) -> str:
    """SHA-256 over the recipe, the features and the pin file (which holds the archive's SHA-256)."""
    return controlplane.recipe_fingerprint(BUILD_RECIPE, CARGO_FEATURES, PIN_FILE.parent, (PIN_FILE.name,))


def is_built(pin: SourcePin | None = None) -> bool:
    """True when build() would return at once."""
    pin = pin or read_pin()
    return controlplane.is_built(binaries(pin), fingerprint(pin))


build_info = controlplane.build_info


def build(source: Path | None = None, pin: SourcePin | None = None) -> ZtunnelBinaries:
    """Build ztunnel into the cache unless it is there already; return its directory.

    ``source``: the archive (default ``default_source``). Raises ControlPlaneError when the
    archive is missing or its SHA-256 differs from the pin, or cargo/protoc is missing, or
    the build fails (cargo's output is on stderr).
    """
    pin = pin or read_pin()
    built = binaries(pin)
    stamp = fingerprint(pin)
    if controlplane.is_built(built, stamp):
        return built
    archive = source or default_source(pin)
    with controlplane._file_lock(cache_dir(pin) / "build.lock"):
        if not controlplane.is_built(built, stamp):
            _build_into(built.directory, archive, pin, stamp)
    return built


def check_archive(archive: Path, pin: SourcePin) -> None:
    """Refuse an archive that is missing or whose SHA-256 is not the pinned one."""
    if not archive.is_file():
        raise ControlPlaneError(
            f"the ztunnel source archive {archive} does not exist: set {SOURCE_ENV} to a copy of "
            f"{pin.file} (github.com/istio/ztunnel tag {pin.tag}, sha256 {pin.sha256})"
        )
    digest = hashlib.sha256()
    with archive.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != pin.sha256:
        raise ControlPlaneError(
            f"{archive}: sha256 {digest.hexdigest()} is not the pinned {pin.sha256} "
            f"({PIN_FILE.relative_to(controlplane.REPO_ROOT)}): use the archive of ztunnel {pin.tag}"
        )


def patch_cargo_toml(text: str) -> str:
    """The local build patch: drop the git-URL dependency line and its use in ``tls-boring``."""
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith(f"{_GIT_DEPENDENCY} =")]
    patched = "".join(lines).replace(f', "{_GIT_DEPENDENCY}/fips-only"', "")
    if f"{_GIT_DEPENDENCY} =" in patched or f'"{_GIT_DEPENDENCY}/' in patched:
        raise ControlPlaneError(f"Cargo.toml still names {_GIT_DEPENDENCY} after the patch: the recipe needs updating")
    return patched


def _unpack(archive: Path, target: Path) -> None:
    # Unpack next to the target and rename, so a half-unpacked tree is never built.
    staging = Path(tempfile.mkdtemp(prefix=".src-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        tops = list(staging.iterdir())
        if len(tops) != 1 or not (tops[0] / "Cargo.toml").is_file():
            raise ControlPlaneError(f"{archive}: expected one top folder holding Cargo.toml")
        cargo_toml = tops[0] / "Cargo.toml"
        cargo_toml.write_text(patch_cargo_toml(cargo_toml.read_text()))
        if target.exists():
            shutil.rmtree(target)
        tops[0].rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_into(target: Path, archive: Path, pin: SourcePin, stamp: str) -> None:
    cargo = shutil.which("cargo")
    if cargo is None:
        raise ControlPlaneError("'cargo' is not on PATH: Rust >= 1.90 is needed to build ztunnel (rustup)")
    if shutil.which("protoc") is None:
        raise ControlPlaneError("'protoc' is not on PATH: install Debian's protobuf-compiler")
    check_archive(archive, pin)
    root = target.parent
    source = root / "src"
    marker = root / "src.sha256"
    started = time.monotonic()
    # The unpacked tree is reused while it comes from the same archive: cargo's incremental state
    # in target/ keys on its files' mtimes, which the archive fixes.
    if not source.is_dir() or (marker.read_text().strip() if marker.is_file() else "") != pin.sha256:
        controlplane._log(f"unpacking {archive} into {source}")
        _unpack(archive, source)
        marker.write_text(pin.sha256 + "\n")
    controlplane._log(
        f"building ztunnel {pin.tag} into {target} (cold: 2 min on a quiet 2-core machine with the crates "
        "downloaded, up to 20 min under load; warm: seconds)"
    )
    env = dict(os.environ)
    # VERSION stamps `ztunnel version` (common/scripts/report_build_info.sh); the tree is no git clone.
    env.update(CARGO_TARGET_DIR=str(root / "target"), VERSION=pin.tag, IGNORE_DIRTY_TREE="1")
    argv = [
        "nice",
        "-n",
        "19",
        cargo,
        "build",
        "--manifest-path",
        str(source / "Cargo.toml"),
        "--no-default-features",
        "--features",
        CARGO_FEATURES,
    ]
    # Run from the cache folder, not the source tree: upstream's .cargo/config.toml (frame pointers
    # for profiling, FIPS BoringSSL paths, out/rust) is for its own release images, not needed here.
    controlplane._run_go(argv, env, "cargo build (ztunnel)", cwd=root)
    staging = Path(tempfile.mkdtemp(prefix=".bin-", dir=root))
    try:
        built = root / "target" / "debug" / "ztunnel"
        try:
            # A hard link, not a 255 MB copy: cargo replaces its output by a new file, never in place.
            os.link(built, staging / "ztunnel")
        except OSError:
            shutil.copy2(built, staging / "ztunnel")
        version = controlplane._output([str(staging / "ztunnel"), "version"]).strip()
        if pin.tag not in version:
            raise ControlPlaneError(f"the built ztunnel reports {version!r}, not {pin.tag}")
        rustc = controlplane._output(["rustc", "--version"]).strip()
        info: dict[str, Any] = {
            "fingerprint": stamp,
            "source": {"file": pin.file, "tag": pin.tag, "commit": pin.commit, "sha256": pin.sha256},
            "features": CARGO_FEATURES,
            "rustc": rustc,
            "versions": {"ztunnel": version},
            "build_seconds": round(time.monotonic() - started),
        }
        (staging / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        controlplane._replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    controlplane._log(f"built ztunnel in {time.monotonic() - started:.0f} s")
