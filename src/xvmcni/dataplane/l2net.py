"""One L2 network on one host: a bridge with the anycast gateway, and a VXLAN port.

The VXLAN device floods and learns over a multicast group on the host
interface (the original XVM's model), or, with a control plane that knows the
other hosts (etcd), has no group and floods by unicast head-end replication:
one all-zeros FDB entry per remote host (``program_flood``). The bridge holds
the gateway address and the network's fixed gateway MAC, identical on every
host; nftables keeps that gateway's ARP from crossing hosts (see ``nft``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from xvmcni.dataplane import antispoof, nft, ownership, sysctl
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
    # None: no multicast group; broadcast/unknown frames go to the flood list.
    group: ipaddress.IPv4Address | None
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
        "IFLA_VXLAN_GROUP": str(spec.group) if spec.group is not None else None,
        "IFLA_VXLAN_PORT": spec.port,
        "IFLA_VXLAN_LINK": spec.host.index,
        "IFLA_VXLAN_LOCAL": str(spec.host.address),
    }
    for key, value in wanted.items():
        if data.get(key) != value:
            return f"{spec.vxlan} has {key}={data.get(key)}, config wants {value}"
    return ""


def _claim(ipr: Any, link: Any, name: str, spec: L2Spec, adopt_unmarked: bool,
           what: str) -> None:
    """Make sure an existing device is this network's before we use it: marked by
    us for this network, or unmarked and adoptable (a device of an older xvm-cni,
    where the network's own state shows it used it). Otherwise refuse, unchanged."""
    mark = ownership.owner(link)
    if mark is not None and mark.network == spec.network:
        return
    if mark is not None:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"{name} belongs to xvm-cni network {mark.network!r}",
                             f"two networks cannot share a {what}: give this one another "
                             + ("'bridge'" if what == "bridge" else "'vxlanID'"))
    if not adopt_unmarked:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"{name} already exists on this host and was not created by "
                             f"xvm-cni for network {spec.network!r}",
                             "xvm-cni never changes devices it does not own: choose another "
                             + ("'bridge'" if what == "bridge" else "'vxlanID'")
                             + f" or remove {name}")
    log.info("adopting %s for network %s (made by an earlier xvm-cni)", name, spec.network)
    ownership.mark(ipr, int(link["index"]), ownership.Mark(spec.network))


def preflight(ipr: Any, spec: L2Spec, adopt_unmarked: bool) -> tuple[Any, Any]:
    """Check bridge and VXLAN device before anything changes; (bridge, vxlan) links,
    None where absent."""
    bridge = get_link(ipr, spec.bridge)
    if bridge is not None:
        if link_kind(bridge) != "bridge":
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"{spec.bridge} exists on this host and is not a bridge",
                                 "set 'bridge' to another name")
        _claim(ipr, bridge, spec.bridge, spec, adopt_unmarked, "bridge")
    vxlan = get_link(ipr, spec.vxlan)
    if vxlan is not None:
        _claim(ipr, vxlan, spec.vxlan, spec, adopt_unmarked, "VXLAN device")
    return bridge, vxlan


def _create(ipr: Any, created: list[str], name: str, spec: L2Spec, action: str,
            **kwargs: Any) -> None:
    try:
        ipr.link("add", ifname=name, **kwargs)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            # A concurrent creator won (another process of ours holds no lock on the
            # kernel): it must be ours too, or we refuse.
            _claim(ipr, get_link(ipr, name), name, spec, False,
                   "bridge" if kwargs.get("kind") == "bridge" else "VXLAN device")
            return
        raise kernel_error(action, exc) from exc
    created.append(name)
    index = link_index(ipr, name)
    if index is not None:
        ownership.mark(ipr, index, ownership.Mark(spec.network))


def _ensure_bridge(ipr: Any, spec: L2Spec, existing: Any, created: list[str]) -> int:
    if existing is None:
        # A MAC set explicitly keeps the bridge from adopting its ports' MACs.
        _create(ipr, created, spec.bridge, spec, f"create bridge {spec.bridge}",
                kind="bridge", address=spec.gateway_mac, mtu=spec.mtu)
    index = link_index(ipr, spec.bridge)
    if index is None:
        raise DataplaneError(DataplaneError.KERNEL, f"bridge {spec.bridge} vanished")
    # The gateway is IPv4. Its IPv6 link-local address would be the same on every host
    # (same MAC): duplicate-address detection across the VXLAN, for nothing.
    sysctl.ensure_if_present(f"net.ipv6.conf.{spec.bridge}.disable_ipv6", "1")
    try:
        ipr.link("set", index=index, mtu=spec.mtu, address=spec.gateway_mac, state="up")
    except NetlinkError as exc:
        raise kernel_error(f"configure bridge {spec.bridge}", exc) from exc
    return index


