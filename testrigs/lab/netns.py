"""Network namespaces, veths, the bridge, per-pod DNS files and iptables, all inside the lab.

Role: the lab's stand-in for a node's CNI, kube-proxy, CoreDNS and istio-cni. ``lab.py`` calls it;
it shells out to ``ip`` and ``iptables-nft-restore``.

Safety rules this module keeps (and the tests check): every namespace it creates is named
``malab-<lab id>-...``; the bridge lives in the lab's own ``malab-<id>-br`` namespace, and each veth
is created inside that namespace with its peer moved straight into the pod's namespace, so no
interface, route, rule or sysctl ever appears in the host's namespace; addresses come from the
benchmarking range 198.18.0.0/15 only (pods in 198.18.0.0/16, Service VIPs in 198.19.0.0/16);
there is no default route, so nothing can leave the lab. iptables runs only through
``ip netns exec <lab namespace>``, and its rules die with the namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from testrigs.lab.procs import IP

PREFIX = "malab-"
POD_NETWORK = ipaddress.ip_network("198.18.0.0/16")
VIP_NETWORK = ipaddress.ip_network("198.19.0.0/16")
LAB_PREFIX_LEN = 15  # 198.18.0.0/15: pods and VIPs are on-link, nothing else is reachable
ETC_NETNS = Path("/etc/netns")
BRIDGE = "br0"
# Debian's nft variant: nf_tables rules are per network namespace and vanish with it. An absolute
# path, because sudo or CI environments may not put /usr/sbin on PATH.
IPTABLES_RESTORE = "/usr/sbin/iptables-nft-restore"
PROXY_UID = 1337  # Istio's proxy uid; its own traffic is never captured
COMMAND_TIMEOUT_S = 20


class NetnsError(RuntimeError):
    """An ip or iptables command failed; the message holds the command and its stderr."""


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        result = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S
        )
    except FileNotFoundError as error:
        raise NetnsError(f"{argv[0]} is not installed: {error}") from error
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _check_name(name: str) -> None:
    # The one guard every mutating call passes: the lab only ever touches its own namespaces.
    if not name.startswith(PREFIX):
        raise NetnsError(f"refusing to touch network namespace {name!r}: not a lab namespace ({PREFIX}*)")


def check_address(address: str) -> None:
    """Refuse any address outside 198.18.0.0/15."""
    if ipaddress.ip_address(address) not in ipaddress.ip_network("198.18.0.0/15"):
        raise NetnsError(f"refusing address {address}: the lab uses 198.18.0.0/15 only")


def list_lab_namespaces(prefix: str = PREFIX) -> list[str]:
    out = _run([IP, "netns", "list"])
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


def create_bridge_namespace(name: str) -> None:
    _check_name(name)
    _run([IP, "netns", "add", name])
    _run(
        [IP, "-n", name, "-batch", "-"], stdin=f"link set lo up\nlink add {BRIDGE} type bridge\nlink set {BRIDGE} up\n"
    )


def create_pod_namespace(name: str, bridge_ns: str, veth: str, address: str) -> None:
    """A namespace with lo and eth0 (address/15, no default route), wired to the lab bridge."""
    _check_name(name)
    _check_name(bridge_ns)
    check_address(address)
    _run([IP, "netns", "add", name])
    batch = f"link add {veth} type veth peer name eth0 netns {name}\nlink set {veth} master {BRIDGE} up\n"
    _run([IP, "-n", bridge_ns, "-batch", "-"], stdin=batch)
    pod = f"link set lo up\naddr add {address}/{LAB_PREFIX_LEN} dev eth0\nlink set eth0 up\n"
    _run([IP, "-n", name, "-batch", "-"], stdin=pod)


def delete_namespace(name: str) -> None:
    """Delete a lab namespace and its /etc/netns files; a missing one is fine."""
    _check_name(name)
    with contextlib.suppress(NetnsError):
        _run([IP, "netns", "delete", name])
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty: another lab's files keep it


def write_dns(name: str, hosts: str, resolv: str) -> None:
    """/etc/netns/<ns>/{hosts,resolv.conf}: ip netns exec bind-mounts them over /etc."""
    _check_name(name)
    directory = ETC_NETNS / name
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    for filename, text in (("hosts", hosts), ("resolv.conf", resolv)):
        # Rewritten in place, not replaced: a running process's bind mount pins the inode.
        with (directory / filename).open("w") as handle:
            handle.write(text)


def hosts_file(pod_name: str, pod_ip: str, pod_namespace: str, services: Iterable[tuple[str, str, str]]) -> str:
    """An /etc/hosts where each Service name form a pod of ``pod_namespace`` can use maps to its VIP."""
    lines = ["127.0.0.1\tlocalhost", f"{pod_ip}\t{pod_name}"]
    for namespace, service, vip in services:
        names = [f"{service}.{namespace}.svc.cluster.local", f"{service}.{namespace}.svc", f"{service}.{namespace}"]
        if namespace == pod_namespace:
            names.append(service)  # the search path makes the short name work in its own namespace
        lines.append(f"{vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(pod_namespace: str) -> str:
    # No DNS server exists: names not in hosts fail fast on loopback, never leave the pod.
    search = f"{pod_namespace}.svc.cluster.local svc.cluster.local cluster.local"
    return f"nameserver 127.0.0.1\nsearch {search}\noptions ndots:5 timeout:1 attempts:1\n"


def nat_rules(*, captured: bool, inbound: bool, vip_dnat: Iterable[tuple[str, int, str, int]]) -> str:
    """The pod's nat table for iptables-restore.

    Captured (istio-cni's job): outbound TCP except the proxy's own (uid 1337) and loopback goes to
    :15001; inbound TCP except HBONE :15008 goes to :15006 (unless inbound capture is bypassed).
    Not captured: kube-proxy's job, DNAT of each Service VIP:port to one of its backend pod:ports,
    chosen at random per connection (the entries of one VIP:port, in order, are its backends).
    """
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    if captured:
        lines += [
            f"-A OUTPUT -p tcp -m owner --uid-owner {PROXY_UID} -j RETURN",
            "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN",
            "-A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]
        if inbound:
            lines += [
                "-A PREROUTING -p tcp --dport 15008 -j RETURN",
                "-A PREROUTING -p tcp -j REDIRECT --to-ports 15006",
            ]
    else:
        lines += kube_proxy_dnat(vip_dnat)
    return "\n".join([*lines, "COMMIT", ""])


def kube_proxy_dnat(
    vip_dnat: Iterable[tuple[str, int, str, int]],
    vip_network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None,
) -> list[str]:
    """kube-proxy's nat OUTPUT rules (iptables-restore lines): each Service VIP:port to its backends.

    ``vip_dnat``: (VIP, port, backend pod address, target port); the entries of one VIP:port, in
    order, are its backends, one chosen at random per connection. Backends must be lab addresses
    (``check_address``); VIPs too, or in ``vip_network`` when given (the test control plane's
    Service range, for the real-ztunnel node). Raises NetnsError for any other address.
    """
    groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for vip, port, backend, target in vip_dnat:
        if vip_network is None:
            check_address(vip)
        elif ipaddress.ip_address(vip) not in vip_network:
            raise NetnsError(f"refusing Service address {vip}: not in {vip_network}")
        check_address(backend)
        groups.setdefault((vip, port), []).append((backend, target))
    lines = []
    for (vip, port), backends in groups.items():
        for index, (backend, target) in enumerate(backends):
            # kube-proxy's iptables mode: rule i of n matches with probability 1/(n-i), so
            # each of the n backends gets 1/n of the new connections.
            remaining = len(backends) - index
            pick = f" -m statistic --mode random --probability {1 / remaining:.11f}" if remaining > 1 else ""
            lines.append(
                f"-A OUTPUT -p tcp -d {vip}/32 --dport {port}{pick} -j DNAT --to-destination {backend}:{target}"
            )
    return lines


def apply_nat(name: str, rules: str) -> None:
    """Replace the namespace's nat table atomically."""
    _check_name(name)
    _run([IP, "netns", "exec", name, IPTABLES_RESTORE], stdin=rules)


def apply_tables(name: str, rules: str) -> None:
    """Replace the tables ``rules`` names (iptables-restore input) atomically, in a lab namespace."""
    _check_name(name)
    _run([IP, "netns", "exec", name, IPTABLES_RESTORE], stdin=rules)


def ip_batch(name: str, batch: str, *, force: bool = False) -> None:
    """Run ``ip -batch`` commands in a lab namespace; ``force`` goes on past a failing line."""
    _check_name(name)
    _run([IP, "-n", name, *(["-force"] if force else []), "-batch", "-"], stdin=batch)


def nat_table(name: str) -> str:
    _check_name(name)
    return _run([IP, "netns", "exec", name, "/usr/sbin/iptables-nft", "-t", "nat", "-S"])
