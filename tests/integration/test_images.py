"""The two OCI images: built without a container engine, read by skopeo, run from their root filesystem.

``scripts/image build`` (testrigs.devtools.image) writes dist/*.oci.tar; a build whose inputs
have not changed is reused. Each test copies the archive with skopeo (``oci-archive:``, what a
registry push reads), unpacks it with umoci, and runs the image's own entrypoint from the image
config in a chroot as the image's user: ``auditor --version`` and an offline audit of the
example for the auditor, ``--help`` for the probe program. Needs root and mmdebstrap, umoci,
skopeo (scripts/setup installs them); a missing tool fails, never skips.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from auditor import __version__
from auditor.adapters.probepods.podspec import BOOTSTRAP, PLAN_ENV, TERMINATION_LOG
from testrigs.devtools import image
from testrigs.devtools.image import AUDITOR, PROBE, Built, ImageError, ImageSpec
from tests.cases import ROOT

pytestmark = pytest.mark.image
# Resolved on the host's PATH: the chrooted process gets the image's PATH only.
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


@pytest.fixture(scope="session")
def built() -> dict[str, Built]:
    try:
        return {spec.name: image.build(spec) for spec in (AUDITOR, PROBE)}
    except ImageError as error:
        pytest.fail(f"scripts/image build failed: {error}")


def _image_config(archive: Path) -> dict[str, Any]:
    """The image's OCI config (User, Entrypoint, Cmd, Env, Labels) as skopeo reads it."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{archive}"], check=True, capture_output=True, text=True
    ).stdout
    config: dict[str, Any] = json.loads(raw)["config"]
    return config


def _unpack(archive: Path, target: Path) -> Path:
    """skopeo copy oci-archive: -> OCI layout, then umoci unpack: the image's root filesystem."""
    layout = target / "layout"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci-archive:{archive}", f"oci:{layout}:test"], check=True, capture_output=True
    )
    bundle = target / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:test", str(bundle)], check=True, capture_output=True)
    return bundle / "rootfs"


