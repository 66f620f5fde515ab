"""Build the auditor's two OCI images without a container engine, from package registries only.

Role: a release needs images that anything can build on a plain Debian machine. Each image is
a Debian bookworm root filesystem made by ``mmdebstrap --variant=extract`` (only the listed
packages and their dependencies, unpacked: no shell, no apt, no dpkg run), plus PyPI wheels
installed with ``pip --require-hashes`` from the hash-pinned locks in ``images/`` (made by
``uv pip compile``), turned into a one-layer OCI image by ``umoci`` and written as an OCI
layout in a tar (what ``skopeo copy oci-archive:...`` reads). Each image gets a CycloneDX SBOM
(``cyclonedx-python-lib``) listing its Debian packages and Python distributions. It is
developer tooling: the auditor never imports it.

* ``dist/mesh-auditor.oci.tar``: Python 3.11, the auditor and its locked dependencies, CA
  certificates. Non-root (65532), entrypoint ``auditor``, no pip, setuptools, tests or lab.
* ``dist/mesh-auditor-probe.oci.tar``: Python 3.11, ``probes/`` and its five locked
  dependencies (httpx, pydantic and what they need). Probe pods run ``python -c`` with it.

Commands (``scripts/image CMD``): ``build [--out DIR]`` (skips an image whose inputs have not
changed since the last build there), ``lock`` (re-resolve images/*.lock from PyPI). Needs root
(mmdebstrap's chroot mode), mmdebstrap, umoci and skopeo (``scripts/setup`` installs them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
DEFAULT_OUT = REPO_ROOT / "dist"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON = "python3.11"
SITE = "usr/lib/python3/dist-packages"  # on Debian's sys.path for /usr/bin/python3.11
USER = "65532:65532"
# Bump when the recipe below changes so that images are rebuilt.
RECIPE = "1"
# Parts of the unpacked packages nothing at run time reads: documentation, translations, the
# interpreter's test suite and GUI/packaging modules, Debian's package tooling.
PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/polkit-1",
    "usr/share/binfmts",
    "usr/share/pixmaps",
    "usr/share/debconf",
    "usr/share/perl5",
    "usr/lib/binfmt.d",
    "usr/lib/x86_64-linux-gnu/gconv",  # glibc's iconv modules; Python's codecs are its own
    "usr/bin/dpkg",
    "usr/bin/dpkg-deb",
    "usr/bin/dpkg-divert",
    "usr/bin/dpkg-maintscript-helper",
    "usr/bin/dpkg-query",
    "usr/bin/dpkg-realpath",
    "usr/bin/dpkg-split",
    "usr/bin/dpkg-statoverride",
    "usr/bin/dpkg-trigger",
    "usr/bin/update-alternatives",
    "usr/bin/openssl",
    "usr/bin/c_rehash",
    "var/cache",
    f"usr/lib/{PYTHON}/test",
    f"usr/lib/{PYTHON}/idlelib",
    f"usr/lib/{PYTHON}/tkinter",
    f"usr/lib/{PYTHON}/turtledemo",
    f"usr/lib/{PYTHON}/lib2to3",
    f"usr/lib/{PYTHON}/ensurepip",
    f"usr/lib/{PYTHON}/pydoc_data",
)


class ImageError(Exception):
    """A build step failed; the message names the step and its output."""


@dataclass(frozen=True)
class ImageSpec:
    """What one image contains and how it starts."""

    name: str
    title: str
    description: str
    debs: tuple[str, ...]
    lock: str  # file in images/
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    with_project: bool  # the auditor wheel (True) or only probes/ (False)
    ca_certificates: bool


AUDITOR = ImageSpec(
    name="mesh-auditor",
    title="mesh-auditor",
    description="Continuous proof that an Istio ambient mesh on EKS Auto Mode keeps its zero-trust promises",
    debs=(f"{PYTHON}-minimal", f"lib{PYTHON}-stdlib", "ca-certificates"),
    lock="auditor.lock",
    entrypoint=("auditor",),
    cmd=("daemon",),
    with_project=True,
    ca_certificates=True,
)
PROBE = ImageSpec(
    name="mesh-auditor-probe",
    title="mesh-auditor-probe",
    description="The mesh-auditor probe program (python -m probes) and a Python runtime, nothing else",
    debs=(f"{PYTHON}-minimal", f"lib{PYTHON}-stdlib"),
    lock="probe.lock",
    entrypoint=("python3", "-m", "probes"),
    cmd=("--help",),
    with_project=False,
    ca_certificates=False,
)
IMAGES = (AUDITOR, PROBE)


@dataclass(frozen=True)
class Built:
    """One image written to the output directory, with what was measured while building it."""

    spec: ImageSpec
    archive: Path
    sbom: Path
    archive_bytes: int
    rootfs_bytes: int
    build_seconds: float
    reused: bool


def _log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, cwd=cwd)
    if result.returncode != 0:
        raise ImageError(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout)[-4000:]}")
    return result.stdout


def _version() -> str:
    from auditor import __version__  # noqa: PLC0415 - the version of the tree being packaged

    return __version__


def source_date_epoch() -> int:
    """The commit time of HEAD (reproducible timestamps), or 0 outside a git checkout."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        return int(_run(["git", "log", "-1", "--format=%ct"], what="git log", cwd=REPO_ROOT).strip())
    except (ImageError, ValueError, OSError):
        return 0


