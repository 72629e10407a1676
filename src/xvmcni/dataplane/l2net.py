"""One L2 network on one host: a bridge with the anycast gateway, and a VXLAN port.

The VXLAN device floods and learns over a multicast group on the host
interface (the original XVM's model). The bridge holds the gateway address and
the network's fixed gateway MAC, identical on every host; nftables keeps that
gateway's ARP from crossing hosts (see ``nft``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import nft, sysctl
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.hostif import HostInterface
from xvmcni.dataplane.netlink import (
    IFF_UP,
    delete_link,
    get_link,
    ipv4_addresses,
    kernel_error,
    link_index,
    link_kind,
)

log = logging.getLogger(__name__)

VXLAN_OVERHEAD_V4 = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


@dataclass(frozen=True)
class L2Spec:
    network: str
    bridge: str
    vxlan: str
    vni: int
    group: ipaddress.IPv4Address
    port: int
    host: HostInterface
    mtu: int
    gateway: ipaddress.IPv4Interface
    gateway_mac: str
    ip_masq: bool


def effective_mtu(requested: int, host_mtu: int) -> int:
    """The MTU pods get: what was asked, but never more than fits in one underlay frame."""
    return min(requested, host_mtu - VXLAN_OVERHEAD_V4)


def _vxlan_mismatch(link: Any, spec: L2Spec) -> str:
    """Why an existing VXLAN device differs from the spec ('' when it matches)."""
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    if link_kind(link) != "vxlan" or data is None:
        return f"{spec.vxlan} exists but is not a VXLAN device"
    wanted = {
        "IFLA_VXLAN_ID": spec.vni,
        "IFLA_VXLAN_GROUP": str(spec.group),
        "IFLA_VXLAN_PORT": spec.port,
        "IFLA_VXLAN_LINK": spec.host.index,
        "IFLA_VXLAN_LOCAL": str(spec.host.address),
    }
    for key, value in wanted.items():
        if data.get(key) != value:
            return f"{spec.vxlan} has {key}={data.get(key)}, config wants {value}"
    return ""


def _ensure_bridge(ipr: Any, spec: L2Spec) -> int:
    link = get_link(ipr, spec.bridge)
    if link is not None and link_kind(link) != "bridge":
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"{spec.bridge} exists on this host and is not a bridge",
                             "set 'bridge' to another name")
    if link is None:
        try:
            # A MAC set explicitly keeps the bridge from adopting its ports' MACs.
            ipr.link("add", ifname=spec.bridge, kind="bridge", address=spec.gateway_mac,
                     mtu=spec.mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent creator won: fine
                raise kernel_error(f"create bridge {spec.bridge}", exc) from exc
    index = link_index(ipr, spec.bridge)
    assert index is not None
    # The gateway is IPv4. Its IPv6 link-local address would be the same on every host
    # (same MAC): duplicate-address detection across the VXLAN, for nothing.
    sysctl.ensure_if_present(f"net.ipv6.conf.{spec.bridge}.disable_ipv6", "1")
    try:
        ipr.link("set", index=index, mtu=spec.mtu, address=spec.gateway_mac, state="up")
    except NetlinkError as exc:
        raise kernel_error(f"configure bridge {spec.bridge}", exc) from exc
    return index


def _ensure_vxlan(ipr: Any, spec: L2Spec, bridge_index: int, in_use: bool) -> None:
    link = get_link(ipr, spec.vxlan)
    if link is not None:
        why = _vxlan_mismatch(link, spec)
        if why and in_use:
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"network {spec.network} is in use with other VXLAN settings "
                                 "on this host; remove its containers before changing them", why)
        if why:
            log.info("recreating %s: %s", spec.vxlan, why)
            delete_link(ipr, spec.vxlan)
            link = None
    if link is None:
        try:
            ipr.link("add", ifname=spec.vxlan, kind="vxlan", vxlan_id=spec.vni,
                     vxlan_group=str(spec.group), vxlan_link=spec.host.index,
                     vxlan_local=str(spec.host.address), vxlan_port=spec.port,
                     vxlan_learning=1, mtu=spec.mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise kernel_error(f"create VXLAN device {spec.vxlan} (VNI {spec.vni})",
                                   exc) from exc
    index = link_index(ipr, spec.vxlan)
    assert index is not None
    sysctl.ensure_if_present(f"net.ipv6.conf.{spec.vxlan}.disable_ipv6", "1")  # a port only
    try:
        ipr.link("set", index=index, master=bridge_index, mtu=spec.mtu, state="up")
    except NetlinkError as exc:
        raise kernel_error(f"attach {spec.vxlan} to {spec.bridge}", exc) from exc


def _ensure_gateway_address(ipr: Any, spec: L2Spec, bridge_index: int) -> None:
    wanted = (str(spec.gateway.ip), spec.gateway.network.prefixlen)
    if wanted in ipv4_addresses(ipr, bridge_index):
        return
    try:
        ipr.addr("add", index=bridge_index, address=wanted[0], prefixlen=wanted[1])
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise kernel_error(f"add gateway {spec.gateway} to {spec.bridge}", exc) from exc


def ensure(ipr: Any, spec: L2Spec, in_use: bool, refresh_filters: bool = False) -> int:
    """Create or repair the network's devices, address and filters; never recreate
    what containers use. Returns the bridge's ifindex.

    The common case (network in use, devices up) costs two GETs. Anything else runs
    the full sequence, nftables batch included; the agent's reconcile loop runs it
    periodically (``refresh_filters``).
    """
    if in_use and not refresh_filters:
        ready = _ready_bridge(ipr, spec)
        if ready is not None:
            return ready
    # Filters first: they match interface names, so they can exist before the devices,
    # and no frame of a new bridge's gateway (e.g. its first IPv6 DAD/MLD) can slip
    # across the VXLAN before they do.
    batch = nft.gateway_isolation_batch(spec.network, spec.vxlan, spec.gateway.ip,
                                        spec.gateway_mac)
    batch += (nft.masquerade_batch(spec.network, spec.gateway.network) if spec.ip_masq
              else nft.delete_table_batch("ip", spec.network))
    nft.run_batch(batch)
    bridge_index = _ensure_bridge(ipr, spec)
    _ensure_vxlan(ipr, spec, bridge_index, in_use)
    _ensure_gateway_address(ipr, spec, bridge_index)
    return bridge_index


def _ready_bridge(ipr: Any, spec: L2Spec) -> int | None:
    """The bridge's ifindex when bridge and VXLAN port are present and up (two GETs:
    the common ADD into a network already in use); None means "do the full ensure"."""
    bridge = get_link(ipr, spec.bridge)
    vxlan = get_link(ipr, spec.vxlan)
    if bridge is None or vxlan is None or link_kind(bridge) != "bridge":
        return None
    up = bool(bridge["flags"] & vxlan["flags"] & IFF_UP)
    if not up or vxlan.get("IFLA_MASTER") != bridge["index"]:
        return None
    return int(bridge["index"])


def remove(ipr: Any, network: str, bridge: str, vxlan: str) -> None:
    """Leave the network on this host: VXLAN first (stops flooding to us), then bridge
    and our nftables tables."""
    delete_link(ipr, vxlan)
    delete_link(ipr, bridge)
    nft.run_batch(nft.delete_table_batch("bridge", network)
                  + nft.delete_table_batch("ip", network))


def problems(ipr: Any, spec: L2Spec) -> list[str]:
    """What differs from the spec, for CHECK (empty when all is well)."""
    found: list[str] = []
    bridge = get_link(ipr, spec.bridge)
    if bridge is None or link_kind(bridge) != "bridge":
        return [f"bridge {spec.bridge} is missing"]
    if not bridge["flags"] & IFF_UP:
        found.append(f"bridge {spec.bridge} is down")
    wanted = (str(spec.gateway.ip), spec.gateway.network.prefixlen)
    if wanted not in ipv4_addresses(ipr, bridge["index"]):
        found.append(f"bridge {spec.bridge} lacks gateway address {spec.gateway}")
    vxlan = get_link(ipr, spec.vxlan)
    if vxlan is None:
        found.append(f"VXLAN device {spec.vxlan} is missing")
    else:
        why = _vxlan_mismatch(vxlan, spec)
        if why:
            found.append(why)
        if vxlan.get("IFLA_MASTER") != bridge["index"]:
            found.append(f"{spec.vxlan} is not a port of {spec.bridge}")
    tables = nft.list_tables()
    if ("bridge", nft.table_name(spec.network)) not in tables:
        found.append(f"nftables table bridge {nft.table_name(spec.network)} is missing")
    if spec.ip_masq and ("ip", nft.table_name(spec.network)) not in tables:
        found.append(f"nftables table ip {nft.table_name(spec.network)} is missing")
    return found
