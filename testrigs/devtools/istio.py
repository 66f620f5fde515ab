"""Build and run the real Istio control plane (istiod, istioctl) and install CRDs from Go modules.

Role: developer tooling for the integration tests, next to ``controlplane`` (etcd +
kube-apiserver); the auditor never imports it. Three jobs:

* **Binaries.** ``build()`` builds ``pilot-discovery`` (istiod) and ``istioctl`` from the module
  ``istio.io/istio`` pinned in ``tools/istio/go.mod`` (the single source of the version) into
  ``<cache>/mesh-auditor/controlplane/istio-<version>-r<recipe>/bin``, with the flags of Istio's
  own release build (``Makefile.core.mk``: ``CGO_ENABLED=0``, ``-trimpath``, tags
  ``vtprotobuf,disable_pgv``, ``-s -w``, version stamped into ``istio.io/istio/pkg/version``).
* **CRDs from the module cache.** ``crd_manifests()`` returns the CRD files a test API server (or a
  ``helm install`` test) needs, read from the Go module cache, never from outside the clone:
  Istio's ``manifests/charts/base/files/crd-all.gen.yaml`` from ``istio.io/istio`` and Gateway
  API's standard channel (``config/crd/standard/*.yaml``) from ``sigs.k8s.io/gateway-api`` at the
  version Istio's go.mod requires. ``module_dir()`` downloads a module through the Go module proxy
  if the cache lacks it. ``chart_dir()`` gives Istio's Helm charts from the same module.
* **istiod outside a cluster.** ``start_istiod()`` runs ``pilot-discovery discovery`` against a
  running test API server, as the Helm chart ``istio-discovery`` would configure it in the
  ambient profile: namespace ``istio-system``, revision ``default``, ``PILOT_ENABLE_AMBIENT``,
  the mesh config and the injection templates (waypoint included) as the ConfigMaps ``istio``
  and ``istio-sidecar-injector``, its own self-signed CA, every port a free loopback port, and
  webhook patching disabled (there are no webhook configurations to patch).

Errors are ``controlplane.ControlPlaneError`` with a message naming the step that failed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testrigs.devtools import controlplane
from testrigs.devtools.controlplane import ControlPlaneError

ISTIO_MODULE_DIR = controlplane.REPO_ROOT / "tools" / "istio"
ISTIO_MODULE = "istio.io/istio"
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
# Files whose change must rebuild the binaries even when the pinned version stays the same.
BUILD_INPUTS = ("go.mod", "go.sum")
BUILD_TARGETS = ("istio.io/istio/pilot/cmd/pilot-discovery", "istio.io/istio/istioctl/cmd/istioctl")
# STANDARD_TAGS of Istio's Makefile.core.mk, used for pilot-discovery and istioctl.
GO_BUILD_TAGS = "vtprotobuf,disable_pgv"
VERSION_PACKAGE = "istio.io/istio/pkg/version"
# Bump when the build recipe changes: it is part of the cache directory's name.
BUILD_RECIPE = "1"
ISTIO_CRDS = "manifests/charts/base/files/crd-all.gen.yaml"
GATEWAY_API_CRDS = "config/crd/standard"
ISTIO_NAMESPACE = "istio-system"
# istiod's revision: the chart's istiod runs with env REVISION ``{{ .Values.revision | default "default" }}``
# (manifests/charts/istio-control/istio-discovery/templates/deployment.yaml), so a default install
# reads only Istio config without an ``istio.io/rev`` label or labelled ``default``
# (pkg/config/model.go ``LabelsInRevision``, applied by crdclient, the gateway controller and the
# ambient index): the test istiod filters revisions as a real install does.
REVISION = "default"
TRUST_DOMAIN = "cluster.local"
# The mesh config's one extension provider (envoyExtAuthzHttp), for CUSTOM AuthorizationPolicies:
# istiod builds its ext_authz filter only when the provider's Service is in its registry
# (pilot/pkg/security/authz/builder/extauthz.go ``buildExtAuthzHTTP``: ``model.LookupCluster``),
# so ``istiod_objects`` creates that Service too. A CUSTOM policy naming any other provider gets
# istiod's deny rules instead (builder.go ``getBadCustomDenyRules``).
EXT_AUTHZ_PROVIDER = "ext-authz"
EXT_AUTHZ_SERVICE = "ext-authz"
EXT_AUTHZ_PORT = 8000
ISTIOD_READY_TIMEOUT_S = 90.0


# ---------------------------------------------------------------------------------------------
# Pinned versions and the module cache


@dataclass(frozen=True)
class IstioPins:
    """The versions tools/istio/go.mod pins: istio.io/istio and the Gateway API it requires."""

    istio: str
    gateway_api: str

    @property
    def cache_key(self) -> str:
        return f"istio-{self.istio}-r{BUILD_RECIPE}"


def read_pins(go_mod: Path | None = None) -> IstioPins:
    """Read the pinned versions from tools/istio/go.mod."""
    text = (go_mod or ISTIO_MODULE_DIR / "go.mod").read_text(encoding="utf-8")
    return IstioPins(
        istio=controlplane._required_version(text, ISTIO_MODULE),
        gateway_api=controlplane._required_version(text, GATEWAY_API_MODULE),
    )


def module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache, downloaded through the proxy if missing.

    Raises ControlPlaneError when go is missing or the download fails.
    """
    go = _go()
    listing = controlplane._output(
        [go, "mod", "download", "-json", f"{module}@{version}"], _go_env(), cwd=ISTIO_MODULE_DIR
    )
    directory = json.loads(listing).get("Dir")
    if not isinstance(directory, str) or not Path(directory).is_dir():
        raise ControlPlaneError(f"go mod download {module}@{version} gave no directory: {listing.strip()[:500]}")
    return Path(directory)