def fingerprint(spec: ImageSpec) -> str:
    """Hash of every input of ``spec``'s build: recipe, lock, Debian packages, project sources."""
    digest = hashlib.sha256(f"{RECIPE} {spec} {SUITE}".encode())
    digest.update((IMAGES_DIR / spec.lock).read_bytes())
    digest.update(Path(__file__).read_bytes())
    sources = ["probes"] + (["auditor", "pyproject.toml", "README.md"] if spec.with_project else [])
    for relative in sources:
        root = REPO_ROOT / relative
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Building


def build(spec: ImageSpec, out: Path = DEFAULT_OUT) -> Built:
    """Build ``spec`` into ``out`` unless the archive there was built from the same inputs."""
    out.mkdir(parents=True, exist_ok=True)
    archive, sbom, record = out / f"{spec.name}.oci.tar", out / f"{spec.name}.cdx.json", out / f"{spec.name}.build.json"
    wanted = fingerprint(spec)
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    if previous.get("fingerprint") == wanted and archive.is_file() and sbom.is_file():
        return Built(
            spec, archive, sbom, archive.stat().st_size, previous["rootfs_bytes"], previous["build_seconds"], True
        )
    _check_tools()
    started = time.monotonic()
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=out) as scratch:
        work = Path(scratch)
        rootfs = work / "rootfs"
        _log(f"{spec.name}: Debian packages {', '.join(spec.debs)} ({SUITE})")
        _debootstrap(spec, rootfs, epoch)
        _log(f"{spec.name}: Python packages from images/{spec.lock}")
        _install_python(spec, rootfs, work, epoch)
        _finish_rootfs(spec, rootfs)
        rootfs_bytes = _tree_bytes(rootfs)
        layer = work / "layer.tar"
        _write_layer(rootfs, layer, epoch)
        _log(f"{spec.name}: OCI image")
        _oci_archive(spec, layer, work / "oci", archive, epoch)
        _write_sbom(spec, rootfs, sbom, epoch)
    seconds = round(time.monotonic() - started, 1)
    info = {"fingerprint": wanted, "rootfs_bytes": rootfs_bytes, "build_seconds": seconds}
    record.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    _log(f"{spec.name}: {archive} ({archive.stat().st_size / 1e6:.1f} MB) in {seconds:.0f} s")
    return Built(spec, archive, sbom, archive.stat().st_size, rootfs_bytes, seconds, False)


def _check_tools() -> None:
    missing = [tool for tool in ("mmdebstrap", "umoci", "skopeo") if shutil.which(tool) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} not on PATH: run scripts/setup (apt-get install {' '.join(missing)})")
    if os.geteuid() != 0:
        raise ImageError("mmdebstrap's chroot mode needs root: run scripts/image as root")


