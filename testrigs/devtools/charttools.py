"""Chart tooling: build helm and kubeconform, render deploy/ from the chart, make kubeconform schemas.

Role: the Helm chart (``deploy/helm/mesh-auditor``) is the one source of the auditor's
Kubernetes objects; the plain manifests in ``deploy/`` are rendered from it, and tests lint,
render, validate and install it. This module builds the two tools from the Go modules pinned in
``tools/helm`` and ``tools/kubeconform`` (their go.mod files are the single source of the
versions), caches them outside the repository like the control plane's binaries, and turns the
test API server's OpenAPI document into the JSON schemas kubeconform validates against. It is
developer tooling: the auditor never imports it.

Commands (``scripts/chart CMD`` or ``python3 -m testrigs.devtools.charttools CMD``):

* ``build``: build helm and kubeconform into
  ``${MESH_AUDITOR_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/mesh-auditor/tools/<tool>-<version>/bin``;
  a warm call returns at once. Prints the two paths.
* ``render``: rewrite ``deploy/*.yaml`` from the chart (``RENDERED`` says which template with
  which values goes to which file); ``render --check`` exits 1 when a file differs.

Errors: ``ChartToolError`` names the step that failed (go build, helm template) and its output.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "mesh-auditor"
DEPLOY_DIR = REPO_ROOT / "deploy"
RELEASE = "mesh-auditor"
NAMESPACE = "mesh-auditor"
# Bump when the build recipe changes so that cached binaries are rebuilt.
BUILD_RECIPE = "1"


class ChartToolError(Exception):
    """Building a tool or rendering the chart failed; the message says which step and why."""


def _log(message: str) -> None:
    print(f"charttools: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Building helm and kubeconform


@dataclass(frozen=True)
class GoTool:
    """One binary built from the Go module pinned in tools/<name>."""

    name: str
    module: str  # the module whose version go.mod pins
    package: str  # the main package to build
    version_package: str  # where the release build stamps its version with -X
    version_args: tuple[str, ...]  # how the binary reports its version

    @property
    def module_dir(self) -> Path:
        return REPO_ROOT / "tools" / self.name

    def version(self) -> str:
        text = (self.module_dir / "go.mod").read_text(encoding="utf-8")
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.module)}\s+(v\S+)", text, re.MULTILINE)
        if match is None:
            raise ChartToolError(f"tools/{self.name}/go.mod does not require {self.module}")
        return match.group(1)


HELM = GoTool(
    "helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm", "helm.sh/helm/v3/internal/version.version", ("version",)
)
KUBECONFORM = GoTool(
    "kubeconform",
    "github.com/yannh/kubeconform",
    "github.com/yannh/kubeconform/cmd/kubeconform",
    "main.version",
    ("-v",),
)
TOOLS = (HELM, KUBECONFORM)


def cache_root() -> Path:
    """The per-user cache for built tools: never inside the repository."""
    base = os.environ.get("MESH_AUDITOR_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base or Path.home() / ".cache") / "mesh-auditor" / "tools"


def binary(tool: GoTool) -> Path:
    """Where build() puts ``tool`` (it may not be built yet)."""
    path = cache_root() / f"{tool.name}-{tool.version()}" / "bin" / tool.name
    if path.resolve().is_relative_to(REPO_ROOT):
        raise ChartToolError(f"the tool cache {path} must be outside the repository")
    return path


def build(tools: Sequence[GoTool] = TOOLS) -> dict[str, Path]:
    """Build each tool into the cache unless it is there already; returns name -> binary path."""
    return {tool.name: _build_one(tool) for tool in tools}


def _fingerprint(tool: GoTool) -> str:
    digest = hashlib.sha256(BUILD_RECIPE.encode())
    for name in ("go.mod", "go.sum"):
        digest.update((tool.module_dir / name).read_bytes())
    return digest.hexdigest()


def _build_one(tool: GoTool) -> Path:
    target = binary(tool)
    stamp = target.parent / "build.json"
    fingerprint = _fingerprint(tool)

    def built() -> bool:
        try:
            recorded = json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            return False
        return recorded == fingerprint and os.access(target, os.X_OK)

    if built():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent.parent / "build.lock"):
        if not built():
            _go_build(tool, target, fingerprint)
    return target


def _go_build(tool: GoTool, target: Path, fingerprint: str) -> None:
    go = shutil.which("go")
    if go is None:
        raise ChartToolError(f"'go' is not on PATH: Go >= 1.26 is needed to build {tool.name}")
    env = dict(os.environ)
    # Static binary, the module's own go.sum only, no workspace or VCS stamping.
    env.update(CGO_ENABLED="0", GOWORK="off", GOFLAGS="-mod=readonly -buildvcs=false")
    version = tool.version()
    stamps = [f"-X {tool.version_package}={version}"]
    if tool is HELM:
        # helm's Makefile derives its default Kubernetes version from client-go; do the same.
        client_go = _module_version(go, env, tool, "k8s.io/client-go")
        minor = client_go.removeprefix("v0.").split(".")[0]
        for package in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            stamps += [f"-X {package}.k8sVersionMajor=1", f"-X {package}.k8sVersionMinor={minor}"]
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    started = time.monotonic()
    _log(f"building {tool.name} {version} into {target.parent} (a cold build takes minutes)")
    try:
        argv = [go, "build", "-trimpath", "-ldflags", " ".join(["-s", "-w", *stamps]), "-o", str(staging / tool.name)]
        _run([*argv, tool.package], cwd=tool.module_dir, env=env, what=f"go build {tool.name}")
        reported = _run(
            [str(staging / tool.name), *tool.version_args], cwd=staging, env=env, what=f"{tool.name} version"
        )
        if version not in reported and version.removeprefix("v") not in reported:
            raise ChartToolError(f"{tool.name} reports {reported.strip()!r}, expected {version}")
        (staging / tool.name).replace(target)
        info = {"fingerprint": fingerprint, "version": reported.strip()}
        (target.parent / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log(f"built {tool.name} in {time.monotonic() - started:.0f} s")


def _module_version(go: str, env: Mapping[str, str], tool: GoTool, module: str) -> str:
    listing = _run([go, "list", "-m", "-json", module], cwd=tool.module_dir, env=env, what=f"go list {module}")
    version = json.loads(listing).get("Version")
    if not isinstance(version, str):
        raise ChartToolError(f"go list -m {module} in tools/{tool.name} reported no version")
    return version


def _run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, what: str) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ChartToolError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-4000:]}")
    return result.stdout


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


# ---------------------------------------------------------------------------------------------
# Rendering the chart


def kube_version() -> str:
    """The Kubernetes version the chart is rendered for: the test control plane's pin."""
    from testrigs.devtools.controlplane import read_pins  # noqa: PLC0415 - only the chart tests need it

    return read_pins().kubernetes