def istio_source(pins: IstioPins | None = None) -> Path:
    """The pinned istio.io/istio source tree (read-only) in the Go module cache."""
    pins = pins or read_pins()
    return module_dir(ISTIO_MODULE, pins.istio)


def crd_manifests(pins: IstioPins | None = None) -> list[Path]:
    """The manifests that install Istio's and Gateway API's CRDs, in a fixed order.

    Istio's ``crd-all.gen.yaml`` (15 CRDs in 1.31) from ``istio.io/istio``, then every file of
    Gateway API's standard channel from ``sigs.k8s.io/gateway-api`` at the version the pinned
    Istio requires (v1.6.0: 10 CRDs and the ``safe-upgrades`` ValidatingAdmissionPolicy that
    refuses experimental-channel CRDs). Reusable by any test that installs CRDs (``kubectl
    apply --server-side -f`` each path). Raises ControlPlaneError if a file is missing.
    """
    pins = pins or read_pins()
    istio_crds = istio_source(pins) / ISTIO_CRDS
    gateway_dir = module_dir(GATEWAY_API_MODULE, pins.gateway_api) / GATEWAY_API_CRDS
    gateway_crds = sorted(gateway_dir.glob("*.yaml"))
    if not istio_crds.is_file() or not gateway_crds:
        raise ControlPlaneError(f"CRD manifests missing in the module cache: {istio_crds}, {gateway_dir}/*.yaml")
    return [istio_crds, *gateway_crds]


def chart_dir(chart: str, pins: IstioPins | None = None) -> Path:
    """An Istio Helm chart (``base``, ``istio-control/istio-discovery``, ``ztunnel``...) from the module."""
    path = istio_source(pins) / "manifests" / "charts" / chart
    if not (path / "Chart.yaml").is_file():
        raise ControlPlaneError(f"no Helm chart {chart!r} at {path}")
    return path


# ---------------------------------------------------------------------------------------------
# Building the binaries


@dataclass(frozen=True)
class IstioBinaries:
    """pilot-discovery and istioctl of one build, in one directory."""

    directory: Path

    @property
    def pilot_discovery(self) -> Path:
        return self.directory / "pilot-discovery"

    @property
    def istioctl(self) -> Path:
        return self.directory / "istioctl"

    def all(self) -> tuple[Path, Path]:
        return (self.pilot_discovery, self.istioctl)


def binary_dir(pins: IstioPins) -> Path:
    directory = controlplane.cache_root() / pins.cache_key / "bin"
    if directory.resolve().is_relative_to(controlplane.REPO_ROOT):
        raise ControlPlaneError(f"the binary cache {directory} must be outside the repository")
    return directory


