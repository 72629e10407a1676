"""Model ``macvlan``: many L2 domains spanning the cluster, every host a router into
each (seed 004, the vxlan + macvlan router).

One configuration lists several networks ("segments" here; ``vxlans`` in the seed's
spelling). A pod is put on one of them (``macvlan_choice``). Per segment a host that
has pods on it holds (``dataplane/macvlannet``):

    pod A1 ─┐ macvlan (bridge)                           ┌─ pod B1
    pod A2 ─┤                     VXLAN VNI 100          │
    host ───┘ xvmmh100 10.10.0.1 ── xvmmx100 ═══ underlay ═══ xvmmx100 ── xvmmh100 10.10.1.1

Pods of a segment talk directly over the L2 (no hop: TTL unchanged); a pod's default
route goes to its own host's router address, so traffic to other segments, to the
hosts and beyond is routed by the pod's host. Each host's router address and pods
come from its own slice of the segment's subnet (``ipam/hostslices``); with a
control plane that lists the hosts (``static``, ``etcd``) every host routes each
remote slice via that host's router address on the L2, so state grows with hosts,
not pods, and no routing protocol is needed.

A host joins a segment with its first pod there and leaves with its last: VXLAN
device, host macvlan, addresses, routes, bypass rules and the isolation table go.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvmcni.cni.result import Interface, Route
from xvmcni.controlplane import peercache
from xvmcni.controlplane.base import Peer
from xvmcni.dataplane import l2net, macvlannet, macvlanpod, names, nft, ownership
from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import get_link
from xvmcni.dataplane.netns import netns_gone
from xvmcni.dataplane.routednet import Underlay, lookup_underlay
from xvmcni.ipam import blocks
from xvmcni.ipam.hostslices import HostRange, cidr_range, host_range
from xvmcni.models.base import IPAddress, IPInterface, PeerMemory, Plugged, Pod
from xvmcni.models.bridged import PodNamespace, pod_namespace
from xvmcni.models.macvlan_config import KIND, MacvlanSettings, Segment
from xvmcni.models.routed_peers import derived_mac, vtep_mac
from xvmcni.state.locks import network_lock

log = logging.getLogger(__name__)

# Route programming is quick; a holder stuck longer than this is a bug worth an error.
ROUTES_LOCK_TIMEOUT = 30.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_ROUTES: dict[int, IPNetwork] = {4: ipaddress.IPv4Network((0, 0)),
                                        6: ipaddress.IPv6Network((0, 0))}


def mark_name(config_name: str, segment: str) -> str:
    """The segment's name in ownership marks, state paths and etcd keys. '@' never
    appears in a configuration's name, so no other network can have this one."""
    return f"{config_name}@{segment}"


def cidr_ranges(segment: Segment, cidrs: Iterable[str]) -> list[HostRange]:
    """Router address and pod range of each given slice or block (as a control plane
    publishes them) that lies in one of ``segment``'s subnets; others are ignored."""
    out = []
    for text in cidrs:
        try:
            cidr = ipaddress.ip_network(text)
        except ValueError:
            continue
        subnet = segment.subnet(cidr.version)
        if subnet is not None and cidr.subnet_of(subnet):  # type: ignore[arg-type]
            out.append(cidr_range(subnet, cidr, segment.exclude_first, segment.exclude_last))
    return out


@dataclass(frozen=True)
class SegmentSettings:
    """What the model needs: the whole configuration and the one segment it serves."""

    config: MacvlanSettings
    segment: Segment
    # etcd: the IPv4 subnet is shared out in blocks claimed cluster-wide (claims.json
    # in the state dir), each block's first usable address a router address.
    blocks: bool = False

    @property
    def network(self) -> str:
        return mark_name(self.config.network, self.segment.name)

    def others(self) -> tuple[IPNetwork, ...]:
        return tuple(n for s in self.config.segments if s.name != self.segment.name
                     for n in s.subnets)


