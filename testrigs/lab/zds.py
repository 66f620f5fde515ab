"""The lab's CNI-agent stand-in: hands captured pods to the real ztunnel over ZDS.

Role: in a cluster, istio-cni's node agent listens on a unix socket; the node's ztunnel (shared,
in-pod mode) connects to it, and the agent sends each ambient pod's network namespace, as an open
file descriptor (``SCM_RIGHTS``), with the pod's uid, name, namespace and ServiceAccount. ztunnel
then opens its listeners inside that namespace. This module does the agent's half of that protocol,
ZDS (``proto/zds.proto`` in the ztunnel source; package ``istio.workload.zds``), for one lab node:

* the socket is ``SOCK_SEQPACKET`` (``src/inpod/packet.rs``): one protobuf message per packet;
* ztunnel connects and sends ``ZdsHello{version: V1}``;
* the agent sends ``WorkloadRequest{add}`` for every pod it holds, one at a time, each with the
  netns fd attached and waiting for ztunnel's ``WorkloadResponse{ack}``, then
  ``WorkloadRequest{snapshot_sent}`` (ztunnel drops every pod not sent);
* afterwards ``add`` and ``del`` as pods come and go. A new connection (ztunnel restarted) gets
  the whole snapshot again.

Before a pod is added the agent installs istio-cni's in-pod redirection (``inpod.install``); after
it leaves, the rules go first and ``del`` follows, as istio-cni orders them.

The agent is level-based: it runs as a daemon (``python -m testrigs.lab.zds``) that polls a JSON
file of wanted pods (``[{uid, netns, name, namespace, service_account}]``, rewritten by the lab
with rename) and writes its state (connected, acked uids, last error) to a status file. The
messages are few and flat, so they are encoded here by hand (protobuf wire format: varints and
length-delimited fields) instead of generating code with protoc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testrigs.lab import inpod, netns

NETNS_DIR = Path("/var/run/netns")
ACK_TIMEOUT_S = 10.0
POLL_S = 0.1
MAX_MESSAGE = 4096
ZDS_VERSION_V1 = 1


class ZdsError(RuntimeError):
    """ztunnel refused a message (its Ack carried an error), or the connection broke."""


# ---------------------------------------------------------------------------------------------
# Protobuf wire format, for the few ZDS messages


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    # proto3 omits a field holding its default (the empty string).
    return _field(number, text.encode()) if text else b""


@dataclass(frozen=True)
class Pod:
    """A pod the agent hands to ztunnel: its uid, network namespace name, and WorkloadInfo."""

    uid: str
    netns: str
    name: str
    namespace: str
    service_account: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pod:
        return cls(
            str(data["uid"]),
            str(data["netns"]),
            str(data["name"]),
            str(data["namespace"]),
            str(data["service_account"]),
        )


def encode_add(pod: Pod) -> bytes:
    """``WorkloadRequest{add: AddWorkload{uid, workload_info: WorkloadInfo{name, namespace, service_account}}}``."""
    info = _string(1, pod.name) + _string(2, pod.namespace) + _string(3, pod.service_account)
    return _field(1, _string(1, pod.uid) + _field(2, info))


def encode_del(uid: str) -> bytes:
    """``WorkloadRequest{del: DelWorkload{uid}}`` (DelWorkload's uid is field 2)."""
    return _field(2, _string(2, uid))


def encode_keep(uid: str) -> bytes:
    """``WorkloadRequest{keep: KeepWorkload{uid}}``."""
    return _field(5, _string(1, uid))


def encode_snapshot_sent() -> bytes:
    """``WorkloadRequest{snapshot_sent: SnapshotSent{}}``."""
    return _field(3, b"")


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ZdsError("truncated varint in a ZDS message")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def decode_fields(data: bytes) -> dict[int, int | bytes]:
    """Top-level fields of a message: varints as int, length-delimited as bytes (last one wins)."""
    fields: dict[int, int | bytes] = {}
    offset = 0
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], offset = _read_varint(data, offset)
        elif wire_type == 2:
            length, offset = _read_varint(data, offset)
            fields[number] = data[offset : offset + length]
            offset += length
        else:
            raise ZdsError(f"unexpected wire type {wire_type} in a ZDS message")
    return fields


def decode_ack(data: bytes) -> str:
    """A ``WorkloadResponse``: ``""`` for an ack, else ztunnel's error text. Raises ZdsError otherwise."""
    ack = decode_fields(data).get(1)
    if not isinstance(ack, bytes):
        raise ZdsError(f"expected WorkloadResponse{{ack}}, got {data!r}")
    error = decode_fields(ack).get(1, b"")
    return error.decode(errors="replace") if isinstance(error, bytes) else ""


def decode_hello(data: bytes) -> int:
    """ZdsHello's version (1 = V1)."""
    version = decode_fields(data).get(1, 0)
    return version if isinstance(version, int) else 0


# ---------------------------------------------------------------------------------------------
# The agent