def build(pins: IstioPins | None = None) -> IstioBinaries:
    """Build pilot-discovery and istioctl into the cache unless they are there already.

    A cold build takes 20-40 minutes on two shared cores (Go compiles ~2,000 packages).
    """
    pins = pins or read_pins()
    binaries = IstioBinaries(binary_dir(pins))
    fingerprint = _fingerprint()
    if controlplane.is_built(binaries, fingerprint):
        return binaries
    with controlplane._file_lock(binaries.directory.parent / "build.lock"):
        if not controlplane.is_built(binaries, fingerprint):
            _build_into(binaries.directory, pins, fingerprint)
    return binaries


def is_built(pins: IstioPins | None = None) -> bool:
    """True when build() would return at once."""
    return controlplane.is_built(IstioBinaries(binary_dir(pins or read_pins())), _fingerprint())


build_info = controlplane.build_info


def _fingerprint() -> str:
    return controlplane.recipe_fingerprint(BUILD_RECIPE, GO_BUILD_TAGS, ISTIO_MODULE_DIR, BUILD_INPUTS)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ControlPlaneError("'go' is not on PATH: Go >= 1.26 is needed for the Istio module")
    return go


def _go_env() -> dict[str, str]:
    return controlplane._go_env()


def _build_into(target: Path, pins: IstioPins, fingerprint: str) -> None:
    go = _go()
    env = _go_env()
    started = time.monotonic()
    controlplane._log(
        f"building pilot-discovery and istioctl ({ISTIO_MODULE} {pins.istio}) into {target} "
        "(a cold build takes 20-40 min on 2 cores)"
    )
    run_go = controlplane._run_go
    run_go([go, "mod", "download"], env, "go mod download (istio)", cwd=ISTIO_MODULE_DIR)
    source = istio_source(pins)
    ldflags = _ldflags(pins, source)
    staging = Path(tempfile.mkdtemp(prefix=".bin-", dir=target.parent))
    try:
        argv = [go, "build", "-trimpath", "-tags", GO_BUILD_TAGS, "-ldflags", ldflags]
        run_go([*argv, "-o", f"{staging}{os.sep}", *BUILD_TARGETS], env, "go build (istio)", cwd=ISTIO_MODULE_DIR)
        versions = _check_versions(IstioBinaries(staging), _release_version(source))
        go_version = controlplane._output([go, "env", "GOVERSION"], env).strip()
        info = {
            "fingerprint": fingerprint,
            "go": go_version,
            "module": f"{ISTIO_MODULE}@{pins.istio}",
            "versions": versions,
            "build_seconds": round(time.monotonic() - started),
        }
        (staging / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        controlplane._replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    controlplane._log(f"built istio in {time.monotonic() - started:.0f} s")


def _release_version(source: Path) -> str:
    # Istio's Makefile stamps VERSION-dev for a branch build that is not a release ("1.31-dev").
    return (source / "VERSION").read_text().strip() + "-dev"


def _ldflags(pins: IstioPins, source: Path) -> str:
    # The pseudo-version's last element is the commit's 12-digit prefix: all the proxy tells.
    commit = pins.istio.rsplit("-", 1)[-1]
    values = {
        "buildVersion": _release_version(source),
        "buildGitRevision": commit,
        "buildStatus": "Clean",
        "buildTag": pins.istio,
        "buildHub": "mesh-auditor.local",
        "buildOS": "linux",
        "buildArch": "amd64",
    }
    stamps = [f"-X {VERSION_PACKAGE}.{key}={value}" for key, value in values.items()]
    return " ".join(["-s", "-w", *stamps])


def _check_versions(binaries: IstioBinaries, version: str) -> dict[str, str]:
    output = controlplane._output
    reported = {
        "pilot-discovery": output([str(binaries.pilot_discovery), "version", "--short"]).strip(),
        "istioctl": output([str(binaries.istioctl), "version", "--remote=false", "--short"]).strip(),
    }
    wrong = [f"{name}: {text!r}" for name, text in reported.items() if version not in text]
    if wrong:
        raise ControlPlaneError(f"built istio binaries report unexpected versions: {'; '.join(wrong)}")
    return reported


# ---------------------------------------------------------------------------------------------
# istiod against a running test API server


@dataclass(frozen=True)
class IstiodPorts:
    """istiod's loopback listeners (the in-cluster defaults in parentheses)."""

    http: int  # debug and readiness (8080): /ready, /debug/*
    grpc: int  # plaintext XDS (15010)
    secure_grpc: int  # XDS over mTLS and the CA (15012)
    monitoring: int  # metrics (15014)
    https: int  # webhooks (15017)
    ctrlz: int  # ControlZ (9876)

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def mesh_config() -> dict[str, Any]:
    """The mesh config the chart's ambient profile gives istiod (ConfigMap ``istio``, key ``mesh``)."""
    return {
        "trustDomain": TRUST_DOMAIN,
        "rootNamespace": ISTIO_NAMESPACE,
        "enablePrometheusMerge": True,
        "defaultConfig": {
            "discoveryAddress": f"istiod.{ISTIO_NAMESPACE}.svc:15012",
            "proxyMetadata": {"ISTIO_META_ENABLE_HBONE": "true"},
        },
        "extensionProviders": [
            {
                "name": EXT_AUTHZ_PROVIDER,
                "envoyExtAuthzHttp": {
                    "service": f"{EXT_AUTHZ_SERVICE}.{ISTIO_NAMESPACE}.svc.cluster.local",
                    "port": EXT_AUTHZ_PORT,
                },
            }
        ],
    }


def _chart_values(chart: Path) -> dict[str, Any]:
    # values.yaml nests its defaults under _internal_defaults_do_not_set (a Helm workaround); the
    # ambient profile file overrides them as `helm install --set profile=ambient` does.
    raw = yaml.safe_load((chart / "values.yaml").read_text())
    values: dict[str, Any] = raw.get("_internal_defaults_do_not_set", raw)
    profile = dict(yaml.safe_load((chart / "files" / "profile-ambient.yaml").read_text()) or {})
    # The chart's zzz_profile.yaml lifts the profile's `pilot` values to the top level.
    _merge(values, dict(profile.pop("pilot", None) or {}))
    _merge(values, profile)
    values["revision"] = ""
    return values


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def injector_configmap(chart: Path) -> dict[str, Any]:
    """The ConfigMap ``istio-sidecar-injector`` as the chart's istiod-injector-configmap.yaml renders it.

    ``values``: the chart values picked by that template (global, sidecarInjectorWebhook,
    revision, pilot.{cni,env}, gateways.{securityContext,seccompProfile}) as JSON; ``config``:
    the templates from ``files/`` (sidecar, gateway, grpc-*, waypoint, kube-gateway,
    agentgateway*) with the chart's defaults. istiod renders waypoint Deployments and Services
    from the ``waypoint`` template.
    """
    values = _chart_values(chart)
    picked: dict[str, Any] = {key: values.get(key) for key in ("global", "sidecarInjectorWebhook", "revision")}
    picked["pilot"] = {key: values.get(key) for key in ("cni", "env")}
    gateways = values.get("gateways") or {}
    picked["gateways"] = {key: gateways.get(key) for key in ("securityContext", "seccompProfile")}
    webhook = values.get("sidecarInjectorWebhook") or {}
    files = {
        "sidecar": "injection-template.yaml",
        "gateway": "gateway-injection-template.yaml",
        "grpc-simple": "grpc-simple.yaml",
        "grpc-agent": "grpc-agent.yaml",
        "waypoint": "waypoint.yaml",
        "kube-gateway": "kube-gateway.yaml",
        "agentgateway": "agentgateway.yaml",
        "agentgateway-waypoint": "agentgateway-waypoint.yaml",
    }
    templates = {name: (chart / "files" / file).read_text().strip() + "\n" for name, file in files.items()}
    config = {
        "defaultTemplates": webhook.get("defaultTemplates") or ["sidecar"],
        "policy": (values.get("global") or {}).get("proxy", {}).get("autoInject", "enabled"),
        "alwaysInjectSelector": webhook.get("alwaysInjectSelector") or [],
        "neverInjectSelector": webhook.get("neverInjectSelector") or [],
        "injectedAnnotations": webhook.get("injectedAnnotations") or {},
        "template": "{{ Template_Version_And_Istio_Version_Mismatched_Check_Installation }}",
        "templates": templates,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "istio-sidecar-injector",
            "namespace": ISTIO_NAMESPACE,
            "labels": {"istio.io/rev": REVISION, "app.kubernetes.io/name": "istiod"},
        },
        "data": {"values": json.dumps(picked, indent=2), "config": yaml.safe_dump(config, sort_keys=False)},
    }


