"""The macvlan model's kernel objects on one host, per network (seed 004):

    VXLAN device xvmmx<VNI>          the L2 domain's link to the other hosts
      host macvlan xvmmh<VNI>        bridge mode; this host's router address(es)
      pod macvlans (in the pods)     bridge mode children of the same VXLAN device

plus, per address family, the seed's bypass rule ``from <subnet> to <subnet> lookup
<table>`` with ``<subnet> dev xvmmh<VNI>`` in that table (same-subnet traffic stays on
the L2 even where a route per remote slice is more specific), and in table main a
route per remote host's slice via that host's router address on the macvlan.

Ownership: both devices carry the network's mark (``dataplane/ownership``); pod
macvlans carry the pod's; rules and routes carry our route protocol number, so we
only ever delete our own. Addresses and routes on the host macvlan go with it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import nft, ownership, routes, sysctl
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, delete_link, get_link, kernel_error, link_kind
from xvmcni.dataplane.routednet import IFA_F_NODAD, gateway_addresses

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
VXLAN_OVERHEAD = {4: 50, 6: 70}


@dataclass(frozen=True)
class SegmentSpec:
    network: str                      # the ownership mark's network: "<config>@<segment>"
    vxlan: str
    macvlan: str
    vni: int
    port: int
    group: IPAddress | None
    ttl: int
    tos: int
    learning: bool
    local: IPAddress
    underlay_index: int
    mtu: int
    # This host's router addresses: one per family (slices), or one per address block
    # it holds (etcd blocks; none before its first block).
    routers: tuple[IPInterface, ...]
    router_mac: str
    bypass_table: int
    bypass_priority: int
    protocol: int
    subnets: tuple[IPNetwork, ...]


def _claim(link: Any, name: str, network: str) -> None:
    mark = ownership.owner(link)
    if mark is not None and mark.network == network:
        return
    owner = f"xvm-cni network {mark.network!r}" if mark is not None else "someone else"
    raise DataplaneError(DataplaneError.HOST_CONFLICT,
                         f"{name} already exists on this host and belongs to {owner}",
                         "xvm-cni never changes devices it does not own: give this network "
                         "another VXLAN id, or remove the device")


def _vxlan_mismatch(link: Any, spec: SegmentSpec) -> str:
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    if link_kind(link) != "vxlan" or data is None:
        return f"{spec.vxlan} is not a VXLAN device"
    if data.get("IFLA_VXLAN_ID") != spec.vni or data.get("IFLA_VXLAN_PORT") != spec.port:
        return f"{spec.vxlan} has VNI/port {data.get('IFLA_VXLAN_ID')}/" \
            f"{data.get('IFLA_VXLAN_PORT')}, wanted {spec.vni}/{spec.port}"
    return ""


def _create(ipr: Any, name: str, network: str, **kwargs: Any) -> int:
    try:
        ipr.link("add", ifname=name, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise kernel_error(f"create {name}", exc) from exc
        link = get_link(ipr, name)
        _claim(link, name, network)  # a concurrent creator of ours won
    link = get_link(ipr, name)
    if link is None:
        raise DataplaneError(DataplaneError.KERNEL, f"{name} vanished while being created")
    if ownership.owner(link) is None:
        ownership.mark(ipr, int(link["index"]), ownership.Mark(network))
    return int(link["index"])


def _ensure_vxlan(ipr: Any, spec: SegmentSpec, in_use: bool) -> int:
    link = get_link(ipr, spec.vxlan)
    if link is not None:
        _claim(link, spec.vxlan, spec.network)
        why = _vxlan_mismatch(link, spec)
        if why and in_use:
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"network {spec.network} is in use with other VXLAN settings "
                                 "on this host; remove its containers before changing them",
                                 why)
        if why:
            delete_link(ipr, spec.macvlan)
            delete_link(ipr, spec.vxlan)
            link = None
    if link is None:
        extra: dict[str, Any] = {}
        if spec.group is not None:
            extra["vxlan_group" if spec.group.version == 4 else "vxlan_group6"] = str(spec.group)
        if spec.ttl:
            extra["vxlan_ttl"] = spec.ttl
        if spec.tos:
            extra["vxlan_tos"] = spec.tos
        local = "vxlan_local" if spec.local.version == 4 else "vxlan_local6"
        index = _create(ipr, spec.vxlan, spec.network, kind="vxlan", vxlan_id=spec.vni,
                        vxlan_link=spec.underlay_index, vxlan_port=spec.port,
                        vxlan_learning=1 if spec.learning else 0, mtu=spec.mtu,
                        **{local: str(spec.local)}, **extra)
    else:
        index = int(link["index"])
    # The VXLAN device is only the macvlans' lower device: no addresses of its own.
    sysctl.ensure_if_present(f"net.ipv6.conf.{spec.vxlan}.disable_ipv6", "1")
    try:
        ipr.link("set", index=index, mtu=spec.mtu, state="up")
    except NetlinkError as exc:
        raise kernel_error(f"bring {spec.vxlan} up", exc) from exc
    return index


def _ensure_macvlan(ipr: Any, spec: SegmentSpec, vxlan_index: int) -> int:
    link = get_link(ipr, spec.macvlan)
    if link is not None:
        _claim(link, spec.macvlan, spec.network)
        if link.get("IFLA_LINK") != vxlan_index:
            delete_link(ipr, spec.macvlan)  # ours, on a VXLAN device that was replaced
            link = None
    if link is None:
        index = _create(ipr, spec.macvlan, spec.network, kind="macvlan", link=vxlan_index,
                        macvlan_mode="bridge", address=spec.router_mac, mtu=spec.mtu)
    else:
        index = int(link["index"])
    add_routers(ipr, spec, index)
    return index


def add_routers(ipr: Any, spec: SegmentSpec, index: int | None = None) -> None:
    """Every router address of ``spec`` on the host macvlan (a block claimed since the
    join brings one more)."""
    if index is None:
        link = get_link(ipr, spec.macvlan)
        if link is None or not ownership.owned_by(link, spec.network):
            raise DataplaneError(DataplaneError.KERNEL, f"host macvlan {spec.macvlan} is gone")
        index = int(link["index"])
    # Loose reverse-path filtering on this device only: a pod's packet to a pod of
    # another network arrives here while the route back to its source may point to
    # another host's slice route (the kernel uses max(all, device): 2 = loose).
    sysctl.ensure_if_present(f"net.ipv4.conf.{spec.macvlan}.rp_filter", "2")
    if not any(s.version == 6 for s in spec.subnets):
        sysctl.ensure_if_present(f"net.ipv6.conf.{spec.macvlan}.disable_ipv6", "1")
    try:
        ipr.link("set", index=index, mtu=spec.mtu, state="up")
        present = gateway_addresses(ipr, index)
        for router in spec.routers:
            if (router.ip, router.network.prefixlen) not in present:
                ipr.addr("add", index=index, address=str(router.ip),
                         prefixlen=router.network.prefixlen,
                         flags=IFA_F_NODAD if router.version == 6 else 0)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise kernel_error(f"configure {spec.macvlan}", exc) from exc


def ensure(ipr: Any, spec: SegmentSpec, in_use: bool) -> tuple[int, int]:
    """VXLAN device, host macvlan with the router addresses, bypass table and rules,
    forwarding; (VXLAN index, macvlan index). Undone by ``remove`` on failure of a
    fresh join."""
    try:
        vxlan_index = _ensure_vxlan(ipr, spec, in_use)
        mv_index = _ensure_macvlan(ipr, spec, vxlan_index)
        _ensure_bypass(ipr, spec, mv_index)
        for router in spec.subnets:
            sysctl.ensure("net.ipv4.ip_forward" if router.version == 4
                          else "net.ipv6.conf.all.forwarding", "1")
    except BaseException:
        if not in_use:
            remove(ipr, spec)
        raise
    return vxlan_index, mv_index


# --- bypass rule ---------------------------------------------------------------------

def _rule_spec(spec: SegmentSpec, subnet: IPNetwork) -> dict[str, Any]:
    prefix = subnet.prefixlen
    return {"family": FAMILIES[subnet.version], "table": spec.bypass_table,
            "priority": spec.bypass_priority, "src": str(subnet.network_address),
            "src_len": prefix, "dst": str(subnet.network_address), "dst_len": prefix,
            "protocol": spec.protocol}


def our_rules(ipr: Any, spec: SegmentSpec) -> list[IPNetwork]:
    """The subnets of this network that have our bypass rule."""
    found: list[IPNetwork] = []
    for family in FAMILIES.values():
        for rule in ipr.get_rules(family=family):
            if rule.get("FRA_PROTOCOL") != spec.protocol \
                    or rule.get("FRA_TABLE", rule.get("table")) != spec.bypass_table:
                continue
            src, dst = rule.get("FRA_SRC"), rule.get("FRA_DST")
            if src is None or dst is None or rule["src_len"] != rule["dst_len"]:
                continue
            net = ipaddress.ip_network(f"{src}/{rule['src_len']}", strict=False)
            if net in spec.subnets and str(dst) == str(net.network_address):
                found.append(net)
    return found


def _ensure_bypass(ipr: Any, spec: SegmentSpec, mv_index: int) -> None:
    present = set(our_rules(ipr, spec))
    for subnet in spec.subnets:
        try:
            ipr.route("replace", dst=str(subnet), oif=mv_index, table=spec.bypass_table,
                      proto=spec.protocol, scope=253 if subnet.version == 4 else 0,
                      family=FAMILIES[subnet.version])
            if subnet not in present:
                ipr.rule("add", **_rule_spec(spec, subnet))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise kernel_error(f"install the bypass rule for {subnet}", exc) from exc


def _remove_rules(ipr: Any, spec: SegmentSpec) -> None:
    for subnet in our_rules(ipr, spec):
        try:
            ipr.rule("del", **_rule_spec(spec, subnet))
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH):
                raise kernel_error(f"remove the bypass rule for {subnet}", exc) from exc


def remove(ipr: Any, spec: SegmentSpec) -> None:
    """Everything of this network on the host, only what carries its mark (rules:
    our protocol and table). The kernel takes addresses and routes with the devices."""
    _remove_rules(ipr, spec)
    for name in (spec.macvlan, spec.vxlan):
        link = get_link(ipr, name)
        if link is not None and ownership.owned_by(link, spec.network):
            delete_link(ipr, name)


def problems(ipr: Any, spec: SegmentSpec) -> list[str]:
    found: list[str] = []
    vxlan = get_link(ipr, spec.vxlan)
    if vxlan is None:
        return [f"VXLAN device {spec.vxlan} is missing"]
    why = _vxlan_mismatch(vxlan, spec)
    if why:
        found.append(why)
    if not vxlan["flags"] & IFF_UP:
        found.append(f"VXLAN device {spec.vxlan} is down")
    mv = get_link(ipr, spec.macvlan)
    if mv is None:
        return [*found, f"host macvlan {spec.macvlan} is missing"]
    if not mv["flags"] & IFF_UP:
        found.append(f"host macvlan {spec.macvlan} is down")
    present = gateway_addresses(ipr, int(mv["index"]))
    for router in spec.routers:
        if (router.ip, router.network.prefixlen) not in present:
            found.append(f"{spec.macvlan} lacks router address {router}")
    missing = set(spec.subnets) - set(our_rules(ipr, spec))
    for subnet in sorted(missing, key=str):
        found.append(f"bypass rule for {subnet} (table {spec.bypass_table}) is missing")
    return found


# --- routes per remote slice -----------------------------------------------------------

def program_routes(ipr: Any, spec: SegmentSpec,
                   wanted: dict[IPNetwork, IPAddress]) -> tuple[int, int] | None:
    """Exactly ``wanted`` (remote slice -> that host's router address) as routes of ours
    on the host macvlan; (added, removed), None before the host joined."""
    mv = get_link(ipr, spec.macvlan)
    if mv is None or not ownership.owned_by(mv, spec.network):
        return None
    index = int(mv["index"])
    ours, foreign = routes.main_routes(ipr, spec.protocol, {index})
    want = {routes.RouteEntry(dst=dst, gateway=gw, oif=index) for dst, gw in wanted.items()
            if dst not in foreign}
    have = {routes.RouteEntry(dst=r.dst, gateway=r.gateway, oif=r.oif) for r in ours}
    for entry in sorted(want - have, key=str):
        routes.replace_route(ipr, entry, spec.protocol)
    stale = [r for r in ours if r.dst not in {w.dst for w in want}]
    for entry in stale:
        routes.delete_route(ipr, entry, spec.protocol)
    return len(want - have), len(stale)


def program_underlay_routes(ipr: Any, protocol: int, underlay_index: int,
                            subnets: tuple[IPNetwork, ...],
                            wanted: dict[IPNetwork, IPAddress]) -> tuple[int, int]:
    """Exactly ``wanted`` (a remote host's slice or block of a network this host has
    not joined -> that host's underlay address) as routes of ours via the underlay;
    only routes of our protocol inside ``subnets`` are ours. (added, removed)."""
    ours, foreign = routes.main_routes(ipr, protocol, {underlay_index})
    ours = [r for r in ours
            if any(r.dst.version == n.version and r.dst.subnet_of(n)  # type: ignore[arg-type]
                   for n in subnets)]
    want = {routes.RouteEntry(dst=dst, gateway=gw, oif=underlay_index)
            for dst, gw in wanted.items() if dst not in foreign}
    have = {routes.RouteEntry(dst=r.dst, gateway=r.gateway, oif=r.oif) for r in ours}
    for entry in sorted(want - have, key=str):
        routes.replace_route(ipr, entry, protocol)
    stale = [r for r in ours if r.dst not in {w.dst for w in want}]
    for entry in stale:
        routes.delete_route(ipr, entry, protocol)
    return len(want - have), len(stale)


# --- isolation -------------------------------------------------------------------------

def _prefix(net: IPNetwork) -> dict[str, Any]:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def isolation_batch(network: str, mine: tuple[IPNetwork, ...],
                    others: tuple[IPNetwork, ...]) -> list[dict[str, Any]]:
    """Our own inet table: forwarding between this network and the configuration's
    other networks is dropped, in both directions (counted)."""
    name = nft.table_name(network)
    table = {"family": "inet", "name": name}
    batch: list[dict[str, Any]] = [
        {"add": {"table": table}}, {"flush": {"table": table}},
        {"add": {"chain": {"family": "inet", "table": name, "name": "forward",
                           "type": "filter", "hook": "forward", "prio": 0,
                           "policy": "accept"}}}]
    for a in mine:
        for b in others:
            if a.version != b.version:
                continue
            proto = "ip" if a.version == 4 else "ip6"
            for src, dst in ((a, b), (b, a)):
                batch.append({"add": {"rule": {
                    "family": "inet", "table": name, "chain": "forward",
                    "expr": [{"match": {"op": "==", "left": {"payload": {
                                 "protocol": proto, "field": "saddr"}}, "right": _prefix(src)}},
                             {"match": {"op": "==", "left": {"payload": {
                                 "protocol": proto, "field": "daddr"}}, "right": _prefix(dst)}},
                             {"counter": None}, {"drop": None}]}}})
    return batch


def delete_isolation_batch(network: str) -> list[dict[str, Any]]:
    return nft.delete_table_batch("inet", network)
