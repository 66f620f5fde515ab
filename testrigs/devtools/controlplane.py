"""Build and run a real Kubernetes control plane (etcd + kube-apiserver) for integration tests.

Role: the integration tests need an API server that stores, schema-validates and authorizes Istio
and Gateway API objects exactly as a cluster does, but no cluster. This module builds etcd,
kube-apiserver and kubectl from the Go module pinned in ``tools/controlplane`` (its go.mod is the
single source of the versions), caches the binaries outside the repository, and starts and stops
the two servers on loopback with freshly generated certificates. It is developer tooling: the
auditor never imports it.

Commands (``scripts/controlplane CMD`` or ``python3 -m testrigs.devtools.controlplane CMD``):

* ``build``: build etcd, kube-apiserver and kubectl, then pilot-discovery and istioctl
  (``testrigs.devtools.istio``), once each into
  ``${MESH_AUDITOR_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/mesh-auditor/controlplane/<versions>/bin``;
  a warm call returns at once. ``--ztunnel [--ztunnel-source ARCHIVE]`` also builds ztunnel with
  cargo into ``.../mesh-auditor/ztunnel-<sha256[:12]>/bin`` (``testrigs.devtools.ztunnel``).
* ``up``: build if needed, start etcd and kube-apiserver (RBAC, ValidatingAdmissionPolicy,
  service-account token signing), install Istio's and Gateway API's CRDs from the Go module cache
  (``istio.crd_manifests``) and wait until they are Established and ``/readyz`` is ok. With
  ``--istio``, also start istiod against it (``testrigs.devtools.istio``). Prints the
  kubeconfig path as the last line of stdout; progress goes to stderr. The state (pids, logs,
  certificates, kubeconfig, etcd data) lives in ``--state-dir``, default
  ``${MESH_AUDITOR_STATE:-/tmp/mesh-auditor-controlplane}``. If that state dir already holds a
  healthy control plane, ``up`` only prints its kubeconfig path.
* ``down``: stop the recorded processes (SIGTERM, then SIGKILL) and remove the state dir; safe to
  repeat. ``env``: print ``export KUBECONFIG=...`` and ``export PATH=<bin dir>:"$PATH"``.
  ``status``: report, exit 0 only when healthy.

What this control plane lacks, and what tests must therefore expect: there is no kubelet,
scheduler or kube-controller-manager.

* No ServiceAccount controller: a new namespace gets no ``default`` ServiceAccount, and the
  ServiceAccount admission plugin (left enabled because real clusters run it) rejects a pod whose
  ServiceAccount does not exist. Create the ServiceAccount before the pod.
* No namespace controller: a deleted namespace stays Terminating forever. Never reuse a namespace
  name, and delete the objects in a namespace explicitly.
* No garbage collector, no workload controllers (a Deployment makes no pods), pods are never
  scheduled or run, Services get no EndpointSlices, and no ``kube-root-ca.crt`` ConfigMap is
  published.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testrigs.devtools import processes
from testrigs.devtools.processes import TrackedProcess

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO_ROOT = Path(__file__).resolve().parents[2]
GO_MODULE_DIR = REPO_ROOT / "tools" / "controlplane"
# Files whose change must rebuild the binaries even when the pinned versions stay the same.
BUILD_INPUTS = ("go.mod", "go.sum", "cmd/etcd/main.go")
# go build names each binary after the last element of its package path.
BUILD_TARGETS = (
    "./cmd/etcd",
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kubectl",
)
# The tags of Kubernetes' own release build (hack/lib/golang.sh) for non-debug binaries.
GO_BUILD_TAGS = "selinux,notest,grpcnotrace"
# Kubernetes' release build (hack/lib/version.sh) stamps the version into both packages.
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
# Bump when the build recipe changes so that cached binaries are rebuilt.
BUILD_RECIPE = "1"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
# The servers up starts, in start order; the tails of their logs explain a failed start.
SERVER_NAMES = ("etcd", "kube-apiserver")


class ControlPlaneError(Exception):
    """A step of building, starting or stopping the control plane failed; the message says which."""


def _log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Pinned versions


@dataclass(frozen=True)
class Pins:
    """The released versions that tools/controlplane/go.mod pins."""

    kubernetes: str
    etcd: str

    @property
    def cache_key(self) -> str:
        return f"k8s-{self.kubernetes}-etcd-{self.etcd}"


def read_pins(go_mod: Path | None = None) -> Pins:
    """Read the Kubernetes and etcd versions from the wrapper module's go.mod."""
    text = (go_mod or GO_MODULE_DIR / "go.mod").read_text(encoding="utf-8")
    pins = Pins(
        kubernetes=_required_version(text, "k8s.io/kubernetes"),
        etcd=_required_version(text, "go.etcd.io/etcd/server/v3"),
    )
    _check_staging_tags(text, pins.kubernetes)
    return pins