def cni_enablement_selectors(pins: IstioPins | None = None) -> list[dict[str, Any]]:
    """istio-cni's ``ambient.enablementSelectors`` from the pinned chart's values.yaml: which pods it redirects."""
    raw = yaml.safe_load((chart_dir("istio-cni", pins) / "values.yaml").read_text())
    values = raw.get("_internal_defaults_do_not_set", raw)
    selectors: list[dict[str, Any]] = values["ambient"]["enablementSelectors"]
    return selectors


def istiod_objects(chart: Path) -> list[dict[str, Any]]:
    """What the chart installs and istiod reads before it starts: namespace and two ConfigMaps, and the
    Service of the mesh config's extension provider (``EXT_AUTHZ_PROVIDER``; nothing serves it)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE}}
    mesh = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ISTIO_NAMESPACE, "labels": {"istio.io/rev": REVISION}},
        "data": {"mesh": yaml.safe_dump(mesh_config(), sort_keys=False), "meshNetworks": "networks: {}\n"},
    }
    provider = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": EXT_AUTHZ_SERVICE, "namespace": ISTIO_NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": EXT_AUTHZ_PORT}]},
    }
    return [namespace, mesh, injector_configmap(chart), provider]


def binary_version(binaries: IstioBinaries) -> str:
    """The built pilot-discovery's own version (``version -o json``: ``clientVersion.version``), e.g. ``1.31-dev``."""
    raw = controlplane._output([str(binaries.pilot_discovery), "version", "-o", "json"])
    return str(json.loads(raw)["clientVersion"]["version"])


