"""From a peer list to the kernel state the routed model wants, and the diff
against what the kernel holds. Pure: nothing here touches the kernel, so the
rules are unit-tested on their own.

Per remote host and pod CIDR:

- over VXLAN (Flannel's scheme): a permanent neighbour <CIDR network address> ->
  <peer VTEP MAC> on our VXLAN device, a permanent FDB entry <peer VTEP MAC> ->
  <peer underlay address>, and a route <CIDR> via <CIDR network address> dev
  <VXLAN> onlink, with our gateway as preferred source (a reply to the host comes
  back through the tunnel, so strict reverse-path filtering holds on both ends);
- direct (``encap: none``, or ``auto`` for a peer on our underlay subnet): a route
  <CIDR> via <peer underlay address> on the underlay device.

A peer's MAC is one per host, so one FDB entry serves all its CIDRs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from xvmcni.controlplane.base import Peer
from xvmcni.dataplane.routes import FdbEntry, NeighEntry, RouteEntry

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

VXLAN, NONE, AUTO = "vxlan", "none", "auto"
ENCAPS = (VXLAN, NONE, AUTO)


def derived_mac(*parts: str) -> str:
    """A locally administered unicast MAC from a hash of ``parts``: the same on every
    host, after every restart and reboot."""
    digest = bytearray(hashlib.sha256("\0".join(parts).encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in digest)


def vtep_mac(network: str, underlay: IPAddress) -> str:
    """A host's VTEP MAC on ``network``: derived from the network and the host's
    underlay address, so a peer never holds a stale one after our restart (the bug
    Flannel and bvcni had with random MACs)."""
    return derived_mac("xvm-cni vtep", network, str(underlay))


@dataclass(frozen=True)
class Local:
    """What on_peers needs to know about this host."""

    network: str
    encap: str
    underlay: IPInterface          # our address on hostInterface, with its prefix
    pod_cidrs: tuple[IPNetwork, ...]
    gateways: tuple[IPAddress, ...]  # our gateway per pod CIDR (preferred source)
    underlay_index: int
    vxlan_index: int | None        # None when there is no VXLAN device (encap none)


@dataclass
class Desired:
    routes: dict[IPNetwork, RouteEntry] = field(default_factory=dict)
    neighbours: dict[IPAddress, NeighEntry] = field(default_factory=dict)
    fdb: dict[str, FdbEntry] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)   # why a peer's CIDR was left out


def _direct(local: Local, peer: Peer) -> bool:
    if local.encap == NONE:
        return True
    if local.encap == VXLAN:
        return False
    return peer.underlay in local.underlay.network  # auto: Flannel's DirectRouting


def desired(local: Local, peers: Iterable[Peer]) -> Desired:
    """The routes, neighbours and FDB entries for exactly these peers."""
    want = Desired()
    ours = list(local.pod_cidrs)
    for peer in sorted(peers, key=lambda p: (str(p.underlay), p.name)):
        if peer.underlay == local.underlay.ip:
            continue  # ourselves (a static list shared by every host names us too)
        direct = _direct(local, peer)
        mac = (peer.vtep_mac or vtep_mac(local.network, peer.underlay)).lower()
        for text in peer.pod_cidrs:
            try:
                cidr = ipaddress.ip_network(text, strict=False)
            except ValueError:
                want.skipped.append(f"{peer.name}: {text!r} is not a CIDR")
                continue
            gateway = next((g for g in local.gateways if g.version == cidr.version), None)
            if gateway is None:
                want.skipped.append(f"{peer.name}: {cidr} is IPv{cidr.version}, which this "
                                    "network does not carry")
                continue
            if any(cidr.overlaps(mine) for mine in ours):
                want.skipped.append(f"{peer.name}: {cidr} overlaps this host's pod CIDR")
                continue
            if cidr in want.routes:
                want.skipped.append(f"{peer.name}: {cidr} is claimed by another peer too")
                continue
            # auto: a family the underlay cannot route directly (IPv6 pods over an
            # IPv4 underlay) goes through the tunnel, as to a host on another subnet.
            if direct and local.encap == AUTO and cidr.version != peer.underlay.version:
                direct = local.vxlan_index is None
            if direct:
                if cidr.version != peer.underlay.version:
                    want.skipped.append(f"{peer.name}: {cidr} cannot be routed directly via "
                                        f"an IPv{peer.underlay.version} address")
                    continue
                want.routes[cidr] = RouteEntry(cidr, peer.underlay, local.underlay_index)
                continue
            if local.vxlan_index is None or peer.underlay.version != local.underlay.version:
                want.skipped.append(f"{peer.name}: no VXLAN path to {peer.underlay}")
                continue
            via = cidr.network_address
            want.neighbours[via] = NeighEntry(via, mac)
            want.fdb[mac] = FdbEntry(mac, peer.underlay)
            want.routes[cidr] = RouteEntry(cidr, via, local.vxlan_index, onlink=True,
                                           prefsrc=gateway)
    return want


@dataclass
class Plan:
    """What to change, in the order it must happen: for additions neighbour, FDB,
    route (a route never points at a next hop the kernel cannot resolve yet); for
    removals the reverse."""

    add_neighbours: list[NeighEntry] = field(default_factory=list)
    add_fdb: list[FdbEntry] = field(default_factory=list)
    add_routes: list[RouteEntry] = field(default_factory=list)
    del_routes: list[RouteEntry] = field(default_factory=list)
    del_fdb: list[FdbEntry] = field(default_factory=list)
    del_neighbours: list[NeighEntry] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.add_neighbours or self.add_fdb or self.add_routes
                    or self.del_routes or self.del_fdb or self.del_neighbours)


def plan(want: Desired, routes: Iterable[RouteEntry], neighbours: Iterable[NeighEntry],
         fdb: Iterable[FdbEntry], foreign: Iterable[IPNetwork] = ()) -> Plan:
    """The changes that turn the present (our routes, and the permanent entries on
    our VXLAN device) into ``want``. Entries already right are left alone: re-running
    with the same peers changes nothing (no route flaps on an agent restart).
    ``foreign``: destinations someone else routes; ours would replace theirs, so
    such a CIDR is left out (and reported in ``want.skipped``)."""
    out = Plan()
    for dst in sorted(set(foreign) & set(want.routes), key=str):
        want.skipped.append(f"{dst} is routed by someone else on this host (another "
                            "route protocol): left alone")
        route = want.routes.pop(dst)
        if route.onlink:
            want.neighbours.pop(route.gateway, None)
    # A peer whose every CIDR is out needs no FDB entry either.
    wanted_macs = {n.mac for n in want.neighbours.values()}
    for mac in [m for m in want.fdb if m not in wanted_macs]:
        del want.fdb[mac]
    have_routes = {r.dst: r for r in routes}
    have_neigh = {n.address: n for n in neighbours}
    have_fdb: dict[str, list[FdbEntry]] = {}
    for entry in fdb:
        have_fdb.setdefault(entry.mac, []).append(entry)
    for addr, neigh in want.neighbours.items():
        if have_neigh.get(addr) != neigh:
            out.add_neighbours.append(neigh)
    for mac, entry in want.fdb.items():
        if have_fdb.get(mac) != [entry]:
            out.add_fdb.append(entry)
            # The same MAC towards another destination (a peer that moved): old goes.
            out.del_fdb += [e for e in have_fdb.get(mac, []) if e != entry]
    for dst, route in want.routes.items():
        if have_routes.get(dst) != route:
            out.add_routes.append(route)
    out.del_routes = [r for dst, r in have_routes.items() if dst not in want.routes]
    out.del_fdb += [e for mac, entries in have_fdb.items() if mac not in want.fdb
                    for e in entries]
    out.del_neighbours = [n for a, n in have_neigh.items() if a not in want.neighbours]
    return out


@dataclass(frozen=True)
class Applied:
    """What the routed model last programmed for a full peer set, to diff the next
    one against without reading the kernel back. Valid only while the host side is
    the one it was programmed on (same bridge, same ``Local``: devices, underlay,
    pod CIDRs)."""

    bridge_index: int
    local: Local
    want: Desired                 # after ``plan``: without the foreign destinations
    foreign: frozenset[IPNetwork]  # destinations left to someone else at that time


def plan_change(applied: Applied, want: Desired) -> Plan:
    """The changes from what was applied to ``want`` (which loses the destinations
    that were foreign at the last full apply, as ``plan`` does)."""
    return plan(want, applied.want.routes.values(), applied.want.neighbours.values(),
                applied.want.fdb.values(), applied.foreign)
