"""Peers written in the network configuration: no server at all.

    "controlPlane": {"type": "static", "peers": [
        {"name": "node-1", "address": "192.168.1.11", "podCIDRs": ["10.244.1.0/24"]},
        {"name": "node-2", "address": "192.168.1.12", "podCIDRs": ["10.244.2.0/24"],
         "vtepMAC": "02:..."}]}

For operators without etcd or Kubernetes (xcluster-cni's users wrote these routes
by hand) and for tests. The same list may go to every host: a host skips the
entry with its own underlay address. ``vtepMAC`` is optional: by default it is
derived from the network name and the peer's address, as every host derives its
own.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from xvmcni.config import fail, get
from xvmcni.controlplane.base import Peer, PeersChanged

KIND = "static"


def _mac(text: str, where: str) -> str:
    parts = text.lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p)
                                  for p in parts):
        raise fail(f"{where}: 'vtepMAC' {text!r} is not a MAC address")
    if int(parts[0], 16) & 1 or text == "00:00:00:00:00:00":
        raise fail(f"{where}: 'vtepMAC' {text!r} is not a unicast MAC address")
    return ":".join(parts)


def parse_peers(section: dict[str, Any], need_cidrs: bool = True) -> list[Peer]:
    """The peers of ``controlPlane``; CniError(7) naming the bad entry. ``need_cidrs``
    False: the model derives each peer's addresses from its underlay address (macvlan),
    so 'podCIDRs' may be left out."""
    raw = get(section, "peers", list, [])
    peers: list[Peer] = []
    names: set[str] = set()
    addresses: set[str] = set()
    for i, item in enumerate(raw):
        where = f"controlPlane.peers[{i}]"
        if not isinstance(item, dict):
            raise fail(f"{where} must be an object with name, address and podCIDRs")
        name = get(item, "name", str, "") or f"peer-{i}"
        address_text = get(item, "address", str)
        if not address_text:
            raise fail(f"{where}: 'address' is required (the peer's underlay address)")
        try:
            address = ipaddress.ip_address(address_text)
        except ValueError as exc:
            raise fail(f"{where}: 'address' {address_text!r} is not an IP address") from exc
        cidrs = item.get("podCIDRs", item.get("podCIDR"))
        if cidrs is None and not need_cidrs:
            cidrs = []
        elif isinstance(cidrs, str):
            cidrs = [cidrs]
        if not isinstance(cidrs, list) or (need_cidrs and not cidrs) \
                or not all(isinstance(c, str) for c in cidrs):
            raise fail(f"{where}: 'podCIDRs' must be a list of CIDRs")
        for text in cidrs:
            try:
                ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise fail(f"{where}: {text!r} is not a network in CIDR notation",
                           str(exc)) from exc
        mac_text = get(item, "vtepMAC", str, "")
        if name in names or str(address) in addresses:
            raise fail(f"{where}: name {name!r} or address {address} appears twice")
        names.add(name)
        addresses.add(str(address))
        peers.append(Peer(name=name, underlay=address,
                          vtep_mac=_mac(mac_text, where) if mac_text else "",
                          pod_cidrs=tuple(str(ipaddress.ip_network(c)) for c in cidrs)))
    return peers


class StaticControlPlane:
    kind = KIND

    def __init__(self, peers: list[Peer]) -> None:
        self._peers = list(peers)

    def publish(self, me: Peer) -> None:
        return None  # every host reads the same list from its own configuration

    def peers(self) -> list[Peer]:
        return list(self._peers)

    def watch(self, on_change: PeersChanged) -> None:
        on_change(self.peers())  # the list changes only with the configuration

    def close(self) -> None:
        return None
