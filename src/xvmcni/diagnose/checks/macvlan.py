"""Model ``macvlan``: what its own ``problems()`` does not look at. The VXLAN device
and host macvlan carry this network's ownership mark (a device of that name that
is someone else's is never used: pods would land on a foreign L2); the bypass
table routes each segment subnet to the host macvlan (the bypass rule sends
traffic within the subnet there, past the remote-slice routes); the isolation
table is there exactly when the segment is isolated. Other models: nothing.

On the host: bypass rules and routes with a macvlan route protocol that lie in no
segment this host knows are leftovers (rules outlive the devices they lead to)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from xvmcni.dataplane import nft, ownership
from xvmcni.dataplane.netlink import get_link
from xvmcni.diagnose import findings as fd
from xvmcni.diagnose.findings import Finding
from xvmcni.diagnose.host import Host
from xvmcni.diagnose.target import Target
from xvmcni.models import macvlan, macvlan_config, routed
from xvmcni.networks import routed_settings

NAME = "macvlan"
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def _bypass_routes(ipr: Any, table: int, index: int, version: int) -> set[str]:
    """Destinations routed to device ``index`` in routing table ``table``."""
    found = set()
    for route in ipr.route("dump", family=FAMILIES[version]):
        if route.get("RTA_TABLE", route["table"]) != table or route.get("RTA_OIF") != index:
            continue
        dst = route.get("RTA_DST")
        if dst is not None:
            found.add(str(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)))
    return found


def run(t: Target) -> list[Finding]:
    model = t.model
    if not isinstance(model, macvlan.MacvlanModel) or not t.in_use():
        return []
    seg, cfg = model.segment, model.settings.config
    found: list[Finding] = []
    for kind, name in (("VXLAN device", seg.vxlan_name), ("host macvlan", seg.macvlan_name)):
        link = get_link(t.host.ipr, name)
        if link is None:
            continue  # named by the objects check
        mark = ownership.owner(link)
        if mark is None or mark.network != model.network:
            owner = f"network {mark.network!r}" if mark is not None else "no one we know"
            found.append(fd.fail(NAME, name, f"{kind} {name} does not carry this network's "
                                 f"mark (it belongs to {owner}): xvm-cni will not use or "
                                 "repair it", f"remove it if it is not needed (ip link del "
                                 f"{name}), or give the network another VXLAN id", t.name))
    mv = get_link(t.host.ipr, seg.macvlan_name)
    if mv is not None:
        for subnet in seg.subnets:
            if str(subnet) not in _bypass_routes(t.host.ipr, cfg.bypass_table,
                                                 int(mv["index"]), subnet.version):
                found.append(fd.fail(NAME, f"table {cfg.bypass_table}", f"the bypass table "
                                     f"{cfg.bypass_table} has no route to {subnet} via "
                                     f"{seg.macvlan_name}: traffic within the segment "
                                     "follows the remote-slice routes or is lost",
                                     "xvmctl gc (the agent re-creates it)", t.name))
    table = nft.table_name(model.network)
    present = any(isinstance(item.get("table"), dict)
                  and (item["table"].get("family"), item["table"].get("name")) == ("inet", table)
                  for item in t.host.ruleset())
    if seg.isolated and not present:
        found.append(fd.fail(NAME, f"table inet {table}", "the segment is isolated but its "
                             "nftables table is missing: its pods reach the configuration's "
                             "other segments", "xvmctl gc (the agent re-creates it)", t.name))
    elif present and not seg.isolated:
        found.append(fd.warn(NAME, f"table inet {table}", "an isolation table of this "
                             "segment is present although it is not isolated (any more): "
                             "traffic to the other segments is dropped",
                             f"xvmctl gc, or nft delete table inet {table}", t.name))
    if not found:
        found.append(fd.ok(NAME, seg.name, f"{seg.vxlan_name} and {seg.macvlan_name} ours, "
                           f"bypass table {cfg.bypass_table} complete, isolation "
                           f"{'on' if seg.isolated else 'off'}", t.name))
    return found


def _within(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
            subnets: set[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(net.version == s.version and net.subnet_of(s)  # type: ignore[arg-type]
               for s in subnets)


def run_host(host: Host) -> list[Finding]:
    protocols = {macvlan_config.DEFAULT_ROUTE_PROTOCOL}
    subnets: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for network in host.networks:
        if isinstance(network.settings, macvlan.SegmentSettings):
            protocols.add(network.settings.config.route_protocol)
            subnets.update(s for seg in network.settings.config.segments for s in seg.subnets)
    # A routed network may have been given the same protocol: its routes are its own.
    protocols -= {routed_settings(n).route_protocol for n in host.networks
                  if n.config.model == routed.KIND}
    found: list[Finding] = []
    for version, family in FAMILIES.items():
        ip = "ip" if version == 4 else "ip -6"
        for rule in host.ipr.get_rules(family=family):
            src = rule.get("FRA_SRC")
            if rule.get("FRA_PROTOCOL") not in protocols or src is None:
                continue
            net = ipaddress.ip_network(f"{src}/{rule['src_len']}", strict=False)
            if _within(net, subnets):
                continue
            table = rule.get("FRA_TABLE", rule.get("table"))
            dst = rule.get("FRA_DST")
            to = f" to {dst}/{rule['dst_len']}" if dst is not None else ""
            found.append(fd.warn(NAME, f"rule from {net}", f"a bypass rule from {net}{to} "
                                 f"(table {table}, protocol {rule.get('FRA_PROTOCOL')}) "
                                 "belongs to no macvlan network this host knows: a leftover",
                                 f"{ip} rule del pref {rule.get('FRA_PRIORITY', 0)} from "
                                 f"{net}{to} table {table}"))
        for route in host.ipr.route("dump", family=family):
            dst_text = route.get("RTA_DST")
            if route["proto"] not in protocols or dst_text is None \
                    or route.get("RTA_TABLE", route["table"]) != 254:
                continue
            net = ipaddress.ip_network(f"{dst_text}/{route['dst_len']}", strict=False)
            if not _within(net, subnets):
                found.append(fd.warn(NAME, f"route {net}", f"a route to {net} with protocol "
                                     f"{route['proto']} belongs to no macvlan network this "
                                     "host knows: a leftover", f"{ip} route del {net} "
                                     f"proto {route['proto']}"))
    return found