def _required_version(go_mod_text: str, module: str) -> str:
    pattern = rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)"
    match = re.search(pattern, go_mod_text, re.MULTILINE)
    if match is None:
        raise ControlPlaneError(f"tools/controlplane/go.mod does not require {module}")
    return match.group(1)


def _check_staging_tags(go_mod_text: str, kubernetes: str) -> None:
    # k8s.io/kubernetes v1.X.Y matches its staging modules only at v0.X.Y; any other tag still
    # compiles but yields an API server that mixes two releases.
    expected = "v0." + kubernetes.removeprefix("v1.")
    pattern = r"^\s*(k8s\.io/\S+)\s+=>\s+k8s\.io/\S+\s+(v\S+)"
    replaced = re.findall(pattern, go_mod_text, re.MULTILINE)
    wrong = [f"{module} {version}" for module, version in replaced if version != expected]
    if not replaced or wrong:
        raise ControlPlaneError(
            f"tools/controlplane/go.mod must replace every k8s.io staging module with {expected} "
            f"to match k8s.io/kubernetes {kubernetes}; wrong: {', '.join(wrong) or 'none found'}"
        )


# ---------------------------------------------------------------------------------------------
# Building the binaries


@dataclass(frozen=True)
class Binaries:
    """The three binaries of one build, all in one directory."""

    directory: Path

    @property
    def etcd(self) -> Path:
        return self.directory / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.directory / "kube-apiserver"

    @property
    def kubectl(self) -> Path:
        return self.directory / "kubectl"

    def all(self) -> tuple[Path, Path, Path]:
        return (self.etcd, self.kube_apiserver, self.kubectl)


def cache_root() -> Path:
    """The per-user cache for built binaries: never inside the repository."""
    base = os.environ.get("MESH_AUDITOR_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base or Path.home() / ".cache") / "mesh-auditor" / "controlplane"


def binary_dir(pins: Pins) -> Path:
    directory = cache_root() / pins.cache_key / "bin"
    if directory.resolve().is_relative_to(REPO_ROOT):
        raise ControlPlaneError(f"the binary cache {directory} must be outside the repository")
    return directory


def build(pins: Pins | None = None) -> Binaries:
    """Build etcd, kube-apiserver and kubectl into the cache unless they are there already."""
    pins = pins or read_pins()
    binaries = Binaries(binary_dir(pins))
    fingerprint = _fingerprint()
    if is_built(binaries, fingerprint):
        return binaries
    with _file_lock(binaries.directory.parent / "build.lock"):
        # Another process may have finished the same build while this one waited for the lock.
        if not is_built(binaries, fingerprint):
            _build_into(binaries.directory, pins, fingerprint)
    return binaries


class BuiltBinaries(Protocol):
    """A cache directory of built binaries (``Binaries``, ``istio.IstioBinaries``)."""

    @property
    def directory(self) -> Path: ...

    def all(self) -> Sequence[Path]: ...


def build_info(binaries: BuiltBinaries) -> dict[str, Any]:
    """What build() recorded next to the binaries: versions they report, toolchain, inputs."""
    try:
        info: dict[str, Any] = json.loads((binaries.directory / "build.json").read_text())
    except (OSError, ValueError):
        return {}
    return info


def recipe_fingerprint(recipe: str, tags: str, module_dir: Path, inputs: Sequence[str]) -> str:
    """SHA-256 over a build recipe, its tags and the pinning files (go.mod, go.sum) that decide it."""
    digest = hashlib.sha256(f"{recipe} {tags}".encode())
    for name in inputs:
        digest.update(name.encode())
        digest.update((module_dir / name).read_bytes())
    return digest.hexdigest()


def is_built(binaries: BuiltBinaries, fingerprint: str) -> bool:
    """The binaries exist, are executable and were built from exactly this recipe."""
    if build_info(binaries).get("fingerprint") != fingerprint:
        return False
    return all(os.access(path, os.X_OK) for path in binaries.all())


def _fingerprint() -> str:
    return recipe_fingerprint(BUILD_RECIPE, GO_BUILD_TAGS, GO_MODULE_DIR, BUILD_INPUTS)


def _build_into(target: Path, pins: Pins, fingerprint: str) -> None:
    go = shutil.which("go")
    if go is None:
        raise ControlPlaneError("'go' is not on PATH: Go >= 1.24 is needed to build the binaries")
    env = _go_env()
    started = time.monotonic()
    _log(
        f"building kube-apiserver and kubectl {pins.kubernetes} and etcd {pins.etcd} into "
        f"{target} (a cold build takes 4-8 min on an idle 2-core machine, 20-30 min under load)"
    )
    _run_go([go, "mod", "download"], env, "go mod download")
    ldflags = _ldflags(pins, _release_date(go, env))
    # Build next to the target and rename, so no reader ever sees a partial set of binaries.
    staging = Path(tempfile.mkdtemp(prefix=".bin-", dir=target.parent))
    try:
        argv = [go, "build", "-trimpath", "-tags", GO_BUILD_TAGS, "-ldflags", ldflags]
        _run_go([*argv, "-o", f"{staging}{os.sep}", *BUILD_TARGETS], env, "go build")
        versions = _check_versions(Binaries(staging), pins)
        go_version = _output([go, "env", "GOVERSION"], env).strip()
        info = {"fingerprint": fingerprint, "go": go_version, "versions": versions}
        (staging / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log(f"built in {time.monotonic() - started:.0f} s")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Static binaries, the module's own go.sum only, no workspace or VCS stamping from the
    # surrounding repository: the build must not depend on the developer's Go settings.
    env.update(CGO_ENABLED="0", GOWORK="off", GOFLAGS="-mod=readonly -buildvcs=false")
    return env


def _run_go(argv: Sequence[str], env: dict[str, str], what: str, cwd: Path = GO_MODULE_DIR) -> None:
    _log(f"{what} ...")
    started = time.monotonic()
    # Go's own output goes to fd 2: stdout is reserved for the command's result.
    with subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=2, stderr=2) as process:
        while True:
            try:
                code = process.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                _log(f"{what}: still running after {time.monotonic() - started:.0f} s")
    if code != 0:
        raise ControlPlaneError(f"{what} failed with exit code {code}; its output is above")


def _output(argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path = GO_MODULE_DIR) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"{shlex.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def _release_date(go: str, env: dict[str, str]) -> str:
    # The release's publication time stands in for the build date, so rebuilding the same pins
    # gives the same /version answer.
    listing = json.loads(_output([go, "list", "-m", "-json", "k8s.io/kubernetes"], env))
    stamp = listing.get("Time")
    return stamp if isinstance(stamp, str) else "1970-01-01T00:00:00Z"


def _ldflags(pins: Pins, build_date: str) -> str:
    major, minor = pins.kubernetes.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": pins.kubernetes,
        "gitMajor": major,
        "gitMinor": minor,
        # The source comes from the module proxy's archive, which carries no commit id.
        "gitCommit": "",
        "gitTreeState": "archive",
        "buildDate": build_date,
    }
    stamps = [f"-X {pkg}.{key}={v}" for pkg in VERSION_PACKAGES for key, v in values.items()]
    # -s -w: no symbol table or DWARF, as in Kubernetes' release build.
    return " ".join(["-s", "-w", *stamps])