def _ensure_vxlan(ipr: Any, spec: L2Spec, bridge_index: int, existing: Any, in_use: bool,
                  created: list[str]) -> None:
    link = existing
    if link is not None:
        why = _vxlan_mismatch(link, spec)
        if why and in_use:
            raise DataplaneError(DataplaneError.HOST_CONFLICT,
                                 f"network {spec.network} is in use with other VXLAN settings "
                                 "on this host; remove its containers before changing them", why)
        if why:
            log.info("recreating %s: %s", spec.vxlan, why)
            delete_link(ipr, spec.vxlan)  # ours (preflight), and no container uses it
            link = None
    if link is None:
        # Learning stays on in both modes: the flood list (or the group) carries
        # broadcasts and the first frame to a MAC; the answers teach the device where
        # each remote pod lives, so unicast goes to one host, not to all.
        group = {"vxlan_group": str(spec.group)} if spec.group is not None else {}
        _create(ipr, created, spec.vxlan, spec,
                f"create VXLAN device {spec.vxlan} (VNI {spec.vni})",
                kind="vxlan", vxlan_id=spec.vni, vxlan_link=spec.host.index,
                vxlan_local=str(spec.host.address), vxlan_port=spec.port,
                vxlan_learning=1, mtu=spec.mtu, **group)
    index = link_index(ipr, spec.vxlan)
    if index is None:
        raise DataplaneError(DataplaneError.KERNEL, f"VXLAN device {spec.vxlan} vanished")
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


def ensure(ipr: Any, spec: L2Spec, in_use: bool, refresh_filters: bool = False,
           adopt_unmarked: bool = False) -> int:
    """Create or repair the network's devices, address and filters; never recreate
    what containers use, never touch a device that is not this network's. Returns
    the bridge's ifindex.

    The common case (network in use, devices up and ours) costs two GETs. Anything
    else runs the full sequence, nftables batch included; the agent's reconcile
    loop runs it periodically (``refresh_filters``). A failure part-way removes
    what this call created, so a failed join leaves the host as it was.
    """
    if in_use and not refresh_filters:
        ready = _ready_bridge(ipr, spec)
        if ready is not None:
            return ready
    bridge, vxlan = preflight(ipr, spec, adopt_unmarked)
    created: list[str] = []
    try:
        # Filters first: they match interface names, so they can exist before the
        # devices, and no frame of a new bridge's gateway (e.g. its first IPv6 DAD/MLD)
        # can slip across the VXLAN before they do.
        batch = nft.gateway_isolation_batch(spec.network, spec.vxlan, spec.gateway.ip,
                                            spec.gateway_mac)
        # Pods may send only as themselves; the table keeps its members on a refresh.
        batch += antispoof.table_batch(ownership.guard_table_name(spec.network),
                                       spec.gateway_mac, (spec.gateway.ip,))
        batch += (nft.masquerade_batch(spec.network, spec.gateway.network) if spec.ip_masq
                  else nft.delete_table_batch("ip", spec.network))
        if adopt_unmarked:
            # Upgrading: an earlier version's tables had a name other networks could
            # share; this network's state shows it used them, and ours replace them.
            legacy = ownership.legacy_table_name(spec.network)
            batch += (nft.delete_named_table_batch("bridge", legacy)
                      + nft.delete_named_table_batch("ip", legacy))
        nft.run_batch(batch)
        bridge_index = _ensure_bridge(ipr, spec, bridge, created)
        _ensure_vxlan(ipr, spec, bridge_index, vxlan, in_use, created)
        _ensure_gateway_address(ipr, spec, bridge_index)
    except BaseException:
        for name in reversed(created):
            try:
                delete_link(ipr, name)
            except DataplaneError as exc:
                log.error("could not remove %s after a failed join: %s", name, exc)
        if bridge is None and vxlan is None and not in_use:
            try:
                nft.run_batch(nft.delete_table_batch("bridge", spec.network)
                              + nft.delete_table_batch("ip", spec.network)
                              + antispoof.delete_table_batch(
                                  ownership.guard_table_name(spec.network)))
            except DataplaneError as exc:
                log.error("could not remove the nftables tables of %s after a failed "
                          "join: %s", spec.network, exc)
        raise
    return bridge_index


