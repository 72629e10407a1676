"""A container's veth pair: host end on the bridge, container end configured inside."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import ownership, reaper
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, delete_link, get_link, kernel_error, link_kind

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RT_TABLE_MAIN = 254
DEFAULT_V4 = ipaddress.IPv4Network("0.0.0.0/0")
DEFAULT_V6 = ipaddress.IPv6Network("::/0")


@dataclass
class ContainerSide:
    ifname: str
    addresses: list[IPInterface]
    routes: list[tuple[IPNetwork, IPAddress | None]]
    mtu: int
    mac: str = ""
    # The mark the host end carries (its network, container and ifname).
    owner: ownership.Mark | None = None


@dataclass
class VethPair:
    host_name: str
    host_mac: str
    container_mac: str
    container_index: int = 0


def _peer_of(host_link: Any, container_link: Any) -> bool:
    """True when the two links are the two ends of one veth."""
    return bool(
        host_link is not None and container_link is not None
        and link_kind(host_link) == "veth" and link_kind(container_link) == "veth"
        and host_link.get("IFLA_LINK") == container_link["index"]
    )


def container_mac(addresses: list[IPInterface]) -> str:
    """0a:58 + the IPv4 address: the Kubernetes convention, unique because addresses
    are, and readable in any ARP or FDB table. An IPv6-only pod gets 0a:58 + the
    last 32 bits of its address: unique among the pods of one host's pod CIDR, the
    only place the MAC is seen. '' without an address (the kernel then picks one)."""
    v4 = next((a.ip for a in addresses if a.version == 4), None)
    if v4 is not None:
        return "0a:58:" + ":".join(f"{b:02x}" for b in v4.packed)
    v6 = next((a.ip for a in addresses if a.version == 6), None)
    if v6 is None:
        return ""
    return "0a:58:" + ":".join(f"{b:02x}" for b in v6.packed[-4:])


def ensure(host_ipr: Any, pod_ipr: Any, pod_fd: int, host_name: str, bridge_index: int,
           side: ContainerSide) -> VethPair:
    """Create (or adopt, on a repeated ADD) the pair and configure both ends."""
    mac = side.mac or container_mac(side.addresses)
    peer: dict[str, Any] = {"ifname": side.ifname, "net_ns_fd": pod_fd, "mtu": side.mtu}
    if mac:
        peer["address"] = mac
    try:
        # One message: the pair, its MTU, the host end on the bridge and up.
        host_ipr.link("add", ifname=host_name, kind="veth", mtu=side.mtu,
                      master=bridge_index, state="up", peer=peer)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise kernel_error(f"create veth {host_name}/{side.ifname}", exc) from exc
        return _adopt(host_ipr, pod_ipr, pod_fd, host_name, bridge_index, side)
    try:
        host_link = get_link(host_ipr, host_name)
        if host_link is None:
            raise DataplaneError(DataplaneError.CONTAINER,
                                 f"veth {host_name} vanished while being set up")
        if side.owner is not None:
            ownership.mark(host_ipr, int(host_link["index"]), side.owner)
        index, container_mac_now = _configure_container(pod_ipr, side, fresh=True)
    except BaseException:
        # Created by this call and half configured: take it away again, so a failed
        # plug leaves nothing behind (the caller undoes only what succeeded).
        delete_link(host_ipr, host_name)
        raise
    return VethPair(host_name=host_name, host_mac=str(host_link.get("IFLA_ADDRESS")),
                    container_mac=container_mac_now, container_index=index)


def _adopt(host_ipr: Any, pod_ipr: Any, pod_fd: int, host_name: str, bridge_index: int,
           side: ContainerSide) -> VethPair:
    """A name was taken: a repeated ADD (adopt the pair), a leftover host end from an
    interrupted ADD (replace it), or a foreign interface in the container (refuse)."""
    host_link = get_link(host_ipr, host_name)
    if reaper.is_retired(host_link):
        # Deleted by a DEL moments ago and not yet reaped: this is a new attachment.
        reaper.reclaim(host_ipr, host_name)
        return ensure(host_ipr, pod_ipr, pod_fd, host_name, bridge_index, side)
    network = side.owner.network if side.owner is not None else None
    mark = ownership.owner(host_link)
    if host_link is not None and mark is not None and mark.network != network:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"host interface {host_name} belongs to xvm-cni network "
                             f"{mark.network!r}",
                             "this container interface is attached to that network already")
    pod_link = get_link(pod_ipr, side.ifname)
    if not _peer_of(host_link, pod_link):
        if pod_link is not None:
            raise DataplaneError(DataplaneError.CONTAINER,
                                 f"interface {side.ifname} already exists in the container's "
                                 "netns", "choose another CNI_IFNAME or remove that interface")
        if mark is None:
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"{host_name} already exists on this host and is not "
                                 "xvm-cni's", f"remove {host_name}")
        # Ours, left by an interrupted ADD of this very attachment: replace it.
        delete_link(host_ipr, host_name)
        return ensure(host_ipr, pod_ipr, pod_fd, host_name, bridge_index, side)
    assert host_link is not None
    if mark is None and side.owner is not None:
        ownership.mark(host_ipr, int(host_link["index"]), side.owner)  # from an older version
    try:
        host_ipr.link("set", index=host_link["index"], master=bridge_index, mtu=side.mtu,
                      state="up")
    except NetlinkError as exc:
        raise kernel_error(f"attach {host_name} to the bridge", exc) from exc
    index, container_mac_now = _configure_container(pod_ipr, side, fresh=False)
    return VethPair(host_name=host_name, host_mac=str(host_link.get("IFLA_ADDRESS")),
                    container_mac=container_mac_now, container_index=index)


IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection


def _configure_container(pod_ipr: Any, side: ContainerSide, fresh: bool) -> tuple[int, str]:
    """Bring the container end up with its addresses and routes; (ifindex, MAC).

    ``fresh``: just created, so there are no addresses to compare with.
    """
    link = get_link(pod_ipr, side.ifname)
    if link is None:
        raise DataplaneError(DataplaneError.CONTAINER,
                             f"{side.ifname} vanished while being set up")
    index = int(link["index"])
    try:
        pod_ipr.link("set", index=index, mtu=side.mtu, state="up")
        present: set[tuple[str, int]] = set() if fresh else {
            (str(a.get("IFA_ADDRESS")), int(a["prefixlen"]))
            for a in pod_ipr.get_addr(index=index)}
        for addr in side.addresses:
            if (str(addr.ip), addr.network.prefixlen) not in present:
                # IPv6 without duplicate address detection: the IPAM already made the
                # address unique, and with DAD it would stay tentative (unusable as a
                # source, unreachable) for a second or more after ADD has returned.
                pod_ipr.addr("add", index=index, address=str(addr.ip),
                             prefixlen=addr.network.prefixlen,
                             flags=IFA_F_NODAD if addr.version == 6 else 0)
        for dst, gw in side.routes:
            spec: dict[str, Any] = {"dst": str(dst), "oif": index}
            if gw is not None:
                spec["gateway"] = str(gw)
            pod_ipr.route("replace", **spec)
    except NetlinkError as exc:
        raise kernel_error(f"configure {side.ifname} in the container", exc) from exc
    return index, str(link.get("IFLA_ADDRESS"))


REMOVED, ABSENT, FOREIGN = "removed", "absent", "foreign"


def remove_host_end(host_ipr: Any, host_name: str, network: str,
                    unmarked_is_ours: bool) -> str:
    """Delete the pair by its host end (the kernel takes the container end with it).

    REMOVED, ABSENT (nothing of that name), or FOREIGN: the device carries another
    network's mark, or none while ``unmarked_is_ours`` is false; it is left alone.
    """
    link = get_link(host_ipr, host_name)
    if link is None:
        return ABSENT
    mark = ownership.owner(link)
    if (mark is not None and mark.network != network) or (mark is None
                                                          and not unmarked_is_ours):
        return FOREIGN
    return REMOVED if delete_link(host_ipr, host_name) else ABSENT


def remove_container_end(pod_ipr: Any, ifname: str) -> None:
    """Delete a veth left in the container by an interrupted ADD. Only for an
    attachment we hold a record of: otherwise an interface of that name may belong
    to someone else."""
    link = get_link(pod_ipr, ifname)
    if link is None or link_kind(link) != "veth":
        return
    try:
        pod_ipr.link("del", index=link["index"])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise kernel_error(f"delete {ifname} in the container", exc) from exc


def _routes(pod_ipr: Any, index: int) -> set[tuple[str, str]]:
    out = set()
    for family in (2, 10):
        for route in pod_ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            if route.get("RTA_OIF") != index:
                continue
            dst = route.get("RTA_DST")
            if dst is None:  # the kernel omits RTA_DST for a default route
                net: IPNetwork = DEFAULT_V4 if family == 2 else DEFAULT_V6
            else:
                net = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
            out.add((str(net), str(route.get("RTA_GATEWAY") or "")))
    return out


def problems(host_ipr: Any, pod_ipr: Any, host_name: str, bridge_index: int,
             side: ContainerSide) -> list[str]:
    """How the pair differs from what ADD made (empty when all is well), for CHECK."""
    pod_link = get_link(pod_ipr, side.ifname)
    if pod_link is None:
        return [f"interface {side.ifname} is missing in the container"]
    host_link = get_link(host_ipr, host_name)
    if host_link is None:
        return [f"host veth {host_name} is missing"]
    found = []
    if not _peer_of(host_link, pod_link):
        found.append(f"{side.ifname} is not the peer of host veth {host_name}")
    if host_link.get("IFLA_MASTER") != bridge_index:
        found.append(f"host veth {host_name} is not a port of the network's bridge")
    for name, link in ((host_name, host_link), (side.ifname, pod_link)):
        if not link["flags"] & IFF_UP:
            found.append(f"{name} is down")
        if link.get("IFLA_MTU") != side.mtu:
            found.append(f"{name} has MTU {link.get('IFLA_MTU')}, expected {side.mtu}")
    if side.mac and str(pod_link.get("IFLA_ADDRESS")).lower() != side.mac.lower():
        found.append(f"{side.ifname} has MAC {pod_link.get('IFLA_ADDRESS')}, "
                     f"expected {side.mac}")
    present = {(str(a.get("IFA_ADDRESS")), int(a["prefixlen"]))
               for a in pod_ipr.get_addr(index=pod_link["index"])}
    for addr in side.addresses:
        if (str(addr.ip), addr.network.prefixlen) not in present:
            found.append(f"{side.ifname} lacks address {addr}")
    routes = _routes(pod_ipr, pod_link["index"])
    for dst, gw in side.routes:
        if (str(dst), str(gw or "")) not in routes:
            found.append(f"route {dst}" + (f" via {gw}" if gw else "") + " is missing")
    return found