def istiod_workload(version: str) -> list[dict[str, Any]]:
    """istiod's ServiceAccount (the chart's, needed for the stand-in to create its Pod) and Deployment."""
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "istiod", "namespace": ISTIO_NAMESPACE},
    }
    return [account, istiod_deployment(version)]


def istiod_deployment(version: str, hub: str = "mesh-auditor.local") -> dict[str, Any]:
    """The istiod Deployment as Istio's chart labels it (istio-control/istio-discovery
    templates/deployment.yaml and the ``istio.labels`` helper in zzz_profile.yaml, revision
    ``default``), with image ``<hub>/pilot:<version>`` and ``app.kubernetes.io/version: <version>``.

    istiod itself runs as a process here; this object is what a live audit reads to learn the
    cluster's Istio version. The stand-in gives it a Pod like any Deployment's.
    """
    labels = {
        "app": "istiod",
        "istio.io/rev": REVISION,
        "istio": "pilot",
        "app.kubernetes.io/name": "istiod",
        "app.kubernetes.io/part-of": "istio",
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/instance": "istiod",
    }
    selector = {"app": "istiod", "istio": "pilot"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": ISTIO_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**labels, "sidecar.istio.io/inject": "false"}},
                "spec": {
                    "serviceAccountName": "istiod",
                    "containers": [
                        {
                            "name": "discovery",
                            "image": f"{hub}/pilot:{version}",
                            "ports": [{"containerPort": 15010, "name": "grpc-xds"}],
                        }
                    ],
                },
            },
        },
    }


