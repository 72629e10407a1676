"""Model ``routed``: every host owns a pod CIDR per family; other hosts' CIDRs are
routed (seeds 001-003, Flannel's vxlan / host-gw backends).

Per host: a bridge holding the gateway (first address of each pod CIDR) with a
veth per container, as in ``l2``; pods get a default route via the gateway per
family. Remote CIDRs are reached per ``encap``:

- ``vxlan``: one L3 VXLAN device (learning off, no group) and per remote host one
  permanent neighbour, one permanent FDB entry and one onlink route;
- ``none``: a route <CIDR> via <host address> with our route protocol;
- ``auto``: ``none`` for peers on our underlay subnet, ``vxlan`` for the others.

Kernel state grows with hosts, not pods, and stays while the agent is down: the
peers are programmed, not learned.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from xvmcni.cni.result import Interface, Route
from xvmcni.config import fail, get
from xvmcni.controlplane.base import Peer
from xvmcni.dataplane import antispoof, egress, nft, ownership, routes, sysctl, veth
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, get_link, link_kind
from xvmcni.dataplane.reaper import VethReaper
from xvmcni.dataplane.routednet import (
    VXLAN_OVERHEAD,
    BridgeSpec,
    Underlay,
    VxlanSpec,
    claim,
    ensure_bridge,
    ensure_vxlan,
    gateway_addresses,
    lookup_underlay,
    remove_owned,
    rpf_address,
    vxlan_mismatch,
)
from xvmcni.models import routed_peers
from xvmcni.models.base import IPAddress, IPInterface, PeerMemory, Plugged, Pod
from xvmcni.models.bridged import BridgedPorts
from xvmcni.models.routed_peers import AUTO, ENCAPS, VXLAN, derived_mac, vtep_mac

log = logging.getLogger(__name__)

KIND = "routed"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORT = 8472
DEFAULT_VNI = 1
DEFAULT_PROTOCOL = 202   # as xcluster-cni
DEFAULT_MTU = 1500
VNI_MAX = 16_777_215
# 0-4 are the kernel's own (unspec, redirect, kernel, boot, static): deleting "our"
# routes with one of those would delete the operator's.
PROTOCOL_MIN, PROTOCOL_MAX = 5, 255
DEFAULT_ROUTES: dict[int, IPNetwork] = {4: ipaddress.IPv4Network((0, 0)),
                                        6: ipaddress.IPv6Network((0, 0))}
# In our results: 0 = bridge, 1 = host veth, 2 = the container's interface.
CONTAINER_INTERFACE_INDEX = 2


@dataclass(frozen=True)
class RoutedSettings:
    """The config fields of the routed model."""

    network: str
    host_interface: str
    pod_cidrs: tuple[IPNetwork, ...]       # at most one per family, IPv4 first
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    encap: str = VXLAN
    vxlan_id: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    route_protocol: int = DEFAULT_PROTOCOL
    mtu: int = DEFAULT_MTU
    ip_masq: bool = False
    bridge: str = ""

    @property
    def bridge_name(self) -> str:
        return self.bridge or f"xvmrb{self.vxlan_id}"

    @property
    def vxlan_name(self) -> str:
        return f"xvmrv{self.vxlan_id}"

    @property
    def gateways(self) -> tuple[IPInterface, ...]:
        """This host's gateway per pod CIDR: its first address."""
        return tuple(ipaddress.ip_interface(f"{c.network_address + 1}/{c.prefixlen}")
                     for c in self.pod_cidrs)

    def pod_cidr(self, version: int) -> IPNetwork | None:
        return next((c for c in self.pod_cidrs if c.version == version), None)

    def cluster_cidr(self, version: int) -> IPNetwork | None:
        return next((c for c in self.cluster_cidrs if c.version == version), None)

    @property
    def bridge_mac(self) -> str:
        return derived_mac("xvm-cni bridge", self.network)


