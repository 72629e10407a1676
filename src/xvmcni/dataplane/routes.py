"""Routes carrying our protocol number, permanent neighbours and FDB entries.

The routed model's per-peer kernel state, read and written through pyroute2.
Ownership of a route is its protocol number (``ip route ... proto 202``): a route
with any other protocol was not installed by us and is never changed or
deleted. Neighbour and FDB entries are ours by the device they live on (our
VXLAN device, which carries our mark).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import kernel_error

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4  # pyroute2 0.9 ignores onlink=True: the flag must be passed as flags=4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
DEFAULT_V4 = ipaddress.IPv4Network((0, 0))
DEFAULT_V6 = ipaddress.IPv6Network((0, 0))


@dataclass(frozen=True)
class RouteEntry:
    """One route as we install and compare it (table main)."""

    dst: IPNetwork
    gateway: IPAddress
    oif: int
    onlink: bool = False
    prefsrc: IPAddress | None = None


@dataclass(frozen=True)
class NeighEntry:
    address: IPAddress
    mac: str


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: IPAddress


def _net(route: Any, family: int) -> IPNetwork:
    dst = route.get("RTA_DST")
    if dst is None:  # the kernel omits RTA_DST for a default route
        return DEFAULT_V4 if family == socket.AF_INET else DEFAULT_V6
    return ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)


def main_routes(ipr: Any, protocol: int,
                oifs: set[int]) -> tuple[list[RouteEntry], set[IPNetwork]]:
    """(ours, foreign): routes in table main with ``protocol`` whose device is one of
    ``oifs``, and the destinations of every route there that is someone else's (a
    destination someone else routes is never replaced by ours)."""
    ours: list[RouteEntry] = []
    foreign: set[IPNetwork] = set()
    for family in FAMILIES.values():
        for route in ipr.route("dump", family=family):
            if route.get("RTA_TABLE", route["table"]) != RT_TABLE_MAIN:
                continue
            dst = _net(route, family)
            gateway = route.get("RTA_GATEWAY")
            if route["proto"] != protocol or route.get("RTA_OIF") not in oifs \
                    or gateway is None:
                foreign.add(dst)
                continue
            prefsrc = route.get("RTA_PREFSRC")
            ours.append(RouteEntry(
                dst=dst, gateway=ipaddress.ip_address(gateway),
                oif=int(route.get("RTA_OIF")), onlink=bool(route["flags"] & RTNH_F_ONLINK),
                prefsrc=ipaddress.ip_address(prefsrc) if prefsrc else None))
    return ours, foreign


def replace_route(ipr: Any, entry: RouteEntry, protocol: int) -> None:
    _route(ipr, "replace", entry, protocol)


def create_route(ipr: Any, entry: RouteEntry, protocol: int) -> bool:
    """Install a route to a destination we did not route before, without a dump: the
    kernel creates it only if table main has no route to ``entry.dst`` at our metric
    (NLM_F_EXCL). False: there is one (someone else's, or ours we did not know of);
    nothing was changed."""
    try:
        _route(ipr, "add", entry, protocol)
    except DataplaneError as exc:
        if isinstance(exc.__cause__, NetlinkError) and exc.__cause__.code == errno.EEXIST:
            return False
        raise
    return True


def _route(ipr: Any, command: str, entry: RouteEntry, protocol: int) -> None:
    spec: dict[str, Any] = {"dst": str(entry.dst), "gateway": str(entry.gateway),
                            "oif": entry.oif, "proto": protocol, "table": RT_TABLE_MAIN,
                            "family": FAMILIES[entry.dst.version]}
    if entry.onlink:
        spec["flags"] = RTNH_F_ONLINK
    if entry.prefsrc is not None:
        spec["prefsrc"] = str(entry.prefsrc)
    try:
        ipr.route(command, **spec)
    except NetlinkError as exc:
        raise kernel_error(f"install route {entry.dst} via {entry.gateway}", exc) from exc


def delete_route(ipr: Any, entry: RouteEntry, protocol: int) -> None:
    """Delete our route to ``entry.dst``; the protocol in the request makes the kernel
    refuse to delete a route that is not ours (ESRCH: gone, or someone else's)."""
    try:
        ipr.route("del", dst=str(entry.dst), oif=entry.oif, proto=protocol,
                  table=RT_TABLE_MAIN, family=FAMILIES[entry.dst.version],
                  gateway=str(entry.gateway))
    except NetlinkError as exc:
        if exc.code in (errno.ESRCH, errno.ENOENT):
            return
        raise kernel_error(f"delete route {entry.dst}", exc) from exc


def permanent_neighbours(ipr: Any, index: int) -> list[NeighEntry]:
    found = []
    for family in FAMILIES.values():
        for neigh in ipr.neigh("dump", family=family, ifindex=index):
            if neigh["ifindex"] != index or not neigh["state"] & NUD_PERMANENT:
                continue
            mac = neigh.get("NDA_LLADDR")
            if neigh.get("NDA_DST") is None or mac is None:
                continue
            found.append(NeighEntry(ipaddress.ip_address(neigh.get("NDA_DST")),
                                    str(mac).lower()))
    return found


def replace_neighbour(ipr: Any, index: int, entry: NeighEntry) -> None:
    try:
        ipr.neigh("replace", dst=str(entry.address), lladdr=entry.mac, ifindex=index,
                  state=NUD_PERMANENT, family=FAMILIES[entry.address.version])
    except NetlinkError as exc:
        raise kernel_error(f"set neighbour {entry.address} -> {entry.mac}", exc) from exc


def delete_neighbour(ipr: Any, index: int, entry: NeighEntry) -> None:
    try:
        ipr.neigh("del", dst=str(entry.address), ifindex=index,
                  family=FAMILIES[entry.address.version])
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            return
        raise kernel_error(f"delete neighbour {entry.address}", exc) from exc


def permanent_fdb(ipr: Any, index: int) -> list[FdbEntry]:
    """Permanent unicast FDB entries with a remote destination on device ``index``
    (the kernel's own multicast entries carry no NDA_DST and are skipped)."""
    found = []
    for entry in ipr.fdb("dump", ifindex=index):
        if entry["ifindex"] != index or not entry["state"] & NUD_PERMANENT:
            continue
        dst, mac = entry.get("NDA_DST"), entry.get("NDA_LLADDR")
        if dst is None or mac is None:
            continue
        found.append(FdbEntry(str(mac).lower(), ipaddress.ip_address(dst)))
    return found


def replace_fdb(ipr: Any, index: int, entry: FdbEntry) -> None:
    # pyroute2 0.9: without an explicit state and flags=self the kernel answers
    # "Operation not supported".
    try:
        ipr.fdb("replace", ifindex=index, lladdr=entry.mac, dst=str(entry.dst),
                state=NUD_PERMANENT, flags=NTF_SELF)
    except NetlinkError as exc:
        raise kernel_error(f"set FDB entry {entry.mac} -> {entry.dst}", exc) from exc


def delete_fdb(ipr: Any, index: int, entry: FdbEntry) -> None:
    try:
        ipr.fdb("del", ifindex=index, lladdr=entry.mac, dst=str(entry.dst),
                state=NUD_PERMANENT, flags=NTF_SELF)
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            return
        raise kernel_error(f"delete FDB entry {entry.mac}", exc) from exc