def _check_versions(binaries: Binaries, pins: Pins) -> dict[str, str]:
    reported = {
        "etcd": _output([str(binaries.etcd), "--version"]).strip(),
        "kube-apiserver": _output([str(binaries.kube_apiserver), "--version"]).strip(),
        "kubectl": _output([str(binaries.kubectl), "version", "--client"]).strip(),
    }
    expected = {
        "etcd": pins.etcd.removeprefix("v"),
        "kube-apiserver": pins.kubernetes,
        "kubectl": pins.kubernetes,
    }
    wrong = [
        f"{name}: {reported[name]!r}" for name, version in expected.items() if version not in reported[name].split()
    ]
    if wrong:
        raise ControlPlaneError(f"built binaries report unexpected versions: {'; '.join(wrong)}")
    return reported


def _replace_dir(new: Path, target: Path) -> None:
    # rename() cannot replace a non-empty directory, so a stale build is first moved aside.
    if target.exists():
        graveyard = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))
        target.rename(graveyard / "bin")
        new.rename(target)
        shutil.rmtree(graveyard, ignore_errors=True)
    else:
        new.rename(target)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfig


@dataclass(frozen=True)
class Pki:
    """File layout of the generated CA, serving, admin and service-account keys."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"


def make_pki(directory: Path) -> Pki:
    """Generate a CA, the API server's serving cert, an admin client cert and SA keys."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = Pki(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key)
    _write_file(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _issue(
        pki.server_cert,
        pki.server_key,
        ca=(ca_cert, ca_key),
        subject=_name("kube-apiserver"),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=_server_names(),
    )
    # O=system:masters: the group that RBAC's bootstrap policy binds to cluster-admin.
    _issue(
        pki.admin_cert,
        pki.admin_key,
        ca=(ca_cert, ca_key),
        subject=_name("admin", "system:masters"),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        names=[],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_file(pki.sa_key, _private_pem(sa_key))
    _write_file(
        pki.sa_pub,
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return pki


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _server_names() -> list[x509.GeneralName]:
    # The API server claims the first address of the range for the kubernetes Service.
    first_service_ip = ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE)[1]
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    ips = [ipaddress.ip_address("127.0.0.1"), first_service_ip]
    return [*(x509.DNSName(name) for name in dns), *(x509.IPAddress(ip) for ip in ips)]


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))  # tolerate small clock differences
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = _name("mesh-auditor-controlplane-ca")
    builder = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
    )
    return builder.sign(key, hashes.SHA256())