def _cidrs(raw: dict[str, Any], key: str, value: Any) -> tuple[IPNetwork, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise fail(f"{key!r} must be a CIDR or a list of CIDRs (one per family)",
                   f"got {value!r}"[:120])
    out: list[IPNetwork] = []
    for text in items:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise fail(f"{key!r}: {text!r} is not a network in CIDR notation",
                       str(exc)) from exc
        if any(n.version == net.version for n in out):
            raise fail(f"{key!r} holds two IPv{net.version} networks",
                       "one per address family")
        out.append(net)
    return tuple(sorted(out, key=lambda n: n.version))


def _int(raw: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = int(get(raw, key, int, default))
    if not lo <= value <= hi:
        raise fail(f"{key!r} {value} is out of range", f"allowed: {lo}..{hi}")
    return value


def parse_settings(raw: dict[str, Any], network: str,
                   claimed: bool = False) -> RoutedSettings:
    """``claimed``: the pod CIDRs are claimed through the control plane (etcd, no
    'podCIDR'); they are filled in per request from the state dir."""
    host_interface = get(raw, "hostInterface", str)
    if not host_interface:
        raise fail("'hostInterface' is required",
                   "the host interface that carries traffic between hosts, e.g. \"eth0\"")
    # bvcni's configuration spells it "podcidr".
    key = "podCIDR" if raw.get("podCIDR") is not None else "podcidr"
    if raw.get(key) is None and not claimed:
        raise fail("'podCIDR' is required",
                   "this host's pod network per family, e.g. \"10.244.1.0/24\"")
    pod_cidrs = () if claimed else _cidrs(raw, key, raw[key])
    for cidr in pod_cidrs:
        if cidr.num_addresses < 4:
            raise fail(f"'podCIDR' {cidr} is too small: it needs room for a gateway and pods")
        if cidr.version == 6 and cidr.prefixlen < 64:
            # Our allocator counts addresses; a /64 already holds more pods than a host.
            raise fail(f"'podCIDR' {cidr} is larger than a /64", "use a /64 up to a /120")
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    if raw.get("clusterCIDR") is not None:
        cluster_cidrs = _cidrs(raw, "clusterCIDR", raw["clusterCIDR"])
    for cidr in pod_cidrs:
        cluster = next((c for c in cluster_cidrs if c.version == cidr.version), None)
        if cluster is not None and not cidr.subnet_of(cluster):  # type: ignore[arg-type]
            raise fail(f"'podCIDR' {cidr} lies outside 'clusterCIDR' {cluster}")
    ip_masq = bool(get(raw, "ipMasq", bool, False))
    if ip_masq:
        missing = [c for c in pod_cidrs
                   if not any(k.version == c.version for k in cluster_cidrs)]
        if missing:
            raise fail("'ipMasq' needs 'clusterCIDR' for every pod family",
                       "without the cluster's pod network, pod-to-pod traffic to other "
                       f"hosts would be masqueraded too (missing for {missing[0]})")
    encap = get(raw, "encap", str, VXLAN)
    if encap not in ENCAPS:
        raise fail(f"'encap' {encap!r} is not one of " + ", ".join(ENCAPS))
    bridge = get(raw, "bridge", str, "")
    if len(bridge) > 15 or "/" in bridge or " " in bridge:
        raise fail(f"'bridge' {bridge!r} is not a usable interface name (1-15 characters)")
    return RoutedSettings(
        network=network, host_interface=host_interface, pod_cidrs=pod_cidrs,
        cluster_cidrs=cluster_cidrs, encap=encap,
        vxlan_id=_int(raw, "vxlanID", DEFAULT_VNI, 1, VNI_MAX),
        port=_int(raw, "port", DEFAULT_PORT, 1, 65535),
        route_protocol=_int(raw, "routeProtocol", DEFAULT_PROTOCOL, PROTOCOL_MIN,
                            PROTOCOL_MAX),
        mtu=_int(raw, "mtu", DEFAULT_MTU, 576, 65535), ip_masq=ip_masq, bridge=bridge)


class RoutedModel(BridgedPorts):
    kind = KIND
    settings: RoutedSettings

    def __init__(self, settings: RoutedSettings, ipr: Any, reaper: VethReaper | None = None,
                 static_peers: list[Peer] | None = None) -> None:
        self.settings = settings
        self.ipr = ipr
        self._reaper = reaper
        # Peers from a static control plane: programmed on every join, so the plugin
        # works without an agent. None: someone else (the agent) calls on_peers.
        self._static_peers = static_peers
        self._underlay: Underlay | None = None
        self._bridge_index: int | None = None

    # --- host facts --------------------------------------------------------------------

    def underlay(self) -> Underlay:
        if self._underlay is None:
            self._underlay = lookup_underlay(self.ipr, self.settings.host_interface)
        return self._underlay

    @property
    def encapsulates(self) -> bool:
        return self.settings.encap in (VXLAN, AUTO)

    def mtu(self) -> int:
        """What pods get: the configured MTU, clamped to what fits the underlay (minus
        the VXLAN overhead of the underlay's family when we may encapsulate)."""
        under = self.underlay()
        overhead = VXLAN_OVERHEAD[under.address.version] if self.encapsulates else 0
        return min(self.settings.mtu, under.mtu - overhead)

    def bridge_spec(self) -> BridgeSpec:
        s = self.settings
        return BridgeSpec(network=s.network, name=s.bridge_name, mac=s.bridge_mac,
                          mtu=self.mtu(), gateways=s.gateways)

    def vxlan_spec(self) -> VxlanSpec:
        s = self.settings
        under = self.underlay()
        return VxlanSpec(network=s.network, name=s.vxlan_name, vni=s.vxlan_id, port=s.port,
                         mac=vtep_mac(s.network, under.address.ip), mtu=self.mtu(),
                         underlay=under, ipv6=s.pod_cidr(6) is not None,
                         rpf_address=rpf_address(s.pod_cidr(4)))

    def gateway(self, version: int) -> IPAddress | None:
        return next((g.ip for g in self.settings.gateways if g.version == version), None)

    def container_routes(self, addresses: list[IPInterface]) -> list[Route]:
        """A default route via the gateway for each family the pod has an address of."""
        families = sorted({a.version for a in addresses})
        return [Route(DEFAULT_ROUTES[v], gw) for v in families
                if (gw := self.gateway(v)) is not None]

    def _side(self, pod: Pod, mtu: int, addresses: list[IPInterface],
              mac: str) -> veth.ContainerSide:
        return veth.ContainerSide(
            ifname=pod.ifname, addresses=list(addresses),
            routes=[(r.dst, r.gw) for r in self.container_routes(addresses)], mtu=mtu,
            mac=mac, owner=ownership.Mark(self.settings.network, pod.container_id,
                                          pod.ifname))

    # --- the interface -----------------------------------------------------------------

    def prepare(self) -> None:
        self.underlay()

    def readiness(self) -> str:
        under = lookup_underlay(self.ipr, self.settings.host_interface)
        return "" if under.up else (f"hostInterface {under.name} is down: pods cannot reach "
                                    "other hosts")

    def underlay_address(self) -> IPAddress:
        return self.underlay().address.ip

    def _nft_batch(self) -> list[dict[str, Any]]:
        s = self.settings
        batch = antispoof.table_batch(self.guard_table, s.bridge_mac,
                                      [g.ip for g in s.gateways])
        for version in (4, 6):
            pod, cluster = s.pod_cidr(version), s.cluster_cidr(version)
            if s.ip_masq and pod is not None and cluster is not None:
                batch += egress.masquerade_batch(s.network, pod, cluster)
            else:
                batch += egress.delete_batch(s.network, version)
        return batch

    def _ready(self) -> int | None:
        """The bridge's ifindex when bridge (and VXLAN device) are ours and up: the
        common ADD into a network in use costs two GETs."""
        s = self.settings
        bridge = get_link(self.ipr, s.bridge_name)
        if bridge is None or not ownership.owned_by(bridge, s.network) \
                or not bridge["flags"] & IFF_UP:
            return None
        if self.encapsulates:
            vxlan = get_link(self.ipr, s.vxlan_name)
            if vxlan is None or not ownership.owned_by(vxlan, s.network) \
                    or not vxlan["flags"] & IFF_UP:
                return None
        return int(bridge["index"])

    def join(self, in_use: bool) -> None:
        index = self._ready() if in_use else None
        if index is None:
            index = self._full_join(in_use)
        self._bridge_index = index
        if self._static_peers is not None:
            self.on_peers(self._static_peers)

    def _full_join(self, in_use: bool, refresh: bool = False) -> int:
        s = self.settings
        if not in_use and self.mtu() < s.mtu:
            log.warning("mtu %d does not fit %s (MTU %d) with encap %s; using %d", s.mtu,
                        self.underlay().name, self.underlay().mtu, s.encap, self.mtu())
        existed = self._preflight()
        created: list[str] = []
        try:
            # Filters first: they match names, so pods are guarded from their first frame.
            nft.run_batch(self._nft_batch())
            forward = egress.forward_accept_batch(s.network, s.pod_cidrs)
            if forward:
                nft.run_batch(forward)
            index = ensure_bridge(self.ipr, self.bridge_spec(), created)
            if self.encapsulates:
                ensure_vxlan(self.ipr, self.vxlan_spec(), in_use, created)
            else:
                remove_owned(self.ipr, s.network, [s.vxlan_name])
            for version in {c.version for c in s.pod_cidrs}:
                sysctl.ensure("net.ipv4.ip_forward" if version == 4
                              else "net.ipv6.conf.all.forwarding", "1")
        except BaseException:
            if not refresh:
                remove_owned(self.ipr, s.network, list(reversed(created)))
                if not existed and not in_use:
                    self._drop_tables()
            raise
        return index

    def _preflight(self) -> set[str]:
        """Refuse, before anything changes, devices of our names that are not ours;
        the names of ours that exist."""
        s = self.settings
        existed = set()
        for name, what, field in ((s.bridge_name, "bridge", "bridge"),
                                  (s.vxlan_name, "VXLAN device", "vxlanID")):
            link = get_link(self.ipr, name)
            if link is not None:
                claim(self.ipr, link, name, s.network, what, field)
                existed.add(name)
        return existed

    def _drop_tables(self) -> None:
        try:
            nft.run_batch(antispoof.delete_table_batch(self.guard_table)
                          + egress.delete_batch(self.settings.network, 4)
                          + egress.delete_batch(self.settings.network, 6)
                          + egress.forward_accept_batch(self.settings.network, ()))
        except DataplaneError as exc:
            log.error("could not remove the nftables tables of %s: %s",
                      self.settings.network, exc)

    def plug(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
             mac: str) -> Plugged:
        s = self.settings
        mtu = self.mtu()
        if self._bridge_index is None:
            self._bridge_index = self._ready() or self._full_join(in_use=True)
        side = self._side(pod, mtu, addresses, mac)
        pair = self._plug_port(pod_ns, pod, self._bridge_index, side)
        gateways: dict[int, IPAddress] = {v: gw for v in sorted({a.version for a in addresses})
                     if (gw := self.gateway(v)) is not None}
        return Plugged(
            interfaces=[Interface(s.bridge_name, s.bridge_mac, mtu=mtu),
                        Interface(pod.host_ifname, pair.host_mac, mtu=mtu),
                        Interface(pod.ifname, pair.container_mac, sandbox=pod.netns,
                                  mtu=mtu)],
            container_index=CONTAINER_INTERFACE_INDEX,
            # One gateway serves every address only with one family; with both, the
            # per-family gateways are in the routes (and in ``gateways``).
            gateway=next(iter(gateways.values())) if len(gateways) == 1 else None,
            routes=self.container_routes(addresses),
            gateways=gateways,
        )

    def check(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
              mac: str) -> list[str]:
        side = self._side(pod, self.mtu(), addresses, mac)
        return self.problems() + self._port_problems(pod_ns, pod, self.settings.bridge_name,
                                                     side)

    def leave(self, unmarked_is_ours: bool = False) -> None:
        s = self.settings
        if get_link(self.ipr, s.bridge_name) is None \
                and get_link(self.ipr, s.vxlan_name) is None:
            return
        log.info("last container of %s gone: removing its routes, %s and %s", s.network,
                 s.vxlan_name, s.bridge_name)
        # Routes via the underlay are not taken away with our devices: ours go first
        # (the VXLAN device takes its neighbours, FDB entries and routes with it).
        try:
            self._converge([])
        except DataplaneError as exc:
            # hostInterface gone: the kernel took its routes with it. DEL must succeed.
            log.warning("network %s: not removing peer routes: %s", s.network, exc)
        remove_owned(self.ipr, s.network, [s.vxlan_name, s.bridge_name])
        self._bridge_index = None
        self._drop_tables()

    def problems(self) -> list[str]:
        s = self.settings
        found: list[str] = []
        bridge = get_link(self.ipr, s.bridge_name)
        if bridge is None or link_kind(bridge) != "bridge":
            return [f"bridge {s.bridge_name} is missing"]
        if not bridge["flags"] & IFF_UP:
            found.append(f"bridge {s.bridge_name} is down")
        present = gateway_addresses(self.ipr, int(bridge["index"]))
        for gw in s.gateways:
            if (gw.ip, gw.network.prefixlen) not in present:
                found.append(f"bridge {s.bridge_name} lacks gateway address {gw}")
        if self.encapsulates:
            vxlan = get_link(self.ipr, s.vxlan_name)
            if vxlan is None:
                found.append(f"VXLAN device {s.vxlan_name} is missing")
            else:
                why = vxlan_mismatch(vxlan, self.vxlan_spec())
                if why:
                    found.append(why)
                if not vxlan["flags"] & IFF_UP:
                    found.append(f"VXLAN device {s.vxlan_name} is down")
        tables = nft.list_tables()
        if ("bridge", self.guard_table) not in tables:
            found.append(f"nftables table bridge {self.guard_table} is missing")
        for version in (4, 6):
            if s.ip_masq and s.pod_cidr(version) is not None \
                    and (egress.FAMILY[version], nft.table_name(s.network)) not in tables:
                found.append(f"nftables table {egress.FAMILY[version]} "
                             f"{nft.table_name(s.network)} is missing")
        return found

    def repair(self, pods: list[tuple[Pod, list[IPInterface]]]) -> list[Pod]:
        index = self._full_join(in_use=True, refresh=True)
        self._bridge_index = index
        if self._static_peers is not None:
            self.on_peers(self._static_peers)
        return self._replug(pods, index, self.settings.bridge_name, self.mtu())

    def remove_orphans(self, known: set[str]) -> list[str]:
        return self._remove_orphans(self.settings.bridge_name, known)

    # --- peers -------------------------------------------------------------------------

    def on_peers(self, peers: list[Peer], memory: PeerMemory | None = None) -> None:
        """Converge the kernel to exactly these peers. Needs the host side (join).

        With ``memory`` holding what an earlier call applied on this same host side,
        only the difference is programmed, without reading the kernel back (a peer
        event on 50 hosts cost each agent three dumps otherwise). The first apply, one
        after ``memory.forget()`` (the agent's periodic re-apply) and one after any
        error read the kernel back and converge in full."""
        bridge = get_link(self.ipr, self.settings.bridge_name)
        applied = memory.state if memory is not None else None
        if memory is not None:
            memory.forget()  # until this apply has succeeded
        if bridge is None:
            log.info("network %s has not joined this host: peers are programmed on join",
                     self.settings.network)
            return
        index = int(bridge["index"])
        if isinstance(applied, routed_peers.Applied) and memory is not None \
                and self._change(applied, index, peers, memory):
            return
        self._converge(peers, memory, index)

    def _change(self, applied: routed_peers.Applied, bridge_index: int, peers: list[Peer],
                memory: PeerMemory) -> bool:
        """Program only what differs between ``applied`` and ``peers``. False: not
        possible (another host side, a destination routed already, the kernel refused
        something): the caller converges in full."""
        s = self.settings
        local = self.local()
        if applied.bridge_index != bridge_index or applied.local != local:
            return False
        want = routed_peers.desired(local, peers)
        todo = routed_peers.plan_change(applied, want)
        vx = local.vxlan_index or 0  # no neighbours or FDB entries without the device
        try:
            for n in todo.add_neighbours:
                routes.replace_neighbour(self.ipr, vx, n)
            for f in todo.add_fdb:
                routes.replace_fdb(self.ipr, vx, f)
            for r in todo.add_routes:
                if r.dst in applied.want.routes:
                    routes.replace_route(self.ipr, r, s.route_protocol)  # ours already
                elif not routes.create_route(self.ipr, r, s.route_protocol):
                    # Someone else's (or a stale one of ours): only the full read-back
                    # can tell; it leaves theirs alone and reports it.
                    log.info("network %s: %s is routed already: reading the kernel back",
                             s.network, r.dst)
                    return False
            for r in todo.del_routes:
                routes.delete_route(self.ipr, r, s.route_protocol)
            for f in todo.del_fdb:
                routes.delete_fdb(self.ipr, vx, f)
            for n in todo.del_neighbours:
                routes.delete_neighbour(self.ipr, vx, n)
        except DataplaneError as exc:
            log.warning("network %s: could not change the peers (%s): converging in full",
                        s.network, exc)
            return False
        for why in want.skipped:
            log.warning("network %s: peer left out: %s", s.network, why)
        if not todo.empty:
            log.info("network %s: %d peer routes now (+%d -%d)", s.network,
                     len(want.routes), len(todo.add_routes), len(todo.del_routes))
        memory.state = routed_peers.Applied(bridge_index, local, want, applied.foreign)
        return True

    def local_peer(self, name: str) -> Peer | None:
        """``me`` once the host side exists (the host joined), for the agent's peer
        sync; None before."""
        if get_link(self.ipr, self.settings.bridge_name) is None:
            return None
        return self.me(name)

    def local(self) -> routed_peers.Local:
        s = self.settings
        vxlan = get_link(self.ipr, s.vxlan_name) if self.encapsulates else None
        if vxlan is not None and not ownership.owned_by(vxlan, s.network):
            vxlan = None  # not ours: never program or read entries on it
        under = self.underlay()
        return routed_peers.Local(
            network=s.network, encap=s.encap, underlay=under.address,
            pod_cidrs=s.pod_cidrs, gateways=tuple(g.ip for g in s.gateways),
            underlay_index=under.index,
            vxlan_index=int(vxlan["index"]) if vxlan is not None else None)

    def peer_drift(self, peers: list[Peer]) -> routed_peers.Plan:
        """What ``on_peers(peers)`` would change, without changing it (xvmctl doctor:
        the kernel's per-peer state against the control plane's). Empty: in line."""
        return self._plan(peers)[2]

    def _plan(self, peers: list[Peer]) -> tuple[routed_peers.Local, routed_peers.Desired,
                                                routed_peers.Plan, set[IPNetwork]]:
        s = self.settings
        local = self.local()
        want = routed_peers.desired(local, peers)
        oifs = {local.underlay_index}
        neighbours: list[routes.NeighEntry] = []
        fdb: list[routes.FdbEntry] = []
        if local.vxlan_index is not None:
            oifs.add(local.vxlan_index)
            neighbours = routes.permanent_neighbours(self.ipr, local.vxlan_index)
            fdb = routes.permanent_fdb(self.ipr, local.vxlan_index)
        ours, foreign = routes.main_routes(self.ipr, s.route_protocol, oifs)
        # With a clusterCIDR, a route of our protocol outside it is not this network's
        # (another instance that shares the number, e.g. seed 001's multi-networking).
        outside = [r for r in ours if not self._in_cluster(r.dst)]
        ours = [r for r in ours if self._in_cluster(r.dst)]
        foreign |= {r.dst for r in outside}
        return local, want, routed_peers.plan(want, ours, neighbours, fdb, foreign), foreign

    def _converge(self, peers: list[Peer], memory: PeerMemory | None = None,
                  bridge_index: int = 0) -> routed_peers.Plan:
        """Read our routes, neighbours and FDB entries back and converge them to
        ``peers``; with ``memory``, remember what was applied if all of it was."""
        s = self.settings
        local, want, todo, foreign = self._plan(peers)
        for why in want.skipped:
            log.warning("network %s: peer left out: %s", s.network, why)
        vx = local.vxlan_index
        failed: list[str] = []

        def attempt(what: str, step: Any, *args: Any) -> None:
            # One peer the kernel refuses (e.g. a "none" next hop that is not on-link)
            # must not keep the others from being programmed.
            try:
                step(*args)
            except DataplaneError as exc:
                failed.append(f"{what}: {exc}")

        for n in todo.add_neighbours:
            attempt(f"neighbour {n.address}", routes.replace_neighbour, self.ipr, vx, n)
        for f in todo.add_fdb:
            attempt(f"FDB {f.mac}", routes.replace_fdb, self.ipr, vx, f)
        for r in todo.add_routes:
            attempt(f"route {r.dst}", routes.replace_route, self.ipr, r, s.route_protocol)
        for r in todo.del_routes:
            attempt(f"route {r.dst}", routes.delete_route, self.ipr, r, s.route_protocol)
        for f in todo.del_fdb:
            attempt(f"FDB {f.mac}", routes.delete_fdb, self.ipr, vx, f)
        for n in todo.del_neighbours:
            attempt(f"neighbour {n.address}", routes.delete_neighbour, self.ipr, vx, n)
        for why in failed:
            log.error("network %s: could not program a peer: %s", s.network, why)
        if memory is not None and not failed:
            memory.state = routed_peers.Applied(bridge_index, local, want,
                                                frozenset(foreign))
        if not todo.empty:
            log.info("network %s: %d peer routes now (+%d -%d)", s.network,
                     len(want.routes), len(todo.add_routes), len(todo.del_routes))
        return todo

    def me(self, name: str) -> Peer:
        """This host as its peers must know it (what a control plane publishes)."""
        address = self.underlay_address()
        return Peer(name=name, underlay=address,
                    vtep_mac=vtep_mac(self.settings.network, address),
                    pod_cidrs=tuple(str(c) for c in self.settings.pod_cidrs))

    def _in_cluster(self, dst: IPNetwork) -> bool:
        cluster = self.settings.cluster_cidr(dst.version)
        return cluster is None or dst.subnet_of(cluster)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"model": KIND, "bridge": s.bridge_name, "encap": s.encap,
                "vni": s.vxlan_id, "podCIDRs": [str(c) for c in s.pod_cidrs],
                "routeProtocol": s.route_protocol}
