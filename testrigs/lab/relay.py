"""A TCP relay from a lab node's namespace to a loopback port of the host: how ztunnel reaches istiod.

Role: ztunnel runs in the lab node's network namespace (its admin, readiness and metrics ports are
fixed, 15000/15021/15020, so it cannot share the host's), but istiod listens on the host's
loopback, and the lab never adds an interface or route to the host's namespace. This process
binds its listener inside the node's namespace (``setns`` for the one ``bind``, then back) and
opens every upstream connection from the host's namespace: a socket lives in the namespace it was
created in. ``python -m testrigs.lab.relay --netns NS --listen PORT --target PORT``; both ends are
127.0.0.1. Bytes are copied unchanged (the TLS session is ztunnel's and istiod's).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
BUFFER = 65536


def _setns(fd: int) -> None:
    # os.setns arrives in Python 3.12; the lab runs on 3.11.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def listen_in(netns: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` inside the named lab namespace."""
    if not netns.startswith("malab-"):
        raise ValueError(f"refusing namespace {netns!r}: not a lab namespace")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)
    return listener


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(BUFFER):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _serve_one(client: socket.socket, target_port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threads = [
        threading.Thread(target=_pump, args=(client, upstream), daemon=True),
        threading.Thread(target=_pump, args=(upstream, client), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    upstream.close()


def serve(listener: socket.socket, target_port: int) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(client, target_port), daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testrigs.lab.relay", description=__doc__)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    args = parser.parse_args(argv)
    serve(listen_in(args.netns, args.listen), args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