def _issue(
    cert_path: Path,
    key_path: Path,
    *,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    _write_file(key_path, _private_pem(key))
    _write_file(cert_path, builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_file(path: Path, content: bytes) -> None:
    # Owner-only: the keys and the admin kubeconfig grant cluster-admin.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def _write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    def data(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    # Certificates are embedded so the kubeconfig stays usable if copied elsewhere.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "mesh-auditor",
                "cluster": {"server": server, "certificate-authority-data": data(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": data(pki.admin_cert),
                    "client-key-data": data(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "mesh-auditor",
                "context": {"cluster": "mesh-auditor", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "mesh-auditor",
    }
    _write_file(path, yaml.safe_dump(config, sort_keys=False).encode())


# ---------------------------------------------------------------------------------------------
# Processes


# Servers are the shared tracked processes (testrigs/devtools/processes.py): pid plus start time.
Process = TrackedProcess


def _spawn(name: str, argv: Sequence[str], log_path: Path) -> Process:
    return processes.spawn(name, argv, log_path)


def _stop(process: Process) -> None:
    if not process.running():
        return
    _log(f"stopping {process.name} (pid {process.pid})")
    if not processes.stop(process, STOP_TIMEOUT_S):
        raise ControlPlaneError(f"{process.name} (pid {process.pid}) survived SIGKILL")


def _free_ports(count: int) -> list[int]:
    # Ports below the kernel's ephemeral range: an outgoing connection (the API server's own
    # etcd clients) can then never take a port chosen here before its server binds it.
    low = _ephemeral_low()
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(10_000, low - 1)  # noqa: S311 - not security relevant
        if port not in chosen and _bindable(port):
            chosen.append(port)
    return chosen


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return max(low, 12_000)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# State directory


@dataclass(frozen=True)
class StateDir:
    """Layout of one control plane's state: pids, logs, certificates, kubeconfig, etcd data."""

    path: Path

    @property
    def record(self) -> Path:
        return self.path / "state.json"

    @property
    def marker(self) -> Path:
        # Its presence is what allows down to delete the directory.
        return self.path / ".mesh-auditor-controlplane"

    @property
    def kubeconfig(self) -> Path:
        return self.path / "kubeconfig"

    @property
    def pki(self) -> Pki:
        return Pki(self.path / "pki")

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.path / "etcd"

    @property
    def lock(self) -> Path:
        # Beside, not inside, the directory: down deletes the directory while holding the lock.
        return self.path.parent / f".{self.path.name}.lock"


def default_state_dir() -> Path:
    explicit = os.environ.get("MESH_AUDITOR_STATE")
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / "mesh-auditor-controlplane"


def _state(state_dir: Path | None) -> StateDir:
    return StateDir((state_dir or default_state_dir()).absolute())


def _load_record(state: StateDir) -> dict[str, Any]:
    try:
        record = json.loads(state.record.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _save_record(state: StateDir, record: dict[str, Any]) -> None:
    temporary = state.record.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(state.record)  # atomic: a reader never sees half a record


def _processes(record: dict[str, Any]) -> list[Process]:
    return [Process.from_json(p) for p in record.get("processes", [])]


def recorded_process(name: str, state_dir: Path | None = None) -> Process | None:
    """The process ``name`` (``etcd``, ``kube-apiserver``, ``istiod``...) that ``up`` recorded, or None."""
    return next((p for p in _processes(_load_record(_state(state_dir))) if p.name == name), None)


# ---------------------------------------------------------------------------------------------
# up / down / status


def crd_manifests() -> list[Path]:
    """The CRD manifests up installs, from the Go module cache (``istio.crd_manifests``)."""
    from testrigs.devtools import istio  # noqa: PLC0415 - istio imports this module

    return istio.crd_manifests()


def up(
    state_dir: Path | None = None,
    *,
    istio: bool = False,
    stand_in_args: Sequence[str] = (),
    cacerts: Path | None = None,
    stand_in: bool = True,
) -> Path:
    """Start the control plane in state_dir unless it is up already; return the kubeconfig.

    With ``istio``, also start istiod against it (``testrigs.devtools.istio``), or add istiod to
    a healthy control plane that runs without it. ``stand_in_args`` go to the workload stand-in's
    command line (``--node-name``, ``--pod-cidr``: the lab's real-ztunnel node uses them).
    ``cacerts``: a directory with ``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem`` and
    ``cert-chain.pem``, plugged into istiod as its signing CA (what the chart mounts from the
    ``cacerts`` Secret at ``./etc/cacerts``); without it istiod makes its own self-signed root.
    ``stand_in=False`` starts istiod without the workload stand-in: for a caller that is the
    controller-manager, kubelet and istio-cni itself (the emulated mesh lab's ``controllers``).
    """
    state = _state(state_dir)
    with _file_lock(state.lock):
        if is_healthy(state.path):
            if istio and not _load_record(state).get("istiod"):
                _start_istiod(state, build(), stand_in_args, cacerts, stand_in=stand_in)
            _log(f"already up (state in {state.path})")
            return state.kubeconfig
        _teardown(state)  # leftovers of a crashed or half-finished start
        binaries = build()
        manifests = crd_manifests()
        started = time.monotonic()
        _start(state, binaries, manifests)
        _log(f"up in {time.monotonic() - started:.1f} s; state in {state.path}")
        if istio:
            _start_istiod(state, binaries, stand_in_args, cacerts, stand_in=stand_in)
        return state.kubeconfig


def _start_istiod(
    state: StateDir,
    binaries: Binaries,
    stand_in_args: Sequence[str] = (),
    cacerts: Path | None = None,
    *,
    stand_in: bool = True,
) -> None:
    from testrigs.devtools import istio  # noqa: PLC0415 - istio imports this module

    istio_binaries = istio.build()
    record = _load_record(state)
    kubectl = [str(binaries.kubectl), f"--kubeconfig={state.kubeconfig}", f"--cache-dir={state.path / 'kubectl-cache'}"]
    started = time.monotonic()
    istio.apply_objects(kubectl, istio.istiod_objects(istio.chart_dir("istio-control/istio-discovery")))
    # Pods for Deployments (waypoints included), pod IPs and Ready, EndpointSlices, istio-cni's
    # redirection annotation: what the missing controller-manager, kubelet and istio-cni would
    # give istiod and the auditor (podexecutor.WorkloadStandIn).
    stand_in_process: Process | None = None
    if stand_in:
        stand_in_argv = [
            sys.executable,
            "-m",
            "testrigs.devtools.podexecutor",
            f"--kubeconfig={state.kubeconfig}",
            f"--cni-selectors={json.dumps(istio.cni_enablement_selectors())}",
            *stand_in_args,
        ]
        stand_in_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        stand_in_process = processes.spawn(
            "workload-stand-in", stand_in_argv, state.logs / "workload-stand-in.log", env=stand_in_env
        )
        record["processes"].append(
            {"name": stand_in_process.name, "pid": stand_in_process.pid, "start_ticks": stand_in_process.start_ticks}
        )
        _save_record(state, record)
    ports = istio.IstiodPorts(*_free_ports(6))
    workdir = state.path / "istiod"
    workdir.mkdir(exist_ok=True)  # istiod writes relative paths (./var/run/secrets...) here
    if cacerts is not None:
        plugged = workdir / "etc" / "cacerts"
        plugged.mkdir(parents=True, mode=0o700)
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
            shutil.copyfile(cacerts / name, plugged / name)
    log_path = state.logs / "istiod.log"
    # istiod reads and writes paths relative to its working directory (./var/run/secrets/istio-dns,
    # ./etc/cacerts...); posix_spawn cannot change directory, env -C does and then execs istiod.
    argv = [
        shutil.which("env") or "/usr/bin/env",
        "-C",
        str(workdir),
        *istio.istiod_args(istio_binaries, state.kubeconfig, ports),
    ]
    process = processes.spawn("istiod", argv, log_path, env=istio.istiod_env(state.kubeconfig))
    record["processes"].append({"name": "istiod", "pid": process.pid, "start_ticks": process.start_ticks})
    record["istiod"] = {"ports": ports.as_json()}
    _save_record(state, record)
    try:
        ready_s = istio.wait_istiod(process, ports.http, log_path, istio.ISTIOD_READY_TIMEOUT_S)
    except BaseException:
        _stop(process)
        if stand_in_process is not None:
            _stop(stand_in_process)
        raise
    version = istio.binary_version(istio_binaries)
    # The Deployment Istio's chart would have installed, stamped with the built binary's version:
    # what a live audit reads to say which Istio the cluster runs (core.istioversion).
    istio.apply_objects(kubectl, istio.istiod_workload(version))
    record["istiod"].update(ready_seconds=round(time.monotonic() - started, 1), version=version)
    _save_record(state, record)
    _log(
        f"istiod {version} ready in {ready_s:.1f} s ({time.monotonic() - started:.1f} s with its ConfigMaps); "
        f"debug http://127.0.0.1:{ports.http}, plaintext XDS 127.0.0.1:{ports.grpc}, "
        f"RSS {istio.rss_bytes(process.pid) / 2**20:.0f} MiB"
    )


def istiod_ports(state_dir: Path | None = None) -> dict[str, int]:
    """The loopback ports of the istiod that ``up --istio`` started in state_dir ({} if none)."""
    ports: dict[str, int] = (_load_record(_state(state_dir)).get("istiod") or {}).get("ports") or {}
    return ports


def down(state_dir: Path | None = None) -> bool:
    """Stop what up started in state_dir and delete the directory; False if nothing was there."""
    state = _state(state_dir)
    if not state.path.exists():
        _log(f"nothing to stop: {state.path} does not exist")
        return False
    with _file_lock(state.lock):
        _teardown(state)
    _log(f"stopped; removed {state.path}")
    return True


def is_healthy(state_dir: Path | None = None) -> bool:
    """True when every recorded server runs, CRDs are installed and /readyz answers ok."""
    state = _state(state_dir)
    record = _load_record(state)
    processes = _processes(record)
    if not record.get("crds_installed") or not processes or not state.kubeconfig.exists():
        return False
    if not all(process.running() for process in processes):
        return False
    if record.get("istiod") and record["istiod"].get("ready_seconds") is None:
        return False  # istiod was being started when its up died
    return _probe(f"{record['server']}/readyz", _tls_context(state.pki)) == "ok"


def status(state_dir: Path | None = None) -> tuple[bool, str]:
    """Whether the control plane in state_dir is healthy, and a short human-readable report."""
    state = _state(state_dir)
    record = _load_record(state)
    healthy = is_healthy(state.path)
    fields = [("state dir", str(state.path)), ("healthy", "yes" if healthy else "no")]
    if record:
        fields += [("server", str(record.get("server"))), ("kubeconfig", str(state.kubeconfig))]
        fields += [(p.name, f"pid {p.pid} {'running' if p.running() else 'gone'}") for p in _processes(record)]
    pins = read_pins()
    binaries = Binaries(binary_dir(pins))
    built = "built" if is_built(binaries, _fingerprint()) else "not built"
    fields.append(("binaries", f"{binaries.directory} ({pins.cache_key}, {built})"))
    from testrigs.devtools import istio  # noqa: PLC0415 - istio imports this module

    istio_pins = istio.read_pins()
    istio_built = "built" if istio.is_built(istio_pins) else "not built"
    fields.append(("istio binaries", f"{istio.binary_dir(istio_pins)} ({istio_built})"))
    if record.get("istiod"):
        fields.append(("istiod", f"ports {record['istiod'].get('ports')}"))
    return healthy, "\n".join(f"{name + ':':<16}{value}" for name, value in fields)


def _teardown(state: StateDir) -> None:
    # The API server goes first so that it does not log etcd errors while shutting down.
    for process in reversed(_processes(_load_record(state))):
        _stop(process)
    if not state.path.exists():
        return
    if not state.marker.exists() and any(state.path.iterdir()):
        raise ControlPlaneError(f"refusing to delete {state.path}: it is not a control plane state directory")
    shutil.rmtree(state.path)


def _start(state: StateDir, binaries: Binaries, manifests: Sequence[Path]) -> None:
    state.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    state.marker.touch()
    state.logs.mkdir()
    etcd_port, peer_port, api_port = _free_ports(3)
    server = f"https://127.0.0.1:{api_port}"
    pki = make_pki(state.pki.directory)
    _write_kubeconfig(state.kubeconfig, server, pki)
    record: dict[str, Any] = {"server": server, "processes": [], "crds_installed": False}
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    commands = {
        "etcd": _etcd_args(binaries, state, etcd_url, f"http://127.0.0.1:{peer_port}"),
        "kube-apiserver": _apiserver_args(binaries, state, etcd_url, api_port),
    }
    try:
        _launch(state, record, commands)
        _wait_ready(server, state)
        _install_crds(binaries, state, manifests)
    except BaseException:
        # Stop the servers but keep the logs for the post-mortem; the next up or down deletes them.
        for process in reversed(_processes(record)):
            _stop(process)
        raise
    record["crds_installed"] = True
    _save_record(state, record)


def _launch(state: StateDir, record: dict[str, Any], commands: dict[str, list[str]]) -> None:
    # etcd and the API server start together: the API server retries etcd until it answers.
    for name, argv in commands.items():
        process = _spawn(name, argv, state.logs / f"{name}.log")
        record["processes"].append({"name": name, "pid": process.pid, "start_ticks": process.start_ticks})
        # Saved after each start so that down finds every pid even if up dies half-way.
        _save_record(state, record)


def _etcd_args(binaries: Binaries, state: StateDir, client_url: str, peer_url: str) -> list[str]:
    return [
        str(binaries.etcd),
        "--name=controlplane",
        f"--data-dir={state.etcd_data}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=controlplane={peer_url}",
        # The data is thrown away with the state dir; fsync is most of etcd's write latency.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def _apiserver_args(binaries: Binaries, state: StateDir, etcd_url: str, port: int) -> list[str]:
    pki = state.pki
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki.directory}",
        f"--tls-cert-file={pki.server_cert}",
        f"--tls-private-key-file={pki.server_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        # The default admission plugins stay, ServiceAccount and ValidatingAdmissionPolicy
        # included; the API group is named only to fail loudly should its default change.
        "--runtime-config=admissionregistration.k8s.io/v1=true",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",  # ztunnel and istio-cni run privileged
        "--profiling=false",
    ]


def _tls_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def _probe(url: str, context: ssl.SSLContext) -> str:
    """The body of a GET as the admin, or a one-line description of why there is none."""
    try:
        # The URL is always the https address of the server this module started.
        with urllib.request.urlopen(url, context=context, timeout=5) as response:  # noqa: S310
            return str(response.read().decode(errors="replace")).strip()
    except urllib.error.HTTPError as error:
        with error:
            return f"HTTP {error.code}: {error.read().decode(errors='replace')[-2000:]}"
    except OSError as error:  # also URLError and SSLError: the server is not listening yet
        return f"{type(error).__name__}: {error}"


def _wait_ready(server: str, state: StateDir) -> None:
    context = _tls_context(state.pki)
    processes = _processes(_load_record(state))
    deadline = time.monotonic() + READY_TIMEOUT_S
    answer = "no answer yet"
    while time.monotonic() < deadline:
        dead = [process.name for process in processes if not process.running()]
        if dead:
            raise ControlPlaneError(f"{', '.join(dead)} exited during start-up{_tails(state)}")
        answer = _probe(f"{server}/readyz", context)
        if answer == "ok":
            return
        time.sleep(0.25)
    raise ControlPlaneError(
        f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f} s; last /readyz: {answer}{_tails(state)}"
    )


def _tails(state: StateDir, lines: int = 25) -> str:
    parts = []
    for name in SERVER_NAMES:
        path = state.logs / f"{name}.log"
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"\n--- last lines of {path} ---\n" + "\n".join(tail))
    return "".join(parts)


def _install_crds(binaries: Binaries, state: StateDir, manifests: Sequence[Path]) -> None:
    # The discovery cache goes to the state dir, not to ~/.kube/cache, which would collect one
    # directory per random port.
    cache = f"--cache-dir={state.path / 'kubectl-cache'}"
    kubectl = [str(binaries.kubectl), f"--kubeconfig={state.kubeconfig}", cache]
    # Server-side apply: the Istio CRDs are too large for the last-applied annotation that
    # client-side apply would write.
    apply = [
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=mesh-auditor-controlplane",
        "-o",
        "name",
    ]
    applied = _output([*kubectl, *apply, *(f"--filename={path}" for path in manifests)]).split()
    # Gateway API's standard channel also holds a ValidatingAdmissionPolicy and its binding.
    names = [name for name in applied if name.startswith("customresourcedefinition")]
    _log(f"installed {len(names)} CRDs; waiting for them to be Established")
    _output([*kubectl, "wait", "--for=condition=Established", "--timeout=60s", *names])


# ---------------------------------------------------------------------------------------------
# Client side, for tests and scripts


class KubeAPI:
    """A running API server as its users see it: kubeconfig, API clients, and the built kubectl."""

    def __init__(self, kubeconfig: Path, kubectl_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_path = kubectl_path

    def new_client(self) -> ApiClient:
        """A new API client authenticated as cluster-admin; use it as a context manager."""
        # Imported here: the client library would double the start-up time of every command.
        from kubernetes import config  # noqa: PLC0415

        # kubernetes.config, unlike kubernetes.client, ships no type annotations.
        api: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return api

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run the built kubectl against this server and return its stdout."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise ControlPlaneError(f"kubectl {shlex.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, *paths: Path | str, namespace: str | None = None) -> str:
        """``kubectl apply -f`` each file or folder; returns kubectl's report."""
        files = [f"--filename={path}" for path in paths]
        return self.kubectl("apply", *_namespace_args(namespace), *files)

    def apply_text(self, manifest: str, namespace: str | None = None) -> str:
        """``kubectl apply -f -`` with the given YAML text; returns kubectl's report."""
        return self.kubectl("apply", *_namespace_args(namespace), "--filename=-", stdin=manifest)

    @functools.cached_property
    def namespaced_kinds(self) -> list[str]:
        """Every namespaced resource type that can be listed and deleted, CRs included."""
        return self.kubectl("api-resources", "--namespaced=true", "--verbs=list,delete", "--output=name").split()

    def empty_namespace(self, namespace: str) -> None:
        """Delete every object in the namespace, then the namespace (which stays Terminating)."""
        # --wait=false: an object with a finalizer (a PVC's, say) would wait forever for a
        # controller this control plane does not run.
        kinds = ",".join(self.namespaced_kinds)
        self.kubectl("delete", kinds, "--all", f"--namespace={namespace}", "--wait=false")
        self.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def _namespace_args(namespace: str | None) -> list[str]:
    return [f"--namespace={namespace}"] if namespace else []


# ---------------------------------------------------------------------------------------------
# Command line


def _cmd_build(args: argparse.Namespace) -> int:
    from testrigs.devtools import istio, waypointxds, ztunnel  # noqa: PLC0415 - all import this module

    binaries = build()
    for name, version in build_info(binaries).get("versions", {}).items():
        _log(f"{name}: {' | '.join(version.splitlines())}")
    istio_binaries = istio.build()
    for name, version in istio.build_info(istio_binaries).get("versions", {}).items():
        _log(f"{name}: {' | '.join(version.splitlines())}")
    xds_client = waypointxds.build()  # the waypoint oracle's XDS client, same pinned module
    print(binaries.directory)
    print(istio_binaries.directory)
    print(xds_client.directory)
    if args.ztunnel:
        ztunnel_binaries = ztunnel.build(args.ztunnel_source)
        for name, version in ztunnel.build_info(ztunnel_binaries).get("versions", {}).items():
            _log(f"{name}: {version}")
        print(ztunnel_binaries.directory)
    return 0


def _cmd_ztunnel_available(args: argparse.Namespace) -> int:
    """Exit 0 when ztunnel is built or can be (its source archive is here), else 1 saying why."""
    from testrigs.devtools import ztunnel  # noqa: PLC0415 - it imports this module

    pin = ztunnel.read_pin()
    source = ztunnel.default_source(pin)
    if ztunnel.is_built(pin) or source.is_file():
        return 0
    _log(f"ztunnel is not built and its source archive {source} is not here: set {ztunnel.SOURCE_ENV} (docs/lab.md)")
    return 1


def _cmd_up(args: argparse.Namespace) -> int:
    print(up(args.state_dir, istio=args.istio))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down(args.state_dir)
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    state = _state(args.state_dir)
    if not is_healthy(state.path):
        raise ControlPlaneError(f"no healthy control plane in {state.path}: run 'up' first")
    print(f"export KUBECONFIG={shlex.quote(str(state.kubeconfig))}")
    # The built kubectl first on PATH (docs/controlplane.md): the cluster's own version, not the host's.
    print(f'export PATH={shlex.quote(str(binary_dir(read_pins())))}:"$PATH"')
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    healthy, report = status(args.state_dir)
    print(report)
    return 0 if healthy else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlplane", description="Test control plane: etcd + kube-apiserver + kubectl."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser("build", help="build the binaries into the cache")
    build_command.add_argument(
        "--ztunnel",
        action="store_true",
        help="also build ztunnel from its source archive with cargo (the lab's real data plane; docs/lab.md)",
    )
    build_command.add_argument(
        "--ztunnel-source",
        type=Path,
        default=None,
        help="the ztunnel source archive (default: $MESH_AUDITOR_ZTUNNEL_SOURCE, else "
        "../shared/vendor/<file of tools/ztunnel/source.json>); its sha256 must be the pinned one",
    )
    build_command.set_defaults(handler=_cmd_build)
    available = commands.add_parser(
        "ztunnel-available",
        help="exit 0 when ztunnel is built or its source archive is here (scripts/setup, scripts/test)",
    )
    available.set_defaults(handler=_cmd_ztunnel_available)
    handlers = {"up": _cmd_up, "down": _cmd_down, "env": _cmd_env, "status": _cmd_status}
    helps = {
        "up": "start (or reuse) and print the kubeconfig path",
        "down": "stop and delete the state dir",
        "env": "print 'export KUBECONFIG=...'",
        "status": "report; exit 0 only when healthy",
    }
    for name, handler in handlers.items():
        command = commands.add_parser(name, help=helps[name])
        command.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="default: $MESH_AUDITOR_STATE or /tmp/mesh-auditor-controlplane",
        )
        if name == "up":
            command.add_argument(
                "--istio", action="store_true", help="also start istiod (pilot-discovery) against the API server"
            )
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ControlPlaneError as error:
        print(f"controlplane: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
