"""Flood-and-learn (``l2`` without a control plane): the group joined on
hostInterface, and other hosts' VTEPs learned. A VXLAN device that sent into the
segment, never received anything and learned no remote VTEP means the underlay
does not carry the group between hosts."""

from __future__ import annotations

import ipaddress

from xvmcni.dataplane.netlink import get_link
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import igmp_groups
from xvmcni.diagnose.target import Target

NAME = "multicast"
FLOOD_MAC = "00:00:00:00:00:00"
FIX = ("make the underlay carry the group: an IGMP querier on the switch/VLAN (or "
       "IGMP snooping off), multicast routing between subnets; or use the etcd control "
       "plane (\"controlPlane\": {\"type\": \"etcd\", ...}), which needs no multicast")


def learned_vteps(t: Target, index: int, group: ipaddress.IPv4Address) -> set[str]:
    remote = set()
    for entry in t.host.ipr.fdb("dump", ifindex=index):
        if entry.get("ifindex") != index:
            continue
        dst = entry.get("NDA_DST")
        if dst and str(dst) != str(group) and entry.get("NDA_LLADDR") != FLOOD_MAC:
            remote.add(str(dst))
    return remote


def run(t: Target) -> list[Finding]:
    group = t.inspector.group(t.network)
    vxlan_name = t.inspector.vxlan(t.network)
    if group is None or vxlan_name is None or not t.in_use():
        return []
    hostif = t.inspector.host_interface(t.network)
    found: list[Finding] = []
    if group not in igmp_groups(hostif):
        found.append(fd.fail(NAME, f"group {group}", f"{hostif} has not joined {group}: "
                             "floods from other hosts are not received",
                             f"xvmctl gc (re-creates {vxlan_name}, which joins the group); "
                             f"check that {hostif} is up and multicast-capable", t.name))
    link = get_link(t.host.ipr, vxlan_name)
    if link is None:
        return found  # reported by the objects check
    remote = learned_vteps(t, int(link["index"]), group)
    stats = link.get("IFLA_STATS64") or {}
    sent, received = int(stats.get("tx_packets", 0)), int(stats.get("rx_packets", 0))
    if remote:
        found.append(fd.ok(NAME, vxlan_name, f"joined {group}; learned {len(remote)} remote "
                           f"VTEPs ({', '.join(sorted(remote))})", t.name))
    elif sent and not received:
        found.append(fd.fail(NAME, vxlan_name, f"multicast does not cross your underlay: "
                             f"{vxlan_name} sent {sent} packets to {group} and never received "
                             "one, and no other host's VTEP was ever learned (or this is the "
                             "only host with pods)", FIX, t.name))
    else:
        found.append(fd.ok(NAME, vxlan_name, f"joined {group}; no remote VTEP learned yet "
                           f"({sent} sent, {received} received)", t.name))
    return found