@dataclass
class AgentState:
    """What the agent reports: whether ztunnel is connected, the uids it acked, the last error."""

    connected: bool = False
    connections: int = 0
    acked: list[str] | None = None
    last_error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def listen(path: Path) -> socket.socket:
    """Bind the SOCK_SEQPACKET listener ztunnel connects to (a stale socket file is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(path))
    server.listen(4)
    return server


class NodeAgent:
    """One node's agent: a listener, at most one ztunnel connection, and the pods it holds."""

    def __init__(self, server: socket.socket) -> None:
        self.server = server
        self.connection: socket.socket | None = None
        self.sent: dict[str, Pod] = {}
        self.state = AgentState(acked=[])

    def accept_if_ready(self, timeout: float) -> bool:
        """Accept a (re)connecting ztunnel within ``timeout`` seconds; True when one connected."""
        readable, _, _ = select.select([self.server], [], [], timeout)
        if not readable:
            return False
        connection, _ = self.server.accept()
        if self.connection is not None:
            self.connection.close()  # the old ztunnel is gone: a new one replaces it
        self.connection = connection
        self.sent = {}
        self.state.connected = True
        self.state.connections += 1
        hello = self._receive()
        if decode_hello(hello) != ZDS_VERSION_V1:
            raise ZdsError(f"ztunnel sent an unexpected hello {hello!r}")
        return True

    def snapshot(self, pods: Sequence[Pod]) -> None:
        """Send every pod, then SnapshotSent: what a fresh connection gets."""
        for pod in pods:
            self._add(pod)
        self._request(encode_snapshot_sent(), None, "snapshot_sent")
        self._report()

    def reconcile(self, pods: Sequence[Pod]) -> None:
        """Send add for new pods and del for pods gone (redirection installed before add, removed before del)."""
        wanted = {pod.uid: pod for pod in pods}
        for uid, pod in list(self.sent.items()):
            if uid not in wanted or wanted[uid] != pod:
                with contextlib.suppress(Exception):  # the namespace may be gone already
                    inpod.remove(pod.netns)
                self._request(encode_del(uid), None, f"del {uid}")
                del self.sent[uid]
        for uid, pod in wanted.items():
            if uid not in self.sent:
                self._add(pod)
        self._report()

    def _add(self, pod: Pod) -> None:
        inpod.install(pod.netns)
        fd = os.open(NETNS_DIR / pod.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._request(encode_add(pod), fd, f"add {pod.uid}")
        finally:
            os.close(fd)
        self.sent[pod.uid] = pod

    def _request(self, message: bytes, fd: int | None, what: str) -> None:
        if self.connection is None:
            raise ZdsError(f"{what}: no ztunnel connected")
        if fd is None:
            self.connection.sendmsg([message])
        else:
            socket.send_fds(self.connection, [message], [fd])
        error = decode_ack(self._receive())
        if error:
            raise ZdsError(f"{what}: ztunnel answered {error!r}")

    def _receive(self) -> bytes:
        assert self.connection is not None  # noqa: S101 - callers check; narrows the type for mypy
        readable, _, _ = select.select([self.connection], [], [], ACK_TIMEOUT_S)
        if not readable:
            raise ZdsError(f"no answer from ztunnel within {ACK_TIMEOUT_S:.0f} s")
        data = self.connection.recv(MAX_MESSAGE)
        if not data:
            raise ZdsError("ztunnel closed the connection")
        return data

    def _report(self) -> None:
        self.state.acked = sorted(self.sent)

    def disconnect(self, error: str) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None
        self.sent = {}
        self.state.connected = False
        self.state.acked = []
        self.state.last_error = error


def read_pods(path: Path) -> list[Pod]:
    """The wanted pods from the lab's JSON file; none while it does not exist."""
    try:
        return [Pod.from_json(item) for item in json.loads(path.read_text())]
    except FileNotFoundError:
        return []


def write_json(path: Path, data: Any) -> None:
    """Write by rename, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def serve(socket_path: Path, pods_path: Path, status_path: Path, deadline: float | None = None) -> None:
    """The daemon loop: accept ztunnel, send it the snapshot, then follow the pods file."""
    agent = NodeAgent(listen(socket_path))
    write_json(status_path, agent.state.to_json())
    while deadline is None or time.monotonic() < deadline:
        try:
            if agent.accept_if_ready(0 if agent.connection else POLL_S):
                agent.snapshot(read_pods(pods_path))
            elif agent.connection is not None:
                agent.reconcile(read_pods(pods_path))
                time.sleep(POLL_S)
        except (ZdsError, netns.NetnsError, OSError, ValueError, KeyError) as error:
            agent.disconnect(str(error))
        write_json(status_path, agent.state.to_json())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testrigs.lab.zds", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True, help="the ZDS socket ztunnel connects to")
    parser.add_argument("--pods", type=Path, required=True, help="JSON list of the pods to hand to ztunnel")
    parser.add_argument("--status", type=Path, required=True, help="where the agent writes its state")
    args = parser.parse_args(argv)
    serve(args.socket, args.pods, args.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