def _ready_bridge(ipr: Any, spec: L2Spec) -> int | None:
    """The bridge's ifindex when bridge and VXLAN port are present and up (two GETs:
    the common ADD into a network already in use); None means "do the full ensure"."""
    bridge = get_link(ipr, spec.bridge)
    vxlan = get_link(ipr, spec.vxlan)
    if bridge is None or vxlan is None or link_kind(bridge) != "bridge":
        return None
    if not (ownership.owned_by(bridge, spec.network) and ownership.owned_by(vxlan, spec.network)):
        return None  # the full path decides: adopt, or refuse
    up = bool(bridge["flags"] & vxlan["flags"] & IFF_UP)
    if not up or vxlan.get("IFLA_MASTER") != bridge["index"]:
        return None
    return int(bridge["index"])


def remove(ipr: Any, network: str, bridge: str, vxlan: str,
           unmarked_is_ours: bool = False) -> None:
    """Leave the network on this host: VXLAN first (stops flooding to us), then bridge
    and our nftables tables. A device marked for another network stays, and so does
    an unmarked one unless the caller knows it is an earlier version's of ours."""
    for name in (vxlan, bridge):
        link = get_link(ipr, name)
        if link is None:
            continue
        mark = ownership.owner(link)
        if (mark.network == network) if mark is not None else unmarked_is_ours:
            delete_link(ipr, name)
        else:
            log.warning("leaving %s in place: it is not network %s's (%s)", name, network,
                        ownership.owner(link) or "no xvm-cni mark")
    batch = (nft.delete_table_batch("bridge", network) + nft.delete_table_batch("ip", network)
             + antispoof.delete_table_batch(ownership.guard_table_name(network)))
    if unmarked_is_ours:
        legacy = ownership.legacy_table_name(network)
        batch += (nft.delete_named_table_batch("bridge", legacy)
                  + nft.delete_named_table_batch("ip", legacy))
    nft.run_batch(batch)


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
    for name in (nft.table_name(spec.network), ownership.guard_table_name(spec.network)):
        if ("bridge", name) not in tables:
            found.append(f"nftables table bridge {name} is missing")
    if spec.ip_masq and ("ip", nft.table_name(spec.network)) not in tables:
        found.append(f"nftables table ip {nft.table_name(spec.network)} is missing")
    return found


# --- unicast flooding (a control plane lists the other hosts) -------------------------

FLOOD_MAC = "00:00:00:00:00:00"


def flood_list(ipr: Any, vxlan_index: int) -> set[str]:
    """The remote hosts in the VXLAN device's flood list (all-zeros FDB entries)."""
    return {str(entry.get("NDA_DST")) for entry in ipr.fdb("dump", ifindex=vxlan_index)
            if entry.get("NDA_LLADDR") == FLOOD_MAC and entry.get("NDA_DST")}


def program_flood(ipr: Any, network: str, vxlan: str,
                  wanted: set[str]) -> tuple[list[str], list[str]] | None:
    """Make the flood list of ``vxlan`` exactly ``wanted`` (remote underlay
    addresses): append the missing, delete the stale, and the MACs learned behind a
    stale host with it. None when the device is absent or not this network's (the
    host has not joined: nothing to program)."""
    link = get_link(ipr, vxlan)
    if link is None or not ownership.owned_by(link, network):
        return None
    index = int(link["index"])
    have = flood_list(ipr, index)
    added = sorted(wanted - have)
    removed = sorted(have - wanted)
    try:
        for dst in added:
            ipr.fdb("append", ifindex=index, lladdr=FLOOD_MAC, dst=dst)
        for dst in removed:
            ipr.fdb("del", ifindex=index, lladdr=FLOOD_MAC, dst=dst)
        if removed:
            gone = set(removed)
            for entry in ipr.fdb("dump", ifindex=index):
                mac = entry.get("NDA_LLADDR")
                if mac != FLOOD_MAC and str(entry.get("NDA_DST")) in gone:
                    _forget_learned(ipr, index, str(mac), str(entry.get("NDA_DST")))
    except NetlinkError as exc:
        raise kernel_error(f"program the flood list of {vxlan}", exc) from exc
    return added, removed


def _forget_learned(ipr: Any, index: int, mac: str, dst: str) -> None:
    try:
        ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:  # aged out meanwhile: the goal is reached
            raise
