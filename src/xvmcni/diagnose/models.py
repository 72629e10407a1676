"""What doctor needs to know per network model, one entry per model in
``INSPECTORS``: device names, the overlay's overhead, the pod prefixes, where
packets from each remote prefix arrive (for rp_filter), and the per-peer diff
between kernel and control plane. A new model adds one class and one entry."""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from xvmcni.controlplane.base import Peer
from xvmcni.dataplane.l2net import VXLAN_OVERHEAD_V4
from xvmcni.dataplane.routednet import VXLAN_OVERHEAD
from xvmcni.diagnose.macvlan import MacvlanInspector
from xvmcni.models import l2, macvlan_config, routed
from xvmcni.models.routed_peers import AUTO, NONE, VXLAN
from xvmcni.networks import Network, routed_settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Inspector(Protocol):
    def host_interface(self, network: Network) -> str:
        """The underlay interface the overlay runs over."""
        ...

    def bridge(self, network: Network) -> str: ...

    def vxlan(self, network: Network) -> str | None:
        """The VXLAN device, None when the network has none (routed, encap none)."""
        ...

    def port(self, network: Network) -> int | None: ...

    def overhead(self, network: Network, underlay_version: int) -> int: ...

    def pod_prefixes(self, network: Network) -> list[IPNetwork]: ...

    def group(self, network: Network) -> ipaddress.IPv4Address | None:
        """The multicast group of flood-and-learn; None when peers are programmed."""
        ...

    def arrivals(self, network: Network, model: Any,
                 peers: list[Peer]) -> list[tuple[IPNetwork, str]]:
        """(source prefix, interface) pairs: packets from that prefix arrive on that
        interface, so a strict rp_filter there needs the route back through it."""
        ...

    def drift(self, network: Network, model: Any, peers: list[Peer]) -> list[str]:
        """How the kernel's per-peer state differs from ``peers``: one sentence per
        missing, extra or stale entry (empty: in line)."""
        ...


def _host_prefix(peer: Peer) -> IPNetwork:
    return ipaddress.ip_network(peer.underlay)


class L2Inspector:
    def host_interface(self, network: Network) -> str:
        return network.l2.host_interface

    def bridge(self, network: Network) -> str:
        return network.l2.bridge_name

    def vxlan(self, network: Network) -> str | None:
        return network.l2.vxlan_name

    def port(self, network: Network) -> int | None:
        return network.l2.port

    def overhead(self, network: Network, underlay_version: int) -> int:
        return VXLAN_OVERHEAD_V4

    def pod_prefixes(self, network: Network) -> list[IPNetwork]:
        return [network.l2.subnet]

    def group(self, network: Network) -> ipaddress.IPv4Address | None:
        return network.l2.group

    def arrivals(self, network: Network, model: Any,
                 peers: list[Peer]) -> list[tuple[IPNetwork, str]]:
        return [(_host_prefix(p), network.l2.host_interface) for p in peers]

    def drift(self, network: Network, model: Any, peers: list[Peer]) -> list[str]:
        assert isinstance(model, l2.L2Model)
        found = model.flood_drift(peers)
        if found is None:
            return []
        missing, extra = found
        by_address = {str(p.underlay): p.name for p in peers}
        return ([f"flood entry to {a} (host {by_address.get(a, '?')}) is missing from "
                 f"{network.l2.vxlan_name}" for a in missing]
                + [f"flood entry to {a} on {network.l2.vxlan_name} names no host of the "
                   "control plane (stale)" for a in extra])


class RoutedInspector:
    def host_interface(self, network: Network) -> str:
        return routed_settings(network).host_interface

    def bridge(self, network: Network) -> str:
        return routed_settings(network).bridge_name

    def vxlan(self, network: Network) -> str | None:
        s = routed_settings(network)
        return s.vxlan_name if s.encap in (VXLAN, AUTO) else None

    def port(self, network: Network) -> int | None:
        return routed_settings(network).port if self.vxlan(network) else None

    def overhead(self, network: Network, underlay_version: int) -> int:
        return VXLAN_OVERHEAD[underlay_version] if self.vxlan(network) else 0

    def pod_prefixes(self, network: Network) -> list[IPNetwork]:
        return list(routed_settings(network).pod_cidrs)

    def group(self, network: Network) -> ipaddress.IPv4Address | None:
        return None

    def arrivals(self, network: Network, model: Any,
                 peers: list[Peer]) -> list[tuple[IPNetwork, str]]:
        s = routed_settings(network)
        assert isinstance(model, routed.RoutedModel)
        local = model.underlay().address
        found: list[tuple[IPNetwork, str]] = []
        for peer in peers:
            if peer.underlay == local.ip:
                continue
            direct = s.encap == NONE or (s.encap == AUTO and peer.underlay in local.network)
            if not direct:
                # The VXLAN packets on the underlay; inside them, answers from the
                # peer's own address (a pod talked to that host) come out of the tunnel.
                found.append((_host_prefix(peer), s.host_interface))
                if peer.underlay.version == 4:
                    found.append((_host_prefix(peer), s.vxlan_name))
            for text in peer.pod_cidrs:
                try:
                    cidr = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    continue
                if cidr.version == 4:  # rp_filter is an IPv4 feature
                    found.append((cidr, s.host_interface if direct else s.vxlan_name))
        return found

    def drift(self, network: Network, model: Any, peers: list[Peer]) -> list[str]:
        assert isinstance(model, routed.RoutedModel)
        plan = model.peer_drift(peers)
        owner = {}
        for peer in peers:
            for text in peer.pod_cidrs:
                owner[text] = peer.name
        found = [f"route to {r.dst} (host {owner.get(str(r.dst), '?')}) via {r.gateway} "
                 "is missing or differs" for r in plan.add_routes]
        found += [f"FDB entry {f.mac} -> {f.dst} is missing or differs"
                  for f in plan.add_fdb]
        found += [f"neighbour {n.address} -> {n.mac} is missing or differs"
                  for n in plan.add_neighbours]
        found += [f"route to {r.dst} via {r.gateway} names no host of the control plane "
                  "(extra)" for r in plan.del_routes]
        found += [f"FDB entry {f.mac} -> {f.dst} names no host of the control "
                  "plane (extra)" for f in plan.del_fdb]
        found += [f"neighbour {n.address} -> {n.mac} names no host of the control plane "
                  "(extra)" for n in plan.del_neighbours]
        return found


INSPECTORS: dict[str, Inspector] = {l2.KIND: L2Inspector(), routed.KIND: RoutedInspector(),
                                    macvlan_config.KIND: MacvlanInspector()}


def inspector(network: Network) -> Inspector | None:
    return INSPECTORS.get(network.config.model)