class MacvlanModel:
    kind = KIND

    def __init__(self, settings: SegmentSettings, ipr: Any,
                 static_peers: list[Peer] | None = None,
                 state_dir: Path | None = None) -> None:
        self.settings = settings
        self.ipr = ipr
        self._static_peers = static_peers
        self._state_dir = state_dir
        self._underlay: Underlay | None = None
        self._vxlan_index: int | None = None

    # --- host facts ----------------------------------------------------------------

    @property
    def segment(self) -> Segment:
        return self.settings.segment

    @property
    def network(self) -> str:
        return self.settings.network

    def underlay(self) -> Underlay:
        if self._underlay is None:
            self._underlay = lookup_underlay(self.ipr, self.segment.host_interface)
        return self._underlay

    def local_address(self) -> IPAddress:
        return self.segment.local_address or self.underlay().address.ip

    def ranges(self, host: IPAddress | None = None) -> tuple[HostRange, ...]:
        """This host's (or ``host``'s) router address and pod range per subnet; with
        blocks, this host's per block it holds."""
        seg = self.segment
        if self.settings.blocks and host is None:
            held = blocks.read_claims(self._state_dir) if self._state_dir else []
            return tuple(cidr_ranges(seg, [str(blocks.block_of_key(k)) for k in held]))
        at = host if host is not None else self.underlay_address()
        return tuple(host_range(subnet, at, seg.slice_prefix[subnet.version],
                                seg.exclude_first, seg.exclude_last)
                     for subnet in seg.subnets)

    def routers(self) -> tuple[IPInterface, ...]:
        found = []
        for rng in self.ranges():
            if rng.router is None:
                raise DataplaneError(DataplaneError.INVALID,
                                     f"this host's slice {rng.slice} of network "
                                     f"{self.segment.name} lies wholly in the excluded "
                                     "addresses", "lower excludeFirst/excludeLast")
            found.append(rng.router_interface)
        return tuple(found)

    def mtu(self) -> int:
        under = self.underlay()
        fits = under.mtu - macvlannet.VXLAN_OVERHEAD[self.local_address().version]
        return min(self.segment.mtu, fits) if self.segment.mtu else fits

    def spec(self) -> macvlannet.SegmentSpec:
        seg, cfg = self.segment, self.settings.config
        return macvlannet.SegmentSpec(
            network=self.network, vxlan=seg.vxlan_name, macvlan=seg.macvlan_name,
            vni=seg.vni, port=seg.port, group=seg.group, ttl=seg.ttl, tos=seg.tos,
            learning=seg.learning, local=self.local_address(),
            underlay_index=self.underlay().index, mtu=self.mtu(), routers=self.routers(),
            router_mac=derived_mac("xvm-cni router", self.network,
                                   str(self.underlay_address())),
            bypass_table=cfg.bypass_table, bypass_priority=cfg.bypass_priority,
            protocol=cfg.route_protocol, subnets=seg.subnets)

    def container_routes(self, addresses: list[IPInterface]) -> list[Route]:
        """A default route per family via the router address of the slice (or block)
        the pod's address comes from; else this host's first of that family."""
        ranges = self.ranges()
        out: list[Route] = []
        for addr in sorted(addresses, key=lambda a: a.version):
            own = [r.router for r in ranges if addr.ip in r.slice and r.router is not None]
            fallback = [r.router for r in ranges
                        if r.subnet.version == addr.version and r.router is not None]
            found = own or fallback
            if found and all(r.dst.version != addr.version for r in out):
                out.append(Route(DEFAULT_ROUTES[addr.version], found[0]))
        return out

    def _side(self, pod: Pod, addresses: list[IPInterface], mac: str) -> macvlanpod.PodSide:
        return macvlanpod.PodSide(
            ifname=pod.ifname, addresses=tuple(addresses),
            routes=tuple((r.dst, r.gw) for r in self.container_routes(addresses)
                         if r.gw is not None),
            mtu=self.mtu(), mac=mac,
            owner=ownership.Mark(self.network, pod.container_id, pod.ifname))

    # --- the interface -------------------------------------------------------------

    def prepare(self) -> None:
        self.underlay()
        self.routers()

    def readiness(self) -> str:
        under = lookup_underlay(self.ipr, self.segment.host_interface)
        return "" if under.up else (f"hostInterface {under.name} is down: pods cannot reach "
                                    "other hosts")

    def underlay_address(self) -> IPAddress:
        return self.underlay().address.ip

    def host_ifname(self, container_id: str, ifname: str) -> str:
        # No host-side device per pod; the derived name keeps the registry's key.
        return names.host_veth_name(container_id, ifname)

    def join(self, in_use: bool) -> None:
        spec = self.spec()
        if not in_use:
            log.info("joining network %s (VNI %d) with router %s", self.network, spec.vni,
                     ", ".join(map(str, spec.routers)))
        self._vxlan_index, _ = macvlannet.ensure(self.ipr, spec, in_use)
        self._isolation()
        self._program_known_peers(cached=not in_use)

    def _program_known_peers(self, cached: bool) -> None:
        """The static peers, or (``cached``) the agent's last peer set: a host joining
        (or rebuilt) floods to and routes towards them without waiting for the agent."""
        peers = self._static_peers
        if peers is None and self._state_dir is not None and cached:
            peers = peercache.read(self._state_dir)
        if peers is not None:
            self.on_peers(peers)

    def _isolation(self) -> None:
        if self.segment.isolated:
            nft.run_batch(macvlannet.isolation_batch(self.network, self.segment.subnets,
                                                     self.settings.others()))
        elif (("inet", nft.table_name(self.network)) in nft.list_tables()):
            nft.run_batch(macvlannet.delete_isolation_batch(self.network))

    def enter(self, pod: Pod) -> contextlib.AbstractContextManager[PodNamespace]:
        return pod_namespace(pod.netns)

    def _vxlan(self) -> int:
        if self._vxlan_index is None:
            link = get_link(self.ipr, self.segment.vxlan_name)
            if link is None or not ownership.owned_by(link, self.network):
                self._vxlan_index, _ = macvlannet.ensure(self.ipr, self.spec(), in_use=True)
            else:
                self._vxlan_index = int(link["index"])
        return self._vxlan_index

    def plug(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
             mac: str) -> Plugged:
        vxlan_index = self._vxlan()
        if self.settings.blocks:
            # The address may come from a block claimed after the join: its router.
            macvlannet.add_routers(self.ipr, self.spec())
        side = self._side(pod, addresses, mac)
        _, pod_mac = macvlanpod.plug(self.ipr, pod_ns.ipr, pod_ns.fd, vxlan_index, side)
        gateways: dict[int, IPAddress] = {r.dst.version: r.gw
                                          for r in self.container_routes(addresses)
                                          if r.gw is not None}
        return Plugged(
            interfaces=[Interface(pod.ifname, pod_mac, sandbox=pod.netns, mtu=side.mtu)],
            container_index=0,
            gateway=next(iter(gateways.values())) if len(gateways) == 1 else None,
            routes=self.container_routes(addresses), gateways=gateways)

    def unplug(self, pod: Pod, owned: bool) -> None:
        if not pod.netns or netns_gone(pod.netns):
            return  # the macvlan lives only in the pod: gone with its netns
        owner = ownership.Mark(self.network, pod.container_id, pod.ifname)
        try:
            with self.enter(pod) as pod_ns:
                macvlanpod.remove(pod_ns.ipr, pod.ifname, owner, owned)
        except DataplaneError as exc:
            if exc.kind != DataplaneError.CONTAINER:
                raise
            log.info("DEL %s: container netns unusable (%s): nothing to remove",
                     pod.container_id[:12], exc.msg)

    def check(self, pod_ns: Any, pod: Pod, addresses: list[IPInterface],
              mac: str) -> list[str]:
        found = self.problems()
        vxlan = get_link(self.ipr, self.segment.vxlan_name)
        if vxlan is not None:
            found += macvlanpod.problems(pod_ns.ipr, int(vxlan["index"]),
                                         self._side(pod, addresses, mac))
        return found

    def leave(self, unmarked_is_ours: bool = False) -> None:
        seg = self.segment
        if get_link(self.ipr, seg.vxlan_name) is None \
                and get_link(self.ipr, seg.macvlan_name) is None:
            return
        log.info("last container of %s gone: removing %s, %s, its rules and routes",
                 self.network, seg.macvlan_name, seg.vxlan_name)
        spec = self._leave_spec()
        macvlannet.remove(self.ipr, spec)
        nft.run_batch(macvlannet.delete_isolation_batch(self.network))
        self._vxlan_index = None
        try:
            # This network is now reached through the others (or, the last one gone,
            # no route of ours stays).
            with self._routes_lock():
                self.converge_underlay()
        except DataplaneError as exc:
            log.warning("network %s: not converging underlay routes: %s", self.network, exc)

    def _leave_spec(self) -> macvlannet.SegmentSpec:
        """The spec for removal; without a usable underlay (hostInterface gone) the
        names, table and protocol are all that removal needs."""
        try:
            return self.spec()
        except DataplaneError:
            cfg = self.settings.config
            return macvlannet.SegmentSpec(
                network=self.network, vxlan=self.segment.vxlan_name,
                macvlan=self.segment.macvlan_name, vni=self.segment.vni, port=0, group=None,
                ttl=0, tos=0, learning=True, local=ipaddress.IPv4Address(0),
                underlay_index=0, mtu=0,
                routers=tuple(ipaddress.ip_interface(f"{s.network_address}/{s.prefixlen}")
                              for s in self.segment.subnets),
                router_mac="", bypass_table=cfg.bypass_table,
                bypass_priority=cfg.bypass_priority, protocol=cfg.route_protocol,
                subnets=self.segment.subnets)

    def problems(self) -> list[str]:
        return macvlannet.problems(self.ipr, self.spec())

    def repair(self, pods: list[tuple[Pod, list[IPInterface]]]) -> list[Pod]:
        self._vxlan_index, _ = macvlannet.ensure(self.ipr, self.spec(), in_use=True)
        self._isolation()
        self._program_known_peers(cached=True)
        replugged = []
        for pod, addresses in pods:
            if not pod.netns or netns_gone(pod.netns):
                continue
            with self.enter(pod) as pod_ns:
                if get_link(pod_ns.ipr, pod.ifname) is not None:
                    continue  # running: never touch it
                self.plug(pod_ns, pod, addresses, "")
            replugged.append(pod)
        return replugged

    def remove_orphans(self, known: set[str]) -> list[str]:
        return []  # nothing per pod lives on the host

    # --- peers -----------------------------------------------------------------------

    def on_peers(self, peers: list[Peer], memory: PeerMemory | None = None) -> None:
        """The flood list (without a multicast group) and a route per remote host's
        slice via its router address; nothing before the host joined."""
        seg = self.segment
        me = self.underlay_address()
        remote = [p for p in peers if p.underlay != me]
        if seg.group is None:
            wanted = {str(p.underlay) for p in remote
                      if p.underlay.version == self.local_address().version}
            l2net.program_flood(self.ipr, self.network, seg.vxlan_name, wanted)
        with self._routes_lock():
            self._program_routes(peers, remote)

    def _routes_lock(self) -> contextlib.AbstractContextManager[None]:
        """One configuration's networks share the underlay routes: which network a
        slice is routed through depends on which ones this host has joined, so one
        network's join and another's peer update must not interleave."""
        if self._state_dir is None:
            return contextlib.nullcontext()
        return network_lock(self._state_dir.parent / self.settings.config.network,
                            ROUTES_LOCK_TIMEOUT)

    def _program_routes(self, peers: list[Peer], remote: list[Peer]) -> None:
        self.converge_underlay(peers)
        mine = {r.slice for r in self.ranges()}
        routes: dict[IPNetwork, IPAddress] = {}
        for peer in remote:
            for rng in self._peer_ranges(self.segment, peer):
                if rng.slice in mine:
                    log.warning("network %s: host %s (%s) has this host's slice %s: "
                                "choose a perHostPrefix that separates them", self.network,
                                peer.name, peer.underlay, rng.slice)
                elif rng.router is not None:
                    routes[rng.slice] = rng.router
        changed = macvlannet.program_routes(self.ipr, self.spec(), routes)
        if changed is not None and any(changed):
            log.info("network %s: %d slice routes (+%d -%d)", self.network, len(routes),
                     *changed)

    def _peer_ranges(self, segment: Segment, peer: Peer) -> list[HostRange]:
        """A peer's slices or blocks of ``segment``: the ones it published (etcd), else
        derived from its underlay address (static peers)."""
        if peer.pod_cidrs:
            return cidr_ranges(segment, peer.pod_cidrs)
        return [host_range(subnet, peer.underlay, segment.slice_prefix[subnet.version],
                           segment.exclude_first, segment.exclude_last)
                for subnet in segment.subnets]

    def _joined(self, segment: Segment) -> bool:
        link = get_link(self.ipr, segment.vxlan_name)
        return link is not None and ownership.owned_by(
            link, mark_name(self.settings.config.network, segment.name))

    def _peers_of(self, segment: Segment, mine: list[Peer] | None) -> list[Peer]:
        if self._static_peers is not None:
            return self._static_peers
        if segment.name == self.segment.name and mine is not None:
            return mine
        if self._state_dir is None:
            return []
        sibling = self._state_dir.parent / mark_name(self.settings.config.network,
                                                     segment.name)
        return peercache.read(sibling) or []

    def converge_underlay(self, peers: list[Peer] | None = None) -> None:
        """Every host a router into every network: while this host has joined any
        network of the configuration, the networks it has not joined are reached
        through the hosts that serve them, one route per remote slice (or block) via
        that host's underlay address (same family only). None joined: none at all."""
        cfg = self.settings.config
        under = self.underlay()
        joined = {s.name for s in cfg.segments if self._joined(s)}
        me = under.address.ip
        wanted: dict[IPNetwork, IPAddress] = {}
        if joined:
            for seg in cfg.segments:
                if seg.name in joined:
                    continue
                for peer in self._peers_of(seg, peers):
                    # Plain routes need an on-link next hop: peers behind an underlay
                    # router are reached only on networks both hosts have joined.
                    if peer.underlay == me or peer.underlay not in under.address.network:
                        continue
                    for rng in self._peer_ranges(seg, peer):
                        if rng.slice.version == peer.underlay.version:
                            wanted[rng.slice] = peer.underlay
        everything = tuple(n for s in cfg.segments for n in s.subnets)
        added, removed = macvlannet.program_underlay_routes(
            self.ipr, cfg.route_protocol, under.index, everything, wanted)
        if added or removed:
            log.info("%s: %d routes into networks this host has not joined (+%d -%d)",
                     cfg.network, len(wanted), added, removed)

    def local_peer(self, name: str) -> Peer | None:
        vxlan = get_link(self.ipr, self.segment.vxlan_name)
        if vxlan is None or not ownership.owned_by(vxlan, self.network):
            return None
        address = self.underlay_address()
        return Peer(name=name, underlay=address, vtep_mac=vtep_mac(self.network, address),
                    pod_cidrs=tuple(str(r.slice) for r in self.ranges()))

    def describe(self) -> dict[str, Any]:
        seg = self.segment
        return {"model": KIND, "network": seg.name, "vni": seg.vni,
                "vxlan": seg.vxlan_name, "macvlan": seg.macvlan_name,
                "subnets": [str(s) for s in seg.subnets]}
