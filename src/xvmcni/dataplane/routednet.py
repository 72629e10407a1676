"""The routed model's devices on one host: a bridge holding this host's gateway per
pod CIDR (pods attach to it by veth), and an L3 VXLAN device towards the other
hosts (no bridge port, no learning, no multicast group: every remote entry is
programmed, see ``models.routed_peers``).

Every device carries the network's ownership mark; a device of that name
without our mark, or with another network's, is never changed: the join is
refused before anything changes.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import ownership, sysctl
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, delete_link, get_link, kernel_error, link_kind

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Outer Ethernet 14 + IP header + UDP 8 + VXLAN 8.
VXLAN_OVERHEAD = {4: 50, 6: 70}
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class Underlay:
    """``hostInterface`` as the routed model needs it."""

    name: str
    index: int
    mtu: int
    address: IPInterface   # the VTEP source / next hop other hosts use, with prefix
    up: bool


def lookup_underlay(ipr: Any, name: str) -> Underlay:
    """The host interface and its address: the first IPv4 address, else the first
    IPv6 address that is neither link-local nor loopback (an IPv6-only underlay).
    DataplaneError(HOST_CONFLICT) when it is missing or has no usable address."""
    link = get_link(ipr, name)
    if link is None:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"hostInterface {name!r} does not exist on this host",
                             "set hostInterface to the interface that carries traffic "
                             "between hosts")
    index = int(link["index"])
    found: list[IPInterface] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_addr(index=index, family=family):
            iface = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
            if not (iface.ip.is_loopback or iface.ip.is_link_local):
                found.append(iface)
    if not found:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"hostInterface {name!r} has no address other hosts can reach",
                             "the routed model needs the host's IPv4 or global IPv6 address")
    return Underlay(name=name, index=index, mtu=int(link.get("IFLA_MTU")), address=found[0],
                    up=bool(link["flags"] & IFF_UP))


@dataclass(frozen=True)
class BridgeSpec:
    network: str
    name: str
    mac: str
    mtu: int
    gateways: tuple[IPInterface, ...]   # gateway/prefix of each pod CIDR


@dataclass(frozen=True)
class VxlanSpec:
    network: str
    name: str
    vni: int
    port: int
    mac: str
    mtu: int
    underlay: Underlay
    # Families the device carries: IPv6 is switched off on it unless pods use it.
    ipv6: bool
    # The network address of this host's IPv4 pod CIDR, held as a /32 (None without an
    # IPv4 CIDR). Reverse-path filtering drops every IPv4 packet that arrives on an
    # interface with no IPv4 address when its source is routed out another one, even
    # in loose mode (fib_validate_source's "no_addr" case): a pod pinging another
    # host's own address gets the reply out of the tunnel from an underlay source.
    # Flannel gives flannel.1 the same kind of address for the same reason.
    rpf_address: ipaddress.IPv4Address | None = None


def rpf_address(pod_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None
                ) -> ipaddress.IPv4Address | None:
    """The VXLAN device's own address: the IPv4 pod CIDR's network address, which the
    other hosts already use as this host's next hop (their neighbour entry for it
    names our VTEP MAC), and which IPAM never hands out."""
    if pod_cidr is None or pod_cidr.version != 4:
        return None
    return ipaddress.IPv4Address(pod_cidr.network_address)


def claim(ipr: Any, link: Any, name: str, network: str, what: str, field: str) -> None:
    """Refuse, unchanged, a device that is not this network's (no adoption: no earlier
    version of xvm-cni made routed devices)."""
    mark = ownership.owner(link)
    if mark is not None and mark.network == network:
        return
    if mark is not None:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"{name} belongs to xvm-cni network {mark.network!r}",
                             f"two networks cannot share a {what}: give this one another "
                             f"{field!r}")
    raise DataplaneError(DataplaneError.HOST_CONFLICT,
                         f"{name} already exists on this host and was not created by "
                         f"xvm-cni for network {network!r}",
                         f"xvm-cni never changes devices it does not own: choose another "
                         f"{field!r} or remove {name}")


def _create(ipr: Any, name: str, network: str, what: str, field: str,
            **kwargs: Any) -> bool:
    """Create and mark; False when a concurrent creator of ours won."""
    try:
        ipr.link("add", ifname=name, **kwargs)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            claim(ipr, get_link(ipr, name), name, network, what, field)
            return False
        raise kernel_error(f"create {what} {name}", exc) from exc
    link = get_link(ipr, name)
    if link is not None:
        ownership.mark(ipr, int(link["index"]), ownership.Mark(network))
    return True


def ensure_bridge(ipr: Any, spec: BridgeSpec, created: list[str]) -> int:
    """The bridge, up, with its fixed MAC (a bridge without one takes its lowest
    port's MAC and changes it as pods come and go) and every gateway address."""
    link = get_link(ipr, spec.name)
    if link is not None:
        if link_kind(link) != "bridge":
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"{spec.name} exists on this host and is not a bridge",
                                 "set 'bridge' to another name")
        claim(ipr, link, spec.name, spec.network, "bridge", "bridge")
    elif _create(ipr, spec.name, spec.network, "bridge", "bridge", kind="bridge",
                 address=spec.mac, mtu=spec.mtu):
        created.append(spec.name)
    link = get_link(ipr, spec.name)
    if link is None:
        raise DataplaneError(DataplaneError.KERNEL, f"bridge {spec.name} vanished")
    index = int(link["index"])
    if not any(g.version == 6 for g in spec.gateways):
        sysctl.ensure_if_present(f"net.ipv6.conf.{spec.name}.disable_ipv6", "1")
    try:
        if not (link["flags"] & IFF_UP and link.get("IFLA_MTU") == spec.mtu
                and str(link.get("IFLA_ADDRESS")).lower() == spec.mac):
            ipr.link("set", index=index, mtu=spec.mtu, address=spec.mac, state="up")
        present = gateway_addresses(ipr, index)
        for gw in spec.gateways:
            if (gw.ip, gw.network.prefixlen) in present:
                continue
            # No duplicate-address detection: the gateway is ours by construction, and
            # a tentative IPv6 gateway would leave pods without a route for a second.
            ipr.addr("add", index=index, address=str(gw.ip), prefixlen=gw.network.prefixlen,
                     flags=IFA_F_NODAD if gw.version == 6 else 0)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise kernel_error(f"configure bridge {spec.name}", exc) from exc
    return index


