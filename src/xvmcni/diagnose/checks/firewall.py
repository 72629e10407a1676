"""Host firewalls that break the overlay: a forward policy of DROP that bridged
(``bridge-nf-call-iptables``) or routed pod traffic meets without an accept, and an
INPUT chain that drops the VXLAN UDP port."""

from __future__ import annotations

import ipaddress

from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import sysctl
from xvmcni.diagnose.nfeval import DROP, Ruleset
from xvmcni.diagnose.target import Target

NAME = "firewall"
FAMILIES = ("ip", "inet")


def _may(uncertain: bool) -> str:
    return "may drop" if uncertain else "drops"


def run(t: Target) -> list[Finding]:
    rules = Ruleset(t.host.ruleset())
    found: list[Finding] = []
    bridge = t.inspector.bridge(t.network)
    v4 = [p for p in t.inspector.pod_prefixes(t.network) if p.version == 4]
    bridged = t.network.config.model == "l2"
    nf_call = sysctl("net.bridge.bridge-nf-call-iptables") == "1"
    if v4 and (not bridged or nf_call):
        pod = v4[0].network_address + 2
        other = pod + 1 if bridged else ipaddress.IPv4Address("192.0.2.1")
        packet = {"iifname": bridge, "oifname": bridge if bridged else "", "l4proto": "udp",
                  "dport": 53, "saddr": str(pod), "daddr": str(other)}
        if not bridged:
            packet.pop("oifname")
        verdict = rules.verdict("forward", FAMILIES, packet)
        if verdict.verdict == DROP:
            why = ("bridge-nf-call-iptables = 1 sends bridged pod traffic through the "
                   "forward hook, and " if bridged else "")
            found.append(fd.fail(
                NAME, "FORWARD", f"{why}{verdict.chain} {_may(verdict.uncertain)} traffic "
                f"from {bridge} ({v4[0]}): pods cannot reach each other", "accept it: "
                f"iptables -I FORWARD -i {bridge} -j ACCEPT && iptables -I FORWARD -o "
                f"{bridge} -j ACCEPT (with Docker: in DOCKER-USER)"
                + (", or sysctl -w net.bridge.bridge-nf-call-iptables=0" if bridged else ""),
                t.name))
    port = t.inspector.port(t.network)
    hostif = t.inspector.host_interface(t.network)
    if port is not None:
        packet = {"iifname": hostif, "l4proto": "udp", "dport": port}
        peers = t.peers().peers or []
        if peers:
            packet["saddr"] = str(peers[0].underlay)
        verdict = rules.verdict("input", FAMILIES, packet)
        if verdict.verdict == DROP:
            found.append(fd.fail(
                NAME, f"UDP {port}", f"{verdict.chain} {_may(verdict.uncertain)} VXLAN "
                f"packets (UDP port {port}) arriving on {hostif}: no other host's pods can "
                "reach this host's", f"accept them before the drop: iptables -I INPUT -i "
                f"{hostif} -p udp --dport {port} -j ACCEPT (or nft insert rule ... udp "
                f"dport {port} accept)", t.name))
    if not found:
        found.append(fd.ok(NAME, "nftables", "no forward or input rule drops this network's "
                           "traffic", t.name))
    return found
