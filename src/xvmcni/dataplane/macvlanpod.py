"""A pod's interface in the macvlan model: a bridge-mode macvlan child of the
network's VXLAN device, created directly inside the pod's netns (no host-side
device per pod), marked with the pod's ownership mark, with its addresses and a
default route per family via this host's router address."""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import ownership
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.macvlannet import IPAddress, IPInterface, IPNetwork
from xvmcni.dataplane.netlink import IFF_UP, get_link, kernel_error, link_kind
from xvmcni.dataplane.routednet import IFA_F_NODAD
from xvmcni.dataplane.veth import container_mac


@dataclass(frozen=True)
class PodSide:
    ifname: str
    addresses: tuple[IPInterface, ...]
    routes: tuple[tuple[IPNetwork, IPAddress], ...]
    mtu: int
    mac: str
    owner: ownership.Mark


def pod_mac(addresses: tuple[IPInterface, ...]) -> str:
    """The pod's MAC on its network's L2, unique there: ``0a:58:<IPv4>`` as the other
    models give; without IPv4, a hash of the whole IPv6 address (its last 32 bits
    repeat in every host's slice, and all hosts' pods share this L2)."""
    if any(a.version == 4 for a in addresses):
        return container_mac(list(addresses))
    v6 = next((a.ip for a in addresses if a.version == 6), None)
    if v6 is None:
        return ""
    digest = bytearray(hashlib.sha256(b"xvm-cni pod\0" + v6.packed).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in digest)


def _ours(link: Any, owner: ownership.Mark) -> bool:
    return link_kind(link) == "macvlan" and ownership.owner(link) == owner


def plug(host_ipr: Any, pod_ipr: Any, pod_fd: int, vxlan_index: int,
         side: PodSide) -> tuple[int, str]:
    """Create (or, for a repeated ADD, adopt) the pod's macvlan; (ifindex, MAC)."""
    existing = get_link(pod_ipr, side.ifname)
    fresh = existing is None
    if existing is not None and not _ours(existing, side.owner):
        raise DataplaneError(DataplaneError.CONTAINER,
                             f"interface {side.ifname} already exists in the container's "
                             "netns", "choose another CNI_IFNAME or remove that interface")
    if fresh:
        mac = side.mac or pod_mac(side.addresses)
        spec: dict[str, Any] = {"ifname": side.ifname, "kind": "macvlan",
                                "link": vxlan_index, "macvlan_mode": "bridge",
                                "net_ns_fd": pod_fd, "mtu": side.mtu}
        if mac:
            spec["address"] = mac
        try:
            host_ipr.link("add", **spec)
        except NetlinkError as exc:
            raise kernel_error(f"create macvlan {side.ifname} in the container", exc) from exc
    try:
        link = get_link(pod_ipr, side.ifname)
        if link is None:
            raise DataplaneError(DataplaneError.CONTAINER,
                                 f"{side.ifname} vanished while being set up")
        index = int(link["index"])
        if fresh:
            ownership.mark(pod_ipr, index, side.owner)
        _configure(pod_ipr, index, side, fresh)
    except BaseException:
        if fresh:
            remove(pod_ipr, side.ifname, side.owner)
        raise
    return index, str(link.get("IFLA_ADDRESS"))


def _configure(pod_ipr: Any, index: int, side: PodSide, fresh: bool) -> None:
    try:
        pod_ipr.link("set", index=index, mtu=side.mtu, state="up")
        present: set[tuple[str, int]] = set() if fresh else {
            (str(a.get("IFA_ADDRESS")), int(a["prefixlen"])) for a in pod_ipr.get_addr(index=index)}
        for addr in side.addresses:
            if (str(addr.ip), addr.network.prefixlen) not in present:
                pod_ipr.addr("add", index=index, address=str(addr.ip),
                             prefixlen=addr.network.prefixlen,
                             flags=IFA_F_NODAD if addr.version == 6 else 0)
        for dst, gw in side.routes:
            pod_ipr.route("replace", dst=str(dst), gateway=str(gw), oif=index)
    except NetlinkError as exc:
        raise kernel_error(f"configure {side.ifname} in the container", exc) from exc


def remove(pod_ipr: Any, ifname: str, owner: ownership.Mark, owned: bool = True) -> bool:
    """Delete the pod's macvlan when it is ours (our mark, or unmarked while we hold a
    record of the attachment); True when something was removed."""
    link = get_link(pod_ipr, ifname)
    if link is None or link_kind(link) != "macvlan":
        return False
    mark = ownership.owner(link)
    if mark != owner and not (mark is None and owned):
        return False
    try:
        pod_ipr.link("del", index=link["index"])
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise kernel_error(f"delete {ifname} in the container", exc) from exc
    return True


def problems(pod_ipr: Any, vxlan_index: int, side: PodSide) -> list[str]:
    link = get_link(pod_ipr, side.ifname)
    if link is None:
        return [f"{side.ifname} is missing in the container"]
    if not _ours(link, side.owner):
        return [f"{side.ifname} in the container is not this attachment's macvlan"]
    found: list[str] = []
    if link.get("IFLA_LINK") != vxlan_index:
        found.append(f"{side.ifname} is not on this network's VXLAN device")
    if not link["flags"] & IFF_UP:
        found.append(f"{side.ifname} is down")
    index = int(link["index"])
    present = {(str(a.get("IFA_ADDRESS")), int(a["prefixlen"]))
               for a in pod_ipr.get_addr(index=index)}
    for addr in side.addresses:
        if (str(addr.ip), addr.network.prefixlen) not in present:
            found.append(f"{side.ifname} lacks address {addr}")
    gateways = {str(r.get("RTA_GATEWAY")) for r in pod_ipr.route("dump")
                if r.get("RTA_OIF") == index and r.get("RTA_GATEWAY")}
    for dst, gw in side.routes:
        if str(gw) not in gateways:
            found.append(f"route {dst} via {gw} is missing in the container")
    return found