def gateway_addresses(ipr: Any, index: int,
                      family: int = socket.AF_UNSPEC) -> set[tuple[IPAddress, int]]:
    return {(ipaddress.ip_address(a.get("IFA_ADDRESS")), int(a["prefixlen"]))
            for a in ipr.get_addr(index=index, family=family)}


def vxlan_mismatch(link: Any, spec: VxlanSpec) -> str:
    """Why an existing VXLAN device differs from the spec ('' when it matches)."""
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    if link_kind(link) != "vxlan" or data is None:
        return f"{spec.name} exists but is not a VXLAN device"
    local_key = "IFLA_VXLAN_LOCAL" if spec.underlay.address.version == 4 \
        else "IFLA_VXLAN_LOCAL6"
    wanted: dict[str, Any] = {
        "IFLA_VXLAN_ID": spec.vni,
        "IFLA_VXLAN_PORT": spec.port,
        "IFLA_VXLAN_LINK": spec.underlay.index,
        local_key: str(spec.underlay.address.ip),
        "IFLA_VXLAN_LEARNING": 0,
    }
    for key, value in wanted.items():
        have = data.get(key)
        if key == local_key and have is not None:
            have = str(ipaddress.ip_address(have))
        if have != value:
            return f"{spec.name} has {key}={have}, config wants {value}"
    if data.get("IFLA_VXLAN_GROUP") or data.get("IFLA_VXLAN_GROUP6"):
        return f"{spec.name} has a multicast group"
    if str(link.get("IFLA_ADDRESS")).lower() != spec.mac:
        return f"{spec.name} has MAC {link.get('IFLA_ADDRESS')}, expected {spec.mac}"
    return ""


def ensure_vxlan(ipr: Any, spec: VxlanSpec, in_use: bool, created: list[str]) -> int:
    """The L3 VXLAN device: learning off, no group, local = our underlay address, our
    derived VTEP MAC. Recreated when its settings changed and no pod uses it."""
    link = get_link(ipr, spec.name)
    if link is not None:
        claim(ipr, link, spec.name, spec.network, "VXLAN device", "vxlanID")
        why = vxlan_mismatch(link, spec)
        if why and in_use:
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"network {spec.network} is in use with other VXLAN settings "
                                 "on this host; remove its containers before changing them",
                                 why)
        if why:
            log.info("recreating %s: %s", spec.name, why)
            delete_link(ipr, spec.name)
            link = None
    if link is None:
        local = ("vxlan_local" if spec.underlay.address.version == 4 else "vxlan_local6")
        if _create(ipr, spec.name, spec.network, "VXLAN device", "vxlanID", kind="vxlan",
                   vxlan_id=spec.vni, vxlan_link=spec.underlay.index,
                   vxlan_port=spec.port, vxlan_learning=0, address=spec.mac, mtu=spec.mtu,
                   **{local: str(spec.underlay.address.ip)}):
            created.append(spec.name)
        link = get_link(ipr, spec.name)
        if link is None:
            raise DataplaneError(DataplaneError.KERNEL, f"VXLAN device {spec.name} vanished")
    index = int(link["index"])
    if not spec.ipv6:
        sysctl.ensure_if_present(f"net.ipv6.conf.{spec.name}.disable_ipv6", "1")
    if not (link["flags"] & IFF_UP and link.get("IFLA_MTU") == spec.mtu):
        try:
            ipr.link("set", index=index, mtu=spec.mtu, state="up")
        except NetlinkError as exc:
            raise kernel_error(f"bring up {spec.name}", exc) from exc
    _ensure_rpf_address(ipr, spec, index)
    return index


def _ensure_rpf_address(ipr: Any, spec: VxlanSpec, index: int) -> None:
    """Exactly ``spec.rpf_address``/32 as the device's IPv4 address: the device is
    ours, so any other IPv4 address on it is a former CIDR's and goes."""
    present = {a for a, _ in gateway_addresses(ipr, index, socket.AF_INET)}
    wanted = {spec.rpf_address} if spec.rpf_address is not None else set()
    try:
        for stale in present - wanted:
            ipr.addr("del", index=index, address=str(stale), prefixlen=32)
        for address in wanted - present:
            ipr.addr("add", index=index, address=str(address), prefixlen=32)
    except NetlinkError as exc:
        if exc.code not in (errno.EEXIST, errno.EADDRNOTAVAIL):
            raise kernel_error(f"set the address of {spec.name}", exc) from exc


def remove_owned(ipr: Any, network: str, names: list[str]) -> None:
    """Delete these devices when they carry this network's mark; others stay."""
    for name in names:
        link = get_link(ipr, name)
        if link is None:
            continue
        if ownership.owned_by(link, network):
            delete_link(ipr, name)
        else:
            log.warning("leaving %s in place: it is not network %s's (%s)", name, network,
                        ownership.owner(link) or "no xvm-cni mark")
