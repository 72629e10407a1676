"""Model ``l2``: one IPv4 subnet stretched over every host (seed 000).

Per host: a bridge holding the anycast gateway (same IP and MAC on every host,
kept local by nftables), a VXLAN port on it (VNI = ``vxlanID``) that floods and
learns over a multicast group, and a veth pair per container. A host joins with
its first container and leaves with its last.

With a control plane that lists the hosts (etcd) the VXLAN device has no group:
it floods by unicast to one all-zeros FDB entry per remote host (``on_peers``),
for underlays that carry no multicast. Learning stays on in both modes.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni.cni.names import interface_name_problem, shown
from xvmcni.cni.result import Interface, Route
from xvmcni.config import fail, get
from xvmcni.controlplane import peercache
from xvmcni.controlplane.base import Peer
from xvmcni.dataplane import hostif, l2net, names, ownership, sysctl, veth
from xvmcni.dataplane.hostif import HostInterface, HostInterfaceCache
from xvmcni.dataplane.netlink import get_link
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.ipam import blocks
from xvmcni.models.base import IPInterface, PeerMemory, Plugged, Pod
from xvmcni.models.bridged import BridgedPorts

log = logging.getLogger(__name__)

KIND = "l2"
DEFAULT_GROUP = ipaddress.IPv4Address("239.1.1.1")   # the original XVM's group
DEFAULT_PORT = 8472                                   # Linux's (and XVM's, Flannel's) VXLAN port
DEFAULT_MTU = 1500
VNI_MAX = 16_777_215
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")
# In our results: 0 = bridge, 1 = host veth, 2 = the container's interface.
CONTAINER_INTERFACE_INDEX = 2


@dataclass(frozen=True)
class L2Settings:
    """The config fields of the l2 model (the seed-000 format)."""

    network: str
    host_interface: str
    vxlan_id: int
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    mtu: int = DEFAULT_MTU
    # None: no multicast; the control plane's peers make the flood list.
    group: ipaddress.IPv4Address | None = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    routes: list[Route] = field(default_factory=list)
    ip_masq: bool = False
    bridge: str = ""

    @property
    def bridge_name(self) -> str:
        return self.bridge or f"xvmbr{self.vxlan_id}"

    @property
    def vxlan_name(self) -> str:
        return f"xvmvx{self.vxlan_id}"


def _ipv4(raw: dict[str, Any], key: str) -> ipaddress.IPv4Address | None:
    text = get(raw, key, str)
    if text is None:
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise fail(f"{key!r} is not an IPv4 address: {text!r}") from exc


def _subnet(raw: dict[str, Any]) -> ipaddress.IPv4Network:
    text = get(raw, "subnet", str)
    if text is None:
        text = _subnet_from_ipam(raw.get("ipam"))
    if text is None:
        raise fail("'subnet' is required", 'for example "subnet": "10.244.0.0/16"')
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise fail(f"'subnet' {text!r} is not a network in CIDR notation", str(exc)) from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise fail(f"'subnet' {text!r} is IPv6; the l2 model carries IPv4 subnets")
    if net.prefixlen > 30:
        raise fail(f"'subnet' {text!r} is too small: it needs room for a gateway and pods")
    return net


def _subnet_from_ipam(ipam: Any) -> str | None:
    """With delegated IPAM the subnet may be written only once, in the ipam block
    (host-local's ``subnet`` or ``ranges[0][0].subnet``)."""
    if not isinstance(ipam, dict):
        return None
    if isinstance(ipam.get("subnet"), str):
        return str(ipam["subnet"])
    ranges = ipam.get("ranges")
    try:
        subnet = ranges[0][0]["subnet"]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    return subnet if isinstance(subnet, str) else None


def _routes(raw: dict[str, Any]) -> list[Route]:
    routes = []
    for item in get(raw, "routes", list, []):
        if not isinstance(item, dict) or not isinstance(item.get("dst"), str):
            raise fail("each entry of 'routes' needs a \"dst\" in CIDR notation",
                       f"got {shown(item)}")
        gw_text = item.get("gw")
        if gw_text is not None and not isinstance(gw_text, str):
            # Never converted: 167772161 is an address to ipaddress, not to the reader.
            raise fail(f"route {shown(item['dst'])}: \"gw\" must be an address in a "
                       f"string, got {shown(gw_text)}")
        try:
            dst = ipaddress.ip_network(item["dst"], strict=False)
            gw = ipaddress.ip_address(gw_text) if gw_text else None
        except ValueError as exc:
            raise fail(f"route {item['dst']!r} is not valid", str(exc)) from exc
        routes.append(Route(dst=dst, gw=gw))
    return routes


def parse_settings(raw: dict[str, Any], network: str, unicast: bool = False) -> L2Settings:
    """``unicast``: the control plane lists the hosts, so no multicast group is used."""
    host_interface = get(raw, "hostInterface", str)
    if not host_interface:
        raise fail("'hostInterface' is required",
                   "the host interface that carries VXLAN traffic, e.g. \"eth0\"")
    _check_ifname("hostInterface", host_interface)
    vxlan_id = get(raw, "vxlanID", int)
    if vxlan_id is None:
        raise fail("'vxlanID' is required", f"a VXLAN network identifier, 1..{VNI_MAX}")
    if not 1 <= vxlan_id <= VNI_MAX:
        raise fail(f"'vxlanID' {shown(vxlan_id)} is out of range", f"allowed: 1..{VNI_MAX}")

    subnet = _subnet(raw)
    gateway = _ipv4(raw, "gateway") or subnet.network_address + 1
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise fail(f"'gateway' {gateway} is not a host address inside subnet {subnet}")

    mtu = get(raw, "mtu", int, DEFAULT_MTU)
    if not 576 <= mtu <= 65535:
        raise fail(f"'mtu' {shown(mtu)} is out of range", "allowed: 576..65535")
    port = get(raw, "port", int, DEFAULT_PORT)
    if not 1 <= port <= 65535:
        raise fail(f"'port' {shown(port)} is not a UDP port number", "allowed: 1..65535")
    group = _ipv4(raw, "group") or DEFAULT_GROUP
    if not group.is_multicast:
        raise fail(f"'group' {group} is not a multicast address")
    if unicast and raw.get("group") is not None:
        raise fail("'group' is set but the control plane floods by unicast",
                   "remove 'group', or the controlPlane section for multicast")

    bridge = get(raw, "bridge", str, "")
    if bridge:
        _check_ifname("bridge", bridge)

    return L2Settings(
        network=network, host_interface=host_interface, vxlan_id=vxlan_id, subnet=subnet,
        gateway=gateway, mtu=mtu, group=None if unicast else group, port=port,
        routes=_routes(raw),
        ip_masq=get(raw, "ipMasq", bool, False), bridge=bridge)


def _check_ifname(key: str, name: str) -> None:
    why = interface_name_problem(name)
    if why:
        raise fail(f"{key!r} {shown(name)} is not a valid interface name: {why}")


class L2Model(BridgedPorts):
    kind = KIND
    settings: L2Settings

    def __init__(self, settings: L2Settings, ipr: Any, reaper: VethReaper | None = None,
                 hostif_cache: HostInterfaceCache | None = None,
                 state_dir: Path | None = None) -> None:
        self.settings = settings
        # Where the control plane's last peer set is cached (unicast flooding).
        self._state_dir = state_dir
        # Netlink socket in the host's namespace, lent for this request.
        self.ipr = ipr
        self._reaper = reaper
        self._hostif_cache = hostif_cache
        self._host: HostInterface | None = None
        self._bridge_index: int | None = None

    # --- host facts --------------------------------------------------------------------

    def host(self) -> HostInterface:
        """The underlay interface (looked up once per request, cached in the agent)."""
        if self._host is None:
            self._host = hostif.lookup(self.ipr, self.settings.host_interface,
                                       self._hostif_cache)
        return self._host

    def mtu(self) -> int:
        return l2net.effective_mtu(self.settings.mtu, self.host().mtu)

    def spec(self) -> l2net.L2Spec:
        s = self.settings
        return l2net.L2Spec(
            network=s.network, bridge=s.bridge_name, vxlan=s.vxlan_name, vni=s.vxlan_id,
            group=s.group, port=s.port, host=self.host(), mtu=self.mtu(),
            gateway=ipaddress.IPv4Interface(f"{s.gateway}/{s.subnet.prefixlen}"),
            gateway_mac=names.gateway_mac(s.vxlan_id), ip_masq=s.ip_masq)

    def container_routes(self) -> list[Route]:
        s = self.settings
        routes = [Route(DEFAULT_ROUTE, s.gateway)]
        for route in s.routes:
            if route.dst == DEFAULT_ROUTE:
                routes[0] = Route(DEFAULT_ROUTE, route.gw or s.gateway)
            elif route.dst.version == 4:
                routes.append(Route(route.dst, route.gw or s.gateway))
        return routes

    def _side(self, pod: Pod, mtu: int, addresses: list[IPInterface],
              mac: str) -> veth.ContainerSide:
        # Without an address yet (delegated IPAM plugs first) no route can be set.
        routes = [(r.dst, r.gw) for r in self.container_routes()] if addresses else []
        return veth.ContainerSide(
            ifname=pod.ifname, addresses=list(addresses), routes=routes, mtu=mtu, mac=mac,
            owner=ownership.Mark(self.settings.network, pod.container_id, pod.ifname))

    # --- the interface -----------------------------------------------------------------

    def prepare(self) -> None:
        self.host()

    def underlay_address(self) -> ipaddress.IPv4Address:
        return self.host().address

    def readiness(self) -> str:
        # Fresh, not from the agent's cache: STATUS is asked exactly when things change.
        host = hostif.lookup(self.ipr, self.settings.host_interface)
        return "" if host.up else (f"hostInterface {host.name} is down: pods cannot reach "
                                   "other hosts")

    def join(self, in_use: bool) -> None:
        spec = self.spec()
        if not in_use and spec.mtu < self.settings.mtu:  # said once, when the host joins
            log.warning("mtu %d does not fit a VXLAN packet on %s (MTU %d); using %d",
                        self.settings.mtu, spec.host.name, spec.host.mtu, spec.mtu)
        # Devices of an earlier xvm-cni carry no mark: they are adopted only while this
        # network has containers on the host (its own records say it made them).
        self._bridge_index = l2net.ensure(self.ipr, spec, in_use, adopt_unmarked=in_use)
        sysctl.ensure("net.ipv4.ip_forward", "1")
        if not in_use:
            self._flood_to_cached_peers()

    def _flood_to_cached_peers(self) -> None:
        """A host joining with unicast flooding knows the others from the agent's last
        peer set, so its first pod reaches them without waiting for the agent."""
        if self.settings.group is not None or self._state_dir is None:
            return
        cached = peercache.read(self._state_dir)
        if cached is not None:
            self.on_peers(cached)

    def plug(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
             mac: str) -> Plugged:
        spec = self.spec()
        if self._bridge_index is None:
            self._bridge_index = l2net.ensure(self.ipr, spec, in_use=True)
        side = self._side(pod, spec.mtu, addresses, mac)
        pair = self._plug_port(pod_ns, pod, self._bridge_index, side)
        return Plugged(
            interfaces=[Interface(spec.bridge, spec.gateway_mac, mtu=spec.mtu),
                        Interface(pod.host_ifname, pair.host_mac, mtu=spec.mtu),
                        Interface(pod.ifname, pair.container_mac, sandbox=pod.netns,
                                  mtu=spec.mtu)],
            container_index=CONTAINER_INTERFACE_INDEX,
            gateway=self.settings.gateway,
            routes=self.container_routes(),
        )

    def check(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
              mac: str) -> list[str]:
        spec = self.spec()
        side = self._side(pod, spec.mtu, addresses, mac)
        return (l2net.problems(self.ipr, spec)
                + self._port_problems(pod_ns, pod, spec.bridge, side))

    def leave(self, unmarked_is_ours: bool = False) -> None:
        s = self.settings
        if get_link(self.ipr, s.bridge_name) is None \
                and get_link(self.ipr, s.vxlan_name) is None:
            return  # nothing of ours here (e.g. DEL of an unknown container): skip nft
        log.info("last container of %s gone: removing %s and %s", s.network, s.bridge_name,
                 s.vxlan_name)
        l2net.remove(self.ipr, s.network, s.bridge_name, s.vxlan_name, unmarked_is_ours)
        self._bridge_index = None

    def problems(self) -> list[str]:
        return l2net.problems(self.ipr, self.spec())

    def repair(self, pods: list[tuple[Pod, list[IPInterface]]]) -> list[Pod]:
        spec = self.spec()
        bridge_index = l2net.ensure(self.ipr, spec, in_use=True, refresh_filters=True,
                                    adopt_unmarked=True)
        self._bridge_index = bridge_index
        sysctl.ensure("net.ipv4.ip_forward", "1")
        self._flood_to_cached_peers()
        return self._replug(pods, bridge_index, spec.bridge, spec.mtu)

    def remove_orphans(self, known: set[str]) -> list[str]:
        return self._remove_orphans(self.settings.bridge_name, known)

    def on_peers(self, peers: list[Peer], memory: PeerMemory | None = None) -> None:
        """Unicast flooding: exactly one all-zeros FDB entry per remote host, stale
        ones removed. Multicast: nothing (the kernel finds the peers itself). Before
        the host joined (no VXLAN device) there is nothing to program."""
        s = self.settings
        if s.group is not None:
            return
        me = self.host().address
        wanted = {str(p.underlay) for p in peers if p.underlay != me and p.underlay.version == 4}
        changed = l2net.program_flood(self.ipr, s.network, s.vxlan_name, wanted)
        if changed is not None and (changed[0] or changed[1]):
            log.info("%s flood list: added %s, removed %s", s.network,
                     ", ".join(changed[0]) or "-", ", ".join(changed[1]) or "-")

    def flood_drift(self, peers: list[Peer]) -> tuple[list[str], list[str]] | None:
        """Unicast flooding: (missing, extra) remote hosts of the VXLAN device's flood
        list against ``peers``, without changing it (xvmctl doctor); None with
        multicast or before the host joined."""
        s = self.settings
        vxlan = get_link(self.ipr, s.vxlan_name)
        if s.group is not None or vxlan is None or not ownership.owned_by(vxlan, s.network):
            return None
        me = self.host().address
        wanted = {str(p.underlay) for p in peers if p.underlay != me and p.underlay.version == 4}
        have = l2net.flood_list(self.ipr, int(vxlan["index"]))
        return sorted(wanted - have), sorted(have - wanted)

    def local_peer(self, name: str) -> Peer | None:
        s = self.settings
        vxlan = get_link(self.ipr, s.vxlan_name)
        if vxlan is None or not ownership.owned_by(vxlan, s.network):
            return None  # not joined: nobody should flood to us yet
        cidrs: tuple[str, ...] = ()
        if self._state_dir is not None:
            cidrs = tuple(str(b).replace("_", "/") for b in blocks.read_claims(self._state_dir))
        return Peer(name=name, underlay=self.host().address,
                    vtep_mac=str(vxlan.get("IFLA_ADDRESS", "")), pod_cidrs=cidrs)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"model": KIND, "bridge": s.bridge_name, "vni": s.vxlan_id,
                "subnet": str(s.subnet)}