def _debootstrap(spec: ImageSpec, rootfs: Path, epoch: int) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    argv = [
        "mmdebstrap",
        "--quiet",
        "--variant=extract",
        "--mode=root",
        "--format=directory",
        f"--include={','.join(spec.debs)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        # Keep the downloaded .debs: _record_packages() writes dpkg's status from them.
        "--skip=cleanup/apt/cache",
        SUITE,
        str(rootfs),
        MIRROR,
    ]
    _run(argv, what="mmdebstrap", env=env)
    _record_packages(rootfs)


def _record_packages(rootfs: Path) -> None:
    """Write var/lib/dpkg/status for the unpacked packages (--variant=extract leaves it empty),
    so the SBOM and image scanners (which read it) see exactly what the image holds."""
    debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
    if not debs:
        raise ImageError("mmdebstrap left no .deb files to record")
    stanzas = []
    for deb in debs:
        control = _run(["dpkg-deb", "--field", str(deb)], what=f"dpkg-deb --field {deb.name}").strip()
        stanzas.append(control + "\nStatus: install ok installed")
    (rootfs / "var/lib/dpkg/status").write_text("\n\n".join(stanzas) + "\n", encoding="utf-8")


def _install_python(spec: ImageSpec, rootfs: Path, work: Path, epoch: int) -> None:
    site = rootfs / SITE
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_FIND_LINKS", None)  # only PyPI, only the locked hashes
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-cache-dir", "--target", str(site)]
    # pip matches --platform literally: list every manylinux tag bookworm's glibc (2.36) runs.
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    platform = ["--only-binary=:all:", *(f"--platform={tag}" for tag in tags), "--python-version=3.11"]
    platform += ["--implementation=cp", "--abi=cp311"]
    _run([*pip, *platform, "--require-hashes", "-r", str(IMAGES_DIR / spec.lock)], what="pip install", env=env)
    if spec.with_project:
        wheels = work / "wheel"
        # Build from a clean copy: an in-tree build/ directory could carry modules since deleted.
        source = work / "src"
        for name in ("pyproject.toml", "README.md"):
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
        for package in ("auditor", "probes"):
            shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
        # Build isolation: setuptools comes from PyPI as pyproject's build-system asks.
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(wheels),
                ".",
            ],
            what="pip wheel (the auditor)",
            env=env,
            cwd=source,
        )
        [wheel] = wheels.glob("mesh_auditor-*.whl")
        _run([*pip, str(wheel)], what="pip install (the auditor)", env=env)
        shutil.rmtree(site / "bin", ignore_errors=True)  # scripts with the build host's interpreter
    else:
        shutil.copytree(REPO_ROOT / "probes", site / "probes", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _run(
            [sys.executable, "-m", "compileall", "-q", "--invalidation-mode=unchecked-hash", str(site / "probes")],
            what="compileall probes",
            env=env,
        )
    # Wheels installed for the target may bring these along; the image must not have them.
    for unwanted in ("pip", "setuptools", "_distutils_hack", "wheel", "tests", "testrigs"):
        shutil.rmtree(site / unwanted, ignore_errors=True)
    # kubernetes 37 ships an asyncio copy of its whole client (kubernetes/aio, ~70 MB unpacked);
    # nothing imports it (kubernetes/__init__ does not, the auditor uses the sync client).
    shutil.rmtree(site / "kubernetes" / "aio", ignore_errors=True)
    for pattern in ("pip-*.dist-info", "setuptools-*.dist-info", "wheel-*.dist-info", "distutils-precedence.pth"):
        for path in site.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _finish_rootfs(spec: ImageSpec, rootfs: Path) -> None:
    for relative in PRUNE:
        path = rootfs / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    # --variant=extract runs no maintainer scripts: make what they would have made.
    bin_dir = rootfs / "usr" / "bin"
    for alias in ("python3", "python"):  # probe pods run `python -c ...`
        link = bin_dir / alias
        if not link.exists():
            link.symlink_to(PYTHON)
    etc = rootfs / "etc"
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:65532:65532::/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (rootfs / "tmp").mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    if spec.ca_certificates:
        certs = sorted((rootfs / "usr/share/ca-certificates").rglob("*.crt"))
        if not certs:
            raise ImageError("ca-certificates brought no certificates")
        bundle = etc / "ssl" / "certs" / "ca-certificates.crt"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_text("".join(c.read_text(encoding="utf-8") for c in certs), encoding="utf-8")
    if spec.with_project:
        script = rootfs / "usr/local/bin/auditor"
        script.parent.mkdir(parents=True, exist_ok=True)
        # -I: no PYTHONPATH, no user site, no current directory on sys.path.
        script.write_text(
            f"#!/usr/bin/{PYTHON} -I\nimport sys\n\nfrom auditor.cli import main\n\nsys.exit(main())\n",
            encoding="utf-8",
        )
        script.chmod(0o755)


def _tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _write_layer(rootfs: Path, layer: Path, epoch: int) -> None:
    """One uncompressed layer: sorted entries, root-owned, every mtime clamped to ``epoch``."""

    def entries() -> Iterator[Path]:
        yield from sorted(rootfs.rglob("*"), key=lambda p: str(p.relative_to(rootfs)))

    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries():
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = min(int(info.mtime), epoch) if epoch else int(info.mtime)
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def _oci_archive(spec: ImageSpec, layer: Path, layout: Path, archive: Path, epoch: int) -> None:
    image = f"{layout}:{_version()}"
    created = dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _run(["umoci", "init", "--layout", str(layout)], what="umoci init")
    _run(["umoci", "new", "--image", image], what="umoci new")
    _run(["umoci", "raw", "add-layer", "--no-history", "--image", image, str(layer)], what="umoci raw add-layer")
    labels = {
        "org.opencontainers.image.title": spec.title,
        "org.opencontainers.image.description": spec.description,
        "org.opencontainers.image.version": _version(),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "https://github.com/mesh-auditor/mesh-auditor",
        "org.opencontainers.image.revision": _revision(),
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.base.name": f"debian:{SUITE} (mmdebstrap --variant=extract)",
    }
    config = [
        "umoci",
        "config",
        "--no-history",
        "--image",
        image,
        f"--config.user={USER}",
        "--config.workingdir=/",
        "--config.env=PATH=/usr/local/bin:/usr/bin:/bin",
        "--config.env=PYTHONDONTWRITEBYTECODE=1",
        "--config.env=LANG=C.UTF-8",
        f"--created={created}",
        "--architecture=amd64",
        "--os=linux",
        "--clear=config.entrypoint",
        "--clear=config.cmd",
    ]
    config += [f"--config.entrypoint={part}" for part in spec.entrypoint]
    config += [f"--config.cmd={part}" for part in spec.cmd]
    config += [f"--config.label={key}={value}" for key, value in labels.items()]
    config += [f"--manifest.annotation={key}={value}" for key, value in labels.items()]
    _run(config, what="umoci config")
    _run(["umoci", "gc", "--layout", str(layout)], what="umoci gc")
    temporary = archive.with_suffix(".tmp")
    _tar_directory(layout, temporary, epoch)
    temporary.replace(archive)
    # The archive must be what skopeo reads as oci-archive: (the format registries are fed from).
    _run(["skopeo", "inspect", "--raw", f"oci-archive:{archive}"], what="skopeo inspect")


def _revision() -> str:
    try:
        return _run(["git", "rev-parse", "HEAD"], what="git rev-parse", cwd=REPO_ROOT).strip()
    except (ImageError, OSError):
        return "unknown"


def _tar_directory(directory: Path, target: Path, epoch: int) -> None:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*"), key=lambda p: str(p.relative_to(directory))):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = epoch
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


# ---------------------------------------------------------------------------------------------
# SBOM


def debian_packages(rootfs: Path) -> list[tuple[str, str]]:
    """(name, version) of every package in the root filesystem's dpkg status file."""
    packages = []
    status = rootfs / "var/lib/dpkg/status"
    for stanza in status.read_text(encoding="utf-8").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if "Package" in fields and "Version" in fields:
            packages.append((fields["Package"], fields["Version"]))
    return sorted(packages)


def python_distributions(rootfs: Path) -> list[tuple[str, str]]:
    """(normalized name, version) of every distribution installed in the image's site directory."""
    found = []
    for metadata in sorted((rootfs / SITE).glob("*.dist-info/METADATA")):
        fields = dict(
            line.split(": ", 1)
            for line in metadata.read_text(encoding="utf-8").split("\n\n")[0].splitlines()
            if ": " in line
        )
        # PEP 503 normalized, as purls and package indexes name them.
        found.append((re.sub(r"[-_.]+", "-", fields["Name"]).lower(), fields["Version"]))
    return found


def _write_sbom(spec: ImageSpec, rootfs: Path, target: Path, epoch: int) -> None:
    from cyclonedx.model.bom import Bom  # noqa: PLC0415 - only image builds need the SBOM library
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415
    from cyclonedx.output.json import JsonV1Dot6  # noqa: PLC0415
    from packageurl import PackageURL  # noqa: PLC0415

    bom = Bom()
    bom.metadata.timestamp = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    bom.metadata.component = Component(
        name=spec.name,
        version=_version(),
        type=ComponentType.CONTAINER,
        purl=PackageURL("oci", None, spec.name, _version()),
    )
    components: list[Component] = [
        Component(
            name=name,
            version=version,
            type=ComponentType.LIBRARY if name.startswith("lib") else ComponentType.APPLICATION,
            purl=PackageURL("deb", "debian", name, version, {"arch": "amd64", "distro": f"debian-{SUITE}"}),
        )
        for name, version in debian_packages(rootfs)
    ] + [
        Component(name=name, version=version, type=ComponentType.LIBRARY, purl=PackageURL("pypi", None, name, version))
        for name, version in python_distributions(rootfs)
    ]
    for component in components:
        bom.components.add(component)
    bom.register_dependency(bom.metadata.component, components)
    target.write_text(JsonV1Dot6(bom).output_as_string(indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Locks


def lock() -> None:
    """Re-resolve images/auditor.lock (pyproject's runtime dependencies) and images/probe.lock."""
    uv = shutil.which("uv")
    if uv is None:
        raise ImageError("uv is not on PATH: pip install -e '.[dev]'")
    common = ["--generate-hashes", "--python-version=3.11", "--python-platform=x86_64-manylinux_2_36"]
    common += ["--only-binary=:all:", "--no-header", "--quiet"]
    auditor_lock = IMAGES_DIR / "auditor.lock"
    _run(
        [uv, "pip", "compile", "pyproject.toml", *common, "-o", str(auditor_lock)], what="uv pip compile", cwd=REPO_ROOT
    )
    _run(
        [
            uv,
            "pip",
            "compile",
            "images/probe.in",
            "-c",
            str(auditor_lock),
            *common,
            "-o",
            str(IMAGES_DIR / "probe.lock"),
        ],
        what="uv pip compile (probe)",
        cwd=REPO_ROOT,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/image", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser(
        "build", help="build dist/mesh-auditor.oci.tar and dist/mesh-auditor-probe.oci.tar"
    )
    build_parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: dist/)")
    commands.add_parser("lock", help="re-resolve images/*.lock from PyPI with hashes")
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            lock()
            return 0
        for spec in IMAGES:
            built = build(spec, args.out)
            summary: dict[str, Any] = {
                "image": str(built.archive),
                "sbom": str(built.sbom),
                "archive_mb": round(built.archive_bytes / 1e6, 1),
                "rootfs_mb": round(built.rootfs_bytes / 1e6, 1),
                "build_seconds": built.build_seconds,
                "reused": built.reused,
            }
            print(json.dumps(summary))
    except ImageError as error:
        print(f"image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