def istiod_env(kubeconfig: Path) -> dict[str, str]:
    """The environment of istiod outside a cluster (what the chart's Deployment sets, adapted)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),  # noqa: S108 - only a fallback for a missing HOME
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": ISTIO_NAMESPACE,
        "POD_NAME": "istiod-local",
        "SERVICE_ACCOUNT": "istiod",
        # The chart's value (deployment.yaml: ``{{ .Values.revision | default "default" }}``), not
        # unset: an istiod with REVISION "" reads every revision's config (LabelsInRevision).
        "REVISION": REVISION,
        "CLUSTER_ID": "Kubernetes",
        "PILOT_ENABLE_AMBIENT": "true",
        "PILOT_CERT_PROVIDER": "istiod",
        # What the chart sets in the ambient profile: ztunnel may ask for the certificates of the
        # pods on its own node (security/pkg/server/ca/node_auth.go).
        "CA_TRUSTED_NODE_ACCOUNTS": f"{ISTIO_NAMESPACE}/ztunnel",
        "JWT_POLICY": "third-party-jwt",
        # There are no webhook configurations to patch: the test API server calls no webhook.
        "INJECTION_WEBHOOK_CONFIG_NAME": "",
        "VALIDATION_WEBHOOK_CONFIG_NAME": "",
        "PILOT_ENABLE_ANALYSIS": "false",
        "GOMAXPROCS": "2",
    }


def istiod_args(binaries: IstioBinaries, kubeconfig: Path, ports: IstiodPorts) -> list[str]:
    """``pilot-discovery discovery`` with every listener on a given loopback port."""
    loopback = "127.0.0.1"
    return [
        str(binaries.pilot_discovery),
        "discovery",
        f"--kubeconfig={kubeconfig}",
        f"--httpAddr={loopback}:{ports.http}",
        f"--grpcAddr={loopback}:{ports.grpc}",
        f"--secureGRPCAddr={loopback}:{ports.secure_grpc}",
        f"--monitoringAddr={loopback}:{ports.monitoring}",
        f"--httpsAddr={loopback}:{ports.https}",
        f"--ctrlz_address={loopback}",
        f"--ctrlz_port={ports.ctrlz}",
        "--domain=cluster.local",
        "--log_output_level=default:info",
        "--keepaliveMaxServerConnectionAge=30m",
    ]


def istiod_ready(http_port: int) -> bool:
    """True when istiod's /ready answers 200 (its informers are synced)."""
    try:
        # A loopback URL built here from a port number.
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def debug_get(http_port: int, path: str, timeout_s: float = 10.0) -> Any:
    """GET istiod's debug endpoint (``/debug/ambientz``, ``/debug/authorizationz``...) as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_istiod(process: controlplane.Process, http_port: int, log_path: Path, timeout_s: float) -> float:
    """Wait until istiod is ready; return the seconds it took. Raises ControlPlaneError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not process.running():
            raise ControlPlaneError(f"istiod exited during start-up{_tail(log_path)}")
        if istiod_ready(http_port):
            return time.monotonic() - started
        time.sleep(0.2)
    raise ControlPlaneError(f"istiod not ready after {timeout_s:.0f} s{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path} ---\n" + "\n".join(tail)


def apply_objects(kubectl: Sequence[str], objects: Sequence[dict[str, Any]]) -> None:
    """Server-side apply the objects with the given kubectl command prefix."""
    manifest = yaml.safe_dump_all(objects, sort_keys=False)
    argv = [*kubectl, "apply", "--server-side", "--force-conflicts", "--field-manager=mesh-auditor-istiod", "-f", "-"]
    result = subprocess.run(argv, input=manifest, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise ControlPlaneError(f"applying istiod's objects failed: {result.stderr.strip()}")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), in bytes; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


class IstioAPI(controlplane.KubeAPI):
    """A test API server with istiod running against it (``up --istio``).

    Adds istiod's loopback ports (``ports``: http, grpc, secure_grpc, monitoring, https, ctrlz),
    the built ``istioctl`` and ``debug()`` for istiod's debug endpoints.
    """

    def __init__(self, kubeconfig: Path, kubectl_path: Path, istioctl_path: Path, ports: dict[str, int]) -> None:
        super().__init__(kubeconfig, kubectl_path)
        self.istioctl_path = istioctl_path
        self.ports = ports

    def debug(self, path: str) -> Any:
        """GET ``path`` (``/debug/ambientz``...) from istiod's debug listener, parsed as JSON."""
        return debug_get(self.ports["http"], path)

    def server_version(self) -> str:
        """istiod's own version (``/version`` on its monitoring port), e.g. ``1.31-dev-eed52ebb66ad-Clean``."""
        url = f"http://127.0.0.1:{self.ports['monitoring']}/version"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode()).strip()

    def istioctl(self, *args: str) -> str:
        """Run the built istioctl against this server and istiod's plaintext XDS port."""
        argv = [str(self.istioctl_path), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise ControlPlaneError(f"istioctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout


# ---------------------------------------------------------------------------------------------
# The translation oracle: what istiod hands ztunnel, in the shape of core.ztunnelview


# Policies istiod derives from PeerAuthentication carry these names (pilot/pkg/model/authentication.go).
_CONVERTED_PEER_AUTHENTICATION = ("converted_peer_authentication_", "istio_converted_static_strict")


def _is_converted(name: str) -> bool:
    return any(marker in name for marker in _CONVERTED_PEER_AUTHENTICATION)


def ambient_facts(
    ambientz: dict[str, Any], gateway_addresses: dict[str, str]
) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """istiod's ``/debug/ambientz`` as (workload -> enforced AuthorizationPolicies, Service -> waypoint).

    A workload's enforced policies are its ``authorizationPolicies`` (istiod attaches only the
    selector ones) plus every policy of scope ``NAMESPACE`` in its namespace and of scope
    ``GLOBAL``, leaving out dry-run ones and those translated from PeerAuthentication. A
    Service's waypoint is the Gateway (``namespace/name``) whose address or hostname the
    Service's ``waypoint`` names, ``""`` without one. ``gateway_addresses`` maps each address
    in a Gateway's status to that Gateway. Keys are ``namespace/name``.
    """
    policies = [p for p in ambientz.get("policies") or [] if not _is_converted(p.get("name", ""))]
    enforced = [p for p in policies if not p.get("dryRun")]
    dry_run = {f"{p.get('namespace', '')}/{p['name']}" for p in policies if p.get("dryRun")}
    workloads: dict[str, frozenset[str]] = {}
    for workload in ambientz.get("workloads") or []:
        namespace = workload.get("namespace", "")
        attached = {name for name in workload.get("authorizationPolicies") or [] if not _is_converted(name)}
        wide = {
            f"{p.get('namespace', '')}/{p['name']}"
            for p in enforced
            if p.get("scope") == "GLOBAL" or (p.get("scope") == "NAMESPACE" and p.get("namespace") == namespace)
        }
        workloads[f"{namespace}/{workload.get('name', '')}"] = frozenset((attached - dry_run) | wide)
    services = {
        f"{s.get('namespace', '')}/{s.get('name', '')}": _waypoint_of(s.get("waypoint"), gateway_addresses)
        for s in ambientz.get("services") or []
    }
    return workloads, services


def workload_waypoints(ambientz: dict[str, Any], gateway_addresses: dict[str, str]) -> dict[str, str]:
    """istiod's ``/debug/ambientz`` as workload -> its own waypoint: the Gateway (``namespace/name``)
    whose address or hostname the workload's ``waypoint`` names (what ztunnel sends traffic
    addressed to the pod's IP through), ``""`` without one. Same keys as ``ambient_facts``."""
    return {
        f"{w.get('namespace', '')}/{w.get('name', '')}": _waypoint_of(w.get("waypoint"), gateway_addresses)
        for w in ambientz.get("workloads") or []
    }


def plaintext_refused(ambientz: dict[str, Any], ports: frozenset[int]) -> dict[str, frozenset[int]]:
    """For each workload of ``/debug/ambientz``: which of ``ports`` refuse a caller without identity.

    istiod hands ztunnel PeerAuthentication as DENY policies (``converted_peer_authentication_*``,
    ``istio_converted_static_strict``) attached to the workload; a port refuses plaintext when
    one of them matches a connection without a principal on it. Matching follows the workload
    API: a policy matches when a group does, a group when all its rules do, a rule when one of
    its matches does, a match when all its fields do. Raises ValueError on a field these
    converted policies are not known to carry.
    """
    converted = {
        f"{p.get('namespace', '')}/{p['name']}": p
        for p in ambientz.get("policies") or []
        if _is_converted(p.get("name", ""))
    }
    refused: dict[str, frozenset[int]] = {}
    for workload in ambientz.get("workloads") or []:
        attached = [converted[name] for name in workload.get("authorizationPolicies") or [] if name in converted]
        key = f"{workload.get('namespace', '')}/{workload.get('name', '')}"
        refused[key] = frozenset(port for port in ports if any(_denies_plaintext(policy, port) for policy in attached))
    return refused


def _denies_plaintext(policy: dict[str, Any], port: int) -> bool:
    if policy.get("action") != "DENY" or policy.get("dryRun"):
        return False
    return any(
        all(any(_match_plaintext(m, port) for m in rule.get("matches") or []) for rule in group.get("rules") or [])
        for group in policy.get("groups") or []
    )


def _match_plaintext(match: dict[str, Any], port: int) -> bool:
    unknown = set(match) - {"destinationPorts", "notDestinationPorts", "principals", "notPrincipals"}
    if unknown:
        raise ValueError(f"a converted PeerAuthentication carries {sorted(unknown)}: not modelled here")
    if match.get("destinationPorts") and port not in match["destinationPorts"]:
        return False
    if port in (match.get("notDestinationPorts") or []):
        return False
    # A caller without identity matches no principal, and so every notPrincipals entry.
    return not match.get("principals")


def translated_policies(ambientz: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The AuthorizationPolicies istiod hands ztunnel (not those from PeerAuthentication), by ``namespace/name``."""
    return {
        f"{p.get('namespace', '')}/{p['name']}": p
        for p in ambientz.get("policies") or []
        if not _is_converted(p.get("name", ""))
    }


def ztunnel_policy_matches(policy: dict[str, Any], principal: str | None, port: int) -> bool:
    """Whether ztunnel would match a translated policy (``/debug/ambientz`` form) for a connection
    from ``principal`` (SPIFFE id without ``spiffe://``; None: plaintext) to ``port``.

    As ztunnel 1.31's ``Authorization::matches`` (src/rbac.rs) does: no rules, no match; a rule
    matches when every clause does; a clause when one of its non-empty matches does (an empty
    clause matches, an empty match is skipped); a match when every field does, positive lists by
    any entry, negative ones by none. Raises ValueError on a field not modelled here (IPs).
    """
    identity = "" if principal is None else principal
    parts = identity.split("/")
    namespace = parts[2] if len(parts) == 5 and parts[1] == "ns" else ""
    account = parts[4] if len(parts) == 5 and parts[3] == "sa" else ""

    def test(key: str, value: Any) -> bool:
        if key == "destinationPorts":
            return bool(value == port)
        if key == "principals":
            # ztunnel strips spiffe:// and fails a connection without identity (matches_principal).
            return principal is not None and _string_match(value, identity)
        if key == "namespaces":
            return _string_match(value, namespace)
        return principal is not None and (value.get("namespace"), value.get("serviceAccount")) == (namespace, account)

    def match(m: dict[str, Any]) -> bool:
        unknown = set(m) - {k for key in _MATCH_FIELDS for k in (key, "not" + key[0].upper() + key[1:])}
        if unknown:
            raise ValueError(f"translated policy field(s) {sorted(unknown)} not modelled here")
        for key in _MATCH_FIELDS:
            positive, negative = m.get(key) or [], m.get("not" + key[0].upper() + key[1:]) or []
            if positive and not any(test(key, v) for v in positive):
                return False
            if negative and any(test(key, v) for v in negative):
                return False
        return True

    def clause(c: dict[str, Any]) -> bool:
        matches = c.get("matches") or []
        return not matches or any(match(m) for m in matches if m)

    return any(all(clause(c) for c in rule.get("rules") or []) for rule in policy.get("groups") or [])


_MATCH_FIELDS = ("destinationPorts", "principals", "namespaces", "serviceAccounts")


def _string_match(matcher: dict[str, Any], value: str) -> bool:
    if "exact" in matcher:
        return value == str(matcher["exact"])
    if "prefix" in matcher:
        return value.startswith(str(matcher["prefix"]))
    if "suffix" in matcher:
        return value.endswith(str(matcher["suffix"]))
    if "presence" in matcher:
        return value != ""
    raise ValueError(f"string match {matcher} not modelled here")


def _waypoint_of(waypoint: dict[str, Any] | None, gateway_addresses: dict[str, str]) -> str:
    if not waypoint:
        return ""
    if "hostname" in waypoint:
        hostname = waypoint["hostname"]
        return gateway_addresses.get(hostname.get("hostname", ""), f"(unknown hostname {hostname})")
    raw = (waypoint.get("address") or {}).get("address", "")
    return gateway_addresses.get(_ip_text(raw), f"(unknown address {raw})")


def _ip_text(raw: str) -> str:
    # ambientz rewrites the address bytes to the IP's text, which JSON then shows as base64.
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw
    for form in (decoded.decode("ascii", "replace"), decoded):
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(form))
    return raw