def template(
    helm: Path,
    *,
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    show_only: Sequence[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> str:
    """``helm template`` of the chart: the rendered YAML stream, or ChartToolError with helm's message."""
    argv = [str(helm), "template", release, str(CHART_DIR), f"--namespace={namespace}"]
    argv.append(f"--kube-version={kube_version()}")
    argv += [f"--values={v}" for v in values] + [f"--set={s}" for s in set_values]
    argv += [f"--show-only={s}" for s in show_only]
    return _run(argv, cwd=REPO_ROOT, env=helm_env(), what="helm template")


def helm_env() -> dict[str, str]:
    """The environment to run helm in: its caches and config in a scratch directory, so that
    rendering never depends on (or changes) the developer's helm setup."""
    scratch = Path(tempfile.gettempdir()) / "mesh-auditor-helm"
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(scratch / "cache"),
        HELM_CONFIG_HOME=str(scratch / "config"),
        HELM_DATA_HOME=str(scratch / "data"),
    )
    return env


def documents(rendered: str) -> list[dict[str, Any]]:
    """The objects of a rendered YAML stream (empty documents dropped)."""
    return [d for d in yaml.safe_load_all(rendered) if d]


@dataclass(frozen=True)
class Rendered:
    """One plain manifest in deploy/: which templates, with which extra values."""

    file: str
    templates: tuple[str, ...]
    set_values: tuple[str, ...] = ()
    purpose: str = ""


# The plain manifests for `kubectl apply`: the chart with its defaults plus, for the auditor's
# own namespace, createNamespace=true. The two opt-in examples enable their feature for
# namespace default. Tests and the lab apply these files; a test renders them again and compares.
PLAIN_DEFAULTS = ("createNamespace=true",)
RENDERED = (
    Rendered("namespaces.yaml", ("templates/namespaces.yaml",), PLAIN_DEFAULTS, "the auditor's namespaces"),
    Rendered("serviceaccounts.yaml", ("templates/serviceaccounts.yaml",), PLAIN_DEFAULTS, "ServiceAccounts"),
    # With the Auto Mode read role: the plain manifests are for EKS Auto Mode clusters, where
    # settings turn aws.verify_auto_mode on (the chart grants it only with aws.verifyAutoMode).
    Rendered(
        "rbac.yaml",
        ("templates/rbac.yaml",),
        (*PLAIN_DEFAULTS, "aws.verifyAutoMode=true"),
        "the auditor's RBAC (with the Auto Mode read role)",
    ),
    Rendered("probe-guard.yaml", ("templates/probe-guard.yaml",), PLAIN_DEFAULTS, "the probe-pod admission policy"),
    Rendered(
        "daemon.yaml",
        (
            "templates/daemon.yaml",
            "templates/poddisruptionbudget.yaml",
            "templates/networkpolicy.yaml",
        ),
        PLAIN_DEFAULTS,
        "the daemon (settings and rules ConfigMaps, Deployment, Service, PodDisruptionBudget, NetworkPolicy)",
    ),
    Rendered(
        "control-probes-default.yaml",
        ("templates/control-probes.yaml",),
        (*PLAIN_DEFAULTS, "control.enabled=true", "control.namespaces={default}"),
        "OPT-IN: positive-control probes in namespace default (also needs control.enabled in the rules "
        "and AUDITOR_PROBES__CONTROL_ENABLED=true)",
    ),
    Rendered(
        "header-secret-example.yaml",
        ("templates/header-secrets.yaml",),
        (*PLAIN_DEFAULTS, "headerSecrets[0].namespace=default", "headerSecrets[0].names={catalog-token}"),
        "OPT-IN example: `get` on the one Secret a required header's value comes from",
    ),
)


def render_plain(helm: Path, item: Rendered) -> str:
    """The text of deploy/<item.file>: a header that names its source, then helm's output."""
    body = template(helm, set_values=item.set_values, show_only=item.templates)
    header = (
        f"# {item.purpose}.\n"
        f"# Rendered from the Helm chart deploy/helm/mesh-auditor ({', '.join(item.templates)}) with\n"
        f"# --namespace {NAMESPACE} --set {','.join(item.set_values)}\n"
        "# by `scripts/chart render`: edit the chart, not this file. See docs/deploy.md.\n"
    )
    return header + body


def render_deploy(helm: Path, *, check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) every file of RENDERED; returns the files that differ."""
    differ = []
    for item in RENDERED:
        path = DEPLOY_DIR / item.file
        text = render_plain(helm, item)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            differ.append(item.file)
            if not check:
                path.write_text(text, encoding="utf-8")
    return differ


# ---------------------------------------------------------------------------------------------
# CRDs of optional kinds the chart renders

CRD_MODULE_DIR = REPO_ROOT / "tools" / "chartcrds"
# (module, file inside it) for each optional kind's CRD.
CHART_CRDS = (
    (
        "github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
)


def chart_crds() -> list[Path]:
    """The CRD files of the optional kinds (ServiceMonitor), from the module cache.

    ``go mod download`` fetches the modules pinned in tools/chartcrds/go.mod (checked against
    its go.sum) once; later calls read the cache.
    """
    go = shutil.which("go")
    if go is None:
        raise ChartToolError("'go' is not on PATH: it downloads the CRDs pinned in tools/chartcrds")
    env = dict(os.environ, GOWORK="off", GOFLAGS="-mod=readonly")
    paths = []
    for module, file in CHART_CRDS:
        listing = _run([go, "mod", "download", "-json", module], cwd=CRD_MODULE_DIR, env=env, what="go mod download")
        path = Path(json.loads(listing)["Dir"]) / file
        if not path.is_file():
            raise ChartToolError(f"{module} has no {file}")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# kubeconform schemas from an OpenAPI v2 document


def schema_location(directory: Path) -> str:
    """kubeconform's -schema-location template for the files write_schemas() writes."""
    return f"{directory}/{{{{ .Group }}}}/{{{{ .ResourceAPIVersion }}}}/{{{{ .ResourceKind }}}}.json"


def write_schemas(openapi: Mapping[str, Any], kinds: set[tuple[str, str]], directory: Path) -> list[Path]:
    """Write one standalone, strict JSON schema per (apiVersion, kind) in ``kinds``.

    ``openapi`` is the API server's ``/openapi/v2`` document, which holds the built-in kinds of
    the pinned release and the structural schemas of every installed CRD. Each schema has its
    ``$ref``s inlined (kubeconform loads one file per kind), int-or-string spelled as a oneOf,
    and ``additionalProperties: false`` wherever properties are listed and the API does not
    preserve unknown fields: what ``kubectl --validate=strict`` and kubeconform ``-strict``
    mean by an unknown field. A kind the document does not define raises ChartToolError.
    """
    definitions: Mapping[str, Any] = openapi["definitions"]
    by_gvk: dict[tuple[str, str], str] = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            by_gvk[(api_version, gvk["kind"])] = name
    missing = sorted(kinds - set(by_gvk))
    if missing:
        raise ChartToolError(f"the OpenAPI document defines no schema for {missing} (is the CRD installed?)")
    written = []
    for api_version, kind in sorted(kinds):
        group, _, version = api_version.rpartition("/")
        path = directory / (group or version) / version / f"{kind.lower()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = _strict(_inline(definitions[by_gvk[(api_version, kind)]], definitions, ()))
        path.write_text(json.dumps(schema, indent=1, sort_keys=True), encoding="utf-8")
        written.append(path)
    return written


def _inline(node: Any, definitions: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix("#/definitions/")
        if name in seen:  # a recursive type (JSONSchemaProps): accept anything below this depth
            return {}
        return _inline(copy.deepcopy(definitions[name]), definitions, (*seen, name))
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    return {key: _inline(value, definitions, seen) for key, value in node.items()}


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _strict(value) for key, value in node.items()}
    preserves = strict.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in strict and "additionalProperties" not in strict and not preserves:
        strict["additionalProperties"] = False
    return strict


def kubeconform(kubeconform_bin: Path, schemas: Path, manifests: str) -> dict[str, Any]:
    """Validate a YAML stream with kubeconform -strict against ``schemas`` only (no download).

    Returns kubeconform's JSON summary; raises ChartToolError with every invalid resource
    named when one fails or has no schema.
    """
    argv = [
        str(kubeconform_bin),
        "-strict",
        "-summary",
        "-output=json",
        f"-schema-location={schema_location(schemas)}",
        "-",
    ]
    result = subprocess.run(argv, input=manifests, capture_output=True, text=True, check=False)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError as error:
        raise ChartToolError(f"kubeconform printed no JSON: {result.stdout[-2000:]} {result.stderr[-2000:]}") from error
    if result.returncode != 0:
        problems = [r for r in report.get("resources", []) if r.get("status") != "statusValid"]
        raise ChartToolError(f"kubeconform -strict refused the chart: {json.dumps(problems, indent=1)}")
    return report


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chart", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build helm and kubeconform into the cache (once)")
    render = commands.add_parser("render", help="render deploy/*.yaml from the chart")
    render.add_argument("--check", action="store_true", help="only report files that differ (exit 1)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name, path in build().items():
                print(f"{name}: {path}")
            return 0
        differ = render_deploy(build((HELM,))["helm"], check=args.check)
    except ChartToolError as error:
        print(f"charttools: {error}", file=sys.stderr)
        return 1
    verb = "differ from the chart" if args.check else "rewritten"
    for name in differ:
        print(f"deploy/{name} {verb}", file=sys.stderr)
    return 1 if (args.check and differ) else 0


if __name__ == "__main__":
    raise SystemExit(main())