@dataclass(frozen=True)
class Unpacked:
    rootfs: Path
    config: dict[str, Any]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The image's entrypoint with ``args``, chrooted, as the image's user, with its env only."""
        env = dict(item.split("=", 1) for item in self.config["Env"])
        argv = [CHROOT, f"--userspec={self.config['User']}", str(self.rootfs), *self.config["Entrypoint"], *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=120)


@pytest.fixture(scope="session")
def auditor_image(built: dict[str, Built], tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    archive = built[AUDITOR.name].archive
    return Unpacked(_unpack(archive, tmp_path_factory.mktemp("auditor-image")), _image_config(archive))


@pytest.fixture(scope="session")
def probe_image(built: dict[str, Built], tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    archive = built[PROBE.name].archive
    return Unpacked(_unpack(archive, tmp_path_factory.mktemp("probe-image")), _image_config(archive))


def test_auditor_image_config_is_non_root_with_labels(auditor_image: Unpacked) -> None:
    config = auditor_image.config
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["auditor"]
    assert config["Cmd"] == ["daemon"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "mesh-auditor"
    assert labels["org.opencontainers.image.version"] == __version__
    for key in ("source", "revision", "created", "licenses", "description"):
        assert labels[f"org.opencontainers.image.{key}"]


def test_auditor_image_runs_its_entrypoint(auditor_image: Unpacked) -> None:
    result = auditor_image.run("--version")
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_auditor_image_audits_the_example_offline(auditor_image: Unpacked) -> None:
    """The walkthrough's final state passes inside the image as on the host (exit 0), the
    drifted one fails (exit 1): the image carries everything an audit needs."""
    inputs = auditor_image.rootfs / "tmp" / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    for name in ("retail-store", "retail-store-drifted"):
        shutil.copytree(ROOT / "examples" / name, inputs / name)
    shutil.copy(ROOT / "rules" / "retail-store.yaml", inputs / "rules.yaml")
    good = auditor_image.run("check", "--manifests", "/tmp/inputs/retail-store", "--rules", "/tmp/inputs/rules.yaml")
    assert good.returncode == 0, good.stdout + good.stderr
    drifted = auditor_image.run(
        "check",
        "--manifests",
        "/tmp/inputs/retail-store-drifted",
        "--rules",
        "/tmp/inputs/rules.yaml",
        "--output",
        "json",
    )
    assert drifted.returncode == 1, drifted.stderr
    assert any(f["status"] == "fail" for f in json.loads(drifted.stdout)["findings"])


def test_auditor_image_imports_everything_the_daemon_uses(auditor_image: Unpacked) -> None:
    """The daemon's composition root and its SDKs import, and boto3 finds its service models."""
    code = (
        "import auditor.app.daemon, kubernetes.client, kubernetes.watch, slack_sdk, boto3\n"
        "for service in ('s3', 'securityhub', 'cloudwatch', 'eks', 'sts'):\n"
        "    boto3.session.Session(region_name='eu-west-1').client(service)\n"
        "print('ok')"
    )
    env = dict(item.split("=", 1) for item in auditor_image.config["Env"])
    argv = [CHROOT, f"--userspec={auditor_image.config['User']}", str(auditor_image.rootfs), "python3", "-c", code]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_auditor_image_has_no_pip_setuptools_tests_or_lab(auditor_image: Unpacked) -> None:
    rootfs = auditor_image.rootfs
    site = rootfs / image.SITE
    assert (site / "auditor" / "cli.py").is_file()
    for unwanted in ("pip", "setuptools", "tests", "testrigs", "envoy", "pytest", "mypy"):
        assert not (site / unwanted).exists(), unwanted
    assert not list(rootfs.glob("usr/lib/python3*/ensurepip"))
    assert not (rootfs / "bin" / "sh").exists()
    assert not (rootfs / "usr" / "bin" / "sh").exists()
    assert (rootfs / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 100_000


def test_probe_image_runs_the_probe_program(probe_image: Unpacked) -> None:
    rootfs = probe_image.rootfs
    result = probe_image.run("--help")
    assert result.returncode == 0, result.stderr
    assert "--plan" in result.stdout
    # Probe pods start it with `python -c <bootstrap>` (auditor.adapters.probepods.podspec).
    assert (rootfs / "usr" / "bin" / "python").exists()


def test_probe_image_runs_a_plan_the_way_probe_pods_start_it(probe_image: Unpacked) -> None:
    """The pod's own command (``python -c`` bootstrap, plan in the environment) against a real
    HTTP server on loopback: the request succeeds and the termination message is written."""

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The kubelet provides the termination-log file, writable by the pod's user.
    log = probe_image.rootfs / TERMINATION_LOG.lstrip("/")
    log.write_text("", encoding="utf-8")
    uid, gid = (int(part) for part in probe_image.config["User"].split(":"))
    os.chown(log, uid, gid)
    plan = {"run_id": "run-1", "requests": [{"id": "r1", "url": f"http://127.0.0.1:{server.server_address[1]}/"}]}
    env = dict(item.split("=", 1) for item in probe_image.config["Env"])
    env[PLAN_ENV] = json.dumps(plan)
    argv = [CHROOT, f"--userspec={probe_image.config['User']}", str(probe_image.rootfs), "python", "-c", BOOTSTRAP]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    [outcome] = json.loads(result.stdout)["results"]
    assert (outcome["id"], outcome["outcome"]) == ("r1", "allowed")
    assert "run-1" in log.read_text(encoding="utf-8")


def test_probe_image_has_only_python_and_the_probe_program(probe_image: Unpacked) -> None:
    rootfs = probe_image.rootfs
    site = rootfs / image.SITE
    packages = {p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")}
    assert "probes" in packages
    assert "auditor" not in packages
    distributions = {name for name, _ in image.python_distributions(rootfs)}
    assert distributions == {
        "annotated-types",
        "anyio",
        "certifi",
        "h11",
        "httpcore",
        "httpx",
        "idna",
        "pydantic",
        "pydantic-core",
        "typing-extensions",
        "typing-inspection",
    }


@pytest.mark.parametrize("spec", [AUDITOR, PROBE], ids=lambda s: s.name)
def test_sbom_lists_every_debian_package_and_python_distribution(
    built: dict[str, Built], spec: ImageSpec, tmp_path: Path
) -> None:
    sbom = json.loads(built[spec.name].sbom.read_text(encoding="utf-8"))
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == spec.name
    purls = {c["purl"].split("@")[0] for c in sbom["components"]}
    rootfs = _unpack(built[spec.name].archive, tmp_path)
    assert {f"pkg:deb/debian/{name}" for name, _ in image.debian_packages(rootfs)} <= purls
    assert {f"pkg:pypi/{name}" for name, _ in image.python_distributions(rootfs)} <= purls
    assert "pkg:deb/debian/python3.11-minimal" in purls


def test_probe_image_is_smaller_than_the_auditor_image(built: dict[str, Built]) -> None:
    assert built[PROBE.name].archive_bytes < built[AUDITOR.name].archive_bytes
    assert built[PROBE.name].archive_bytes < 30_000_000
