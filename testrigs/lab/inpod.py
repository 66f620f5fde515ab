"""The traffic redirection istio-cni installs inside an ambient pod for the real ztunnel (in-pod mode).

Role: the lab's CNI-agent stand-in (``zds``) hands a pod's network namespace to ztunnel, which
opens its listeners (15001 outbound, 15006 inbound plaintext, 15008 HBONE, 15053 DNS) *inside*
that namespace; this module installs, in the same namespace, the rules that send the pod's
traffic to them. The rules follow istio-cni's ``AppendInpodRules`` in
``cni/pkg/iptables/iptables.go`` and the routes of ``iptables_linux.go`` (``AddInpodMarkIPRule``,
``AddLoopbackRoutes``) of the pinned ``istio.io/istio`` module, with that module's constants
(``cni/pkg/config/config.go``): ztunnel marks its own sockets 0x539/0xfff (1337), connections it
accepted get the connmark 0x111/0xfff, and marked packets route through table 100 to ``lo``.

What is left out, and why:

- DNS capture (``redirectDNS``): lab pods resolve names from their ``/etc/netns/<ns>/hosts``;
  no DNS packet is ever sent, so the rules would never match.
- The host-probe SNAT address 169.254.7.127 rules are kept (they match nothing in the lab, where no
  kubelet probes a pod), so the chain is istio-cni's, rule for rule.
- IPv6: the lab is IPv4 only.
- virtual interfaces and ingress mode (pod overrides): no lab pod uses them.
"""

from __future__ import annotations

import contextlib

from testrigs.lab import netns

INPOD_MARK = "0x539/0xfff"  # config.InpodMark (1337) / InpodMask
INPOD_TPROXY_MARK = "0x111/0xfff"  # config.InpodTProxyMark / InpodTProxyMask
RESTORE_MASK = "0xffffffff"  # config.InpodRestoreMask
ROUTE_TABLE = 100  # config.RouteTableInbound
RULE_PRIORITY = 32764
HOST_PROBE_SNAT = "169.254.7.127/32"
OUTBOUND_PORT = 15001  # config.ZtunnelOutboundPort
INBOUND_PLAINTEXT_PORT = 15006  # config.ZtunnelInboundPlaintextPort
INBOUND_PORT = 15008  # config.ZtunnelInboundPort (HBONE): never redirected


def rules() -> str:
    """istio-cni's in-pod mangle and nat rules, as iptables-restore input (tables replaced whole)."""
    return "\n".join(
        [
            "*mangle",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            ":ISTIO_OUTPUT - [0:0]",
            ":ISTIO_PRERT - [0:0]",
            "-A PREROUTING -j ISTIO_PRERT",
            "-A OUTPUT -j ISTIO_OUTPUT",
            # A packet ztunnel sent (mark 1337) marks its connection, so replies route back to it.
            f"-A ISTIO_PRERT -m mark --mark {INPOD_MARK} -j CONNMARK --set-xmark {INPOD_TPROXY_MARK}",
            f"-A ISTIO_OUTPUT -m connmark --mark {INPOD_TPROXY_MARK} -j CONNMARK --restore-mark "
            f"--nfmask {RESTORE_MASK} --ctmask {RESTORE_MASK}",
            "COMMIT",
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            ":ISTIO_OUTPUT - [0:0]",
            ":ISTIO_PRERT - [0:0]",
            "-A PREROUTING -j ISTIO_PRERT",
            "-A OUTPUT -j ISTIO_OUTPUT",
            f"-A ISTIO_PRERT -s {HOST_PROBE_SNAT} -p tcp -m tcp -j ACCEPT",
            # Inbound: everything but HBONE and ztunnel's own packets goes to the plaintext port.
            f"-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport {INBOUND_PORT} -m mark ! --mark {INPOD_MARK} "
            f"-j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
            f"-A ISTIO_OUTPUT -d {HOST_PROBE_SNAT} -p tcp -m tcp -j ACCEPT",
            f"-A ISTIO_OUTPUT -p tcp -m mark --mark {INPOD_TPROXY_MARK} -j ACCEPT",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
            # Outbound: everything the app sends (not ztunnel, not loopback) goes to ztunnel.
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {INPOD_MARK} "
            f"-j REDIRECT --to-ports {OUTBOUND_PORT}",
            "COMMIT",
            "",
        ]
    )


def install(namespace: str) -> None:
    """Install the rules, the mark rule and the loopback route in a lab pod's namespace (idempotent)."""
    netns.apply_tables(namespace, rules())
    netns.ip_batch(namespace, f"route replace local 0.0.0.0/0 dev lo table {ROUTE_TABLE}\n")
    # iproute2 here has no `rule replace`; an existing rule is fine (istio-cni ignores EEXIST too).
    try:
        netns.ip_batch(namespace, f"rule add fwmark {INPOD_TPROXY_MARK} pref {RULE_PRIORITY} lookup {ROUTE_TABLE}\n")
    except netns.NetnsError as error:
        if "File exists" not in str(error):
            raise


def remove(namespace: str) -> None:
    """Remove the redirection (the pod leaves the mesh): empty mangle and nat, no mark rule or route."""
    empty = "".join(
        f"*{table}\n" + "".join(f":{chain} ACCEPT [0:0]\n" for chain in chains) + "COMMIT\n"
        for table, chains in (
            ("mangle", ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")),
            ("nat", ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")),
        )
    )
    netns.apply_tables(namespace, empty)
    # Either may already be gone (a pod handed back twice): removal is level-based.
    with contextlib.suppress(netns.NetnsError):
        netns.ip_batch(
            namespace,
            f"rule del fwmark {INPOD_TPROXY_MARK} pref {RULE_PRIORITY} lookup {ROUTE_TABLE}\n"
            f"route flush table {ROUTE_TABLE}\n",
            force=True,
        )
