"""What doctor knows of model ``macvlan`` (one network per segment of a
configuration): its VXLAN device and host macvlan (the router into the segment),
the overlay's overhead, and the per-peer state: the flood list (without a
multicast group) and one route per remote host's slice (or block) via that host's
router address on the segment's L2. Read-only: nothing here changes the kernel."""

from __future__ import annotations

import ipaddress
from typing import Any

from xvmcni.controlplane.base import Peer
from xvmcni.dataplane import l2net, macvlannet, ownership, routes
from xvmcni.dataplane.netlink import get_link
from xvmcni.ipam.hostslices import HostRange, host_range
from xvmcni.models import macvlan
from xvmcni.networks import Network

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def settings(network: Network) -> macvlan.SegmentSettings:
    s = network.settings
    assert isinstance(s, macvlan.SegmentSettings), "a macvlan network is inspected per segment"
    return s


def peer_ranges(segment: Any, peer: Peer) -> list[HostRange]:
    """A peer's slices or blocks of ``segment`` as the model routes them: the ones it
    published (etcd), else derived from its underlay address (static peers)."""
    if peer.pod_cidrs:
        return macvlan.cidr_ranges(segment, peer.pod_cidrs)
    return [host_range(subnet, peer.underlay, segment.slice_prefix[subnet.version],
                       segment.exclude_first, segment.exclude_last)
            for subnet in segment.subnets]


def wanted_routes(model: macvlan.MacvlanModel,
                  peers: list[Peer]) -> dict[IPNetwork, tuple[IPAddress, str]]:
    """Remote slice -> (that host's router address, host name): what the model's
    ``on_peers`` programs on the host macvlan (a slice equal to one of ours is never
    routed: the model warns about it instead)."""
    me = model.underlay_address()
    mine = {r.slice for r in model.ranges()}
    found: dict[IPNetwork, tuple[IPAddress, str]] = {}
    for peer in peers:
        if peer.underlay == me:
            continue
        for rng in peer_ranges(model.segment, peer):
            if rng.slice not in mine and rng.router is not None:
                found[rng.slice] = (rng.router, peer.name)
    return found


class MacvlanInspector:
    def host_interface(self, network: Network) -> str:
        return settings(network).segment.host_interface

    def bridge(self, network: Network) -> str:
        # No bridge: the host macvlan is where pods' routed traffic enters the host.
        return settings(network).segment.macvlan_name

    def vxlan(self, network: Network) -> str | None:
        return settings(network).segment.vxlan_name

    def port(self, network: Network) -> int | None:
        return settings(network).segment.port

    def overhead(self, network: Network, underlay_version: int) -> int:
        return macvlannet.VXLAN_OVERHEAD[underlay_version]

    def pod_prefixes(self, network: Network) -> list[IPNetwork]:
        return list(settings(network).segment.subnets)

    def group(self, network: Network) -> ipaddress.IPv4Address | None:
        group = settings(network).segment.group
        return group if isinstance(group, ipaddress.IPv4Address) else None

    def arrivals(self, network: Network, model: Any,
                 peers: list[Peer]) -> list[tuple[IPNetwork, str]]:
        """Every remote host is a router into every segment: a remote pod of any of
        the configuration's segments reaches this segment's pods through the host
        macvlan (sent there by its own host's route to our slice), while the route
        back to a pod of another segment leaves through that segment's device; the
        VXLAN packets arrive on the underlay from the peer's own address."""
        assert isinstance(model, macvlan.MacvlanModel)
        seg = settings(network).segment
        me = model.underlay_address()
        mine = {r.slice for r in model.ranges()}
        found: list[tuple[IPNetwork, str]] = []
        for peer in peers:
            if peer.underlay == me:
                continue
            found.append((ipaddress.ip_network(peer.underlay), seg.host_interface))
            for other in model.settings.config.segments:
                found += [(rng.slice, seg.macvlan_name) for rng in peer_ranges(other, peer)
                          if rng.slice not in mine]
        return found

    def drift(self, network: Network, model: Any, peers: list[Peer]) -> list[str]:
        assert isinstance(model, macvlan.MacvlanModel)
        seg = settings(network).segment
        mv = get_link(model.ipr, seg.macvlan_name)
        if mv is None or not ownership.owned_by(mv, model.network):
            return []  # not joined (the objects check names a missing macvlan)
        found: list[str] = []
        if seg.group is None:
            found += self._flood_drift(model, peers)
        want = wanted_routes(model, peers)
        ours, foreign = routes.main_routes(model.ipr, model.settings.config.route_protocol,
                                           {int(mv["index"])})
        have = {r.dst: r.gateway for r in ours}
        for dst, (router, host) in sorted(want.items(), key=lambda i: str(i[0])):
            if dst in foreign:
                found.append(f"route to {dst} (host {host}) is someone else's route, not "
                             f"ours via {router} on {seg.macvlan_name}")
            elif have.get(dst) != router:
                found.append(f"route to {dst} (host {host}) via {router} on "
                             f"{seg.macvlan_name} is missing or differs")
        for dst, gateway in sorted(have.items(), key=lambda i: str(i[0])):
            if dst not in want:
                found.append(f"route to {dst} via {gateway} on {seg.macvlan_name} names no "
                             "host of the control plane (extra)")
        return found

    def _flood_drift(self, model: macvlan.MacvlanModel, peers: list[Peer]) -> list[str]:
        seg = model.segment
        vxlan = get_link(model.ipr, seg.vxlan_name)
        if vxlan is None or not ownership.owned_by(vxlan, model.network):
            return []
        me, version = model.underlay_address(), model.local_address().version
        by_address = {str(p.underlay): p.name for p in peers}
        wanted = {str(p.underlay) for p in peers
                  if p.underlay != me and p.underlay.version == version}
        have = l2net.flood_list(model.ipr, int(vxlan["index"]))
        return ([f"flood entry to {a} (host {by_address.get(a, '?')}) is missing from "
                 f"{seg.vxlan_name}" for a in sorted(wanted - have)]
                + [f"flood entry to {a} on {seg.vxlan_name} names no host of the control "
                   "plane (stale)" for a in sorted(have - wanted)])
