"""From Kubernetes Node objects to the peers of one network. Pure: unit-tested
without a server.

Per Node:

- pod CIDRs: the ``cidrAnnotation`` when one is configured (xcluster-cni's
  secondary networks: ``cidr.example.com/net3=192.168.55.0/26,fd00:5::1:0/112``),
  else ``spec.podCIDRs`` (``spec.podCIDR`` on old servers);
- addresses, one per family: the ``addressAnnotation`` when configured
  (``node-ip.nordix.org/net3=192.168.2.3,1000::1:c0a8:203``), else what the
  node's agent published for this network, else ``status.addresses``
  InternalIP; a node with an IPv4 address only gets an IPv6 one from
  ``ipv6Prefix`` (seed 002);
- VTEP MAC: what the node's agent published, used only with the underlay address
  it was published with (else the MAC derived from the address, the same rule).

A malformed annotation makes that node's problem list non-empty (logged by the
control plane); the node is left out, the others are not affected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from xvmcni.controlplane.base import Peer
from xvmcni.controlplane.k8sconfig import K8sSettings, ipv6_from_prefix, publish_keys

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NONE = "none"


@dataclass(frozen=True)
class NodeView:
    name: str
    pod_cidrs: tuple[IPNetwork, ...] = ()       # IPv4 first
    addresses: dict[int, IPAddress] | None = None  # per family
    vtep_mac: str = ""
    published: IPAddress | None = None          # the underlay its agent published
    problems: tuple[str, ...] = ()

    def address(self, version: int) -> IPAddress | None:
        return (self.addresses or {}).get(version)


def _annotations(node: dict[str, Any]) -> dict[str, str]:
    meta = node.get("metadata") or {}
    found = meta.get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _cidrs(text: str, where: str, problems: list[str]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=True)
        except ValueError as exc:
            problems.append(f"{where}: {part!r} is not a CIDR ({exc})")
            return ()
        if any(n.version == net.version for n in out):
            problems.append(f"{where}: two IPv{net.version} CIDRs ({text!r})")
            return ()
        out.append(net)
    return tuple(sorted(out, key=lambda n: n.version))


def _addresses(items: list[str], where: str,
               problems: list[str]) -> dict[int, IPAddress]:
    out: dict[int, IPAddress] = {}
    for part in (p.strip() for p in items):
        if not part:
            continue
        try:
            address = ipaddress.ip_address(part)
        except ValueError:
            problems.append(f"{where}: {part!r} is not an IP address")
            return {}
        out.setdefault(address.version, address)
    return out


def pod_cidrs_of(node: dict[str, Any], settings: K8sSettings,
                 problems: list[str]) -> tuple[IPNetwork, ...]:
    if settings.cidr_annotation:
        text = _annotations(node).get(settings.cidr_annotation)
        if text is None:
            return ()  # not on this secondary network (yet)
        return _cidrs(text, f"annotation {settings.cidr_annotation}", problems)
    spec = node.get("spec") or {}
    items = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if not isinstance(items, list):
        problems.append(f"spec.podCIDRs is not a list: {items!r}"[:160])
        return ()
    return _cidrs(",".join(str(i) for i in items), "spec.podCIDRs", problems)


def view(node: dict[str, Any], settings: K8sSettings, network: str) -> NodeView:
    meta = node.get("metadata") or {}
    name = str(meta.get("name", ""))
    problems: list[str] = []
    annotations = _annotations(node)
    cidrs = pod_cidrs_of(node, settings, problems)
    mac_key, underlay_key = publish_keys(network)
    published = _addresses(annotations.get(underlay_key, "").split(","),
                           f"annotation {underlay_key}", problems)
    if settings.address_annotation:
        text = annotations.get(settings.address_annotation)
        addresses = _addresses(text.split(","), f"annotation {settings.address_annotation}",
                               problems) if text is not None else {}
    else:
        addresses = dict(published)
        status = node.get("status") or {}
        internal = [str(a.get("address", "")) for a in status.get("addresses") or []
                    if isinstance(a, dict) and a.get("type") == "InternalIP"]
        for version, address in _addresses(internal, "status.addresses InternalIP",
                                           problems).items():
            addresses.setdefault(version, address)
    if 4 in addresses and 6 not in addresses and settings.ipv6_prefix:
        addresses[6] = ipv6_from_prefix(settings.ipv6_prefix,
                                        addresses[4])  # type: ignore[arg-type]
    mac = annotations.get(mac_key, "").lower()
    if mac and not MAC.match(mac):
        problems.append(f"annotation {mac_key}: {mac!r} is not a MAC address")
        mac = ""
    published_one = next(iter(published.values()), None)
    return NodeView(name, cidrs, addresses, mac, published_one, tuple(problems))


def peers_of(node: NodeView, encap: str, version: int) -> tuple[list[Peer], list[str]]:
    """The peers for ``node``: (peers, why CIDRs were left out). ``version``: the
    family of our underlay (VXLAN carries every pod family over it).

    With ``encap`` none every pod CIDR is routed via the node's address of its own
    family: one Peer per family. Otherwise one Peer with the address of our family
    carries all the node's CIDRs."""
    if node.problems or not node.pod_cidrs:
        return [], []
    if encap == NONE:
        peers, missing = [], []
        for cidr in node.pod_cidrs:
            address = node.address(cidr.version)
            if address is None:
                missing.append(_no_address(node, cidr))
                continue
            peers.append(Peer(node.name, address, _mac(node, address), (str(cidr),)))
        return peers, missing
    address = node.address(version) or next(iter((node.addresses or {}).values()), None)
    if address is None:
        return [], [f"node {node.name} has no address (status.addresses InternalIP or "
                    "annotation)"]
    return [Peer(node.name, address, _mac(node, address),
                 tuple(str(c) for c in node.pod_cidrs))], []


def _mac(node: NodeView, address: IPAddress) -> str:
    # A MAC belongs to the underlay it was published with; for another address the
    # model derives it (the same derivation the node's agent uses).
    return node.vtep_mac if node.published == address else ""


def _no_address(node: NodeView, cidr: IPNetwork) -> str:
    if cidr.version == 6 and node.address(4) is not None:
        return (f"node {node.name} has no IPv6 address for its pod CIDR {cidr} (only IPv4 "
                "InternalIP): set ipv6Prefix / $IPV6_PREFIX (its IPv4 address is "
                "appended), an IPv6 InternalIP, or the address annotation; link-local "
                "addresses from the ARP cache are not used")
    return f"node {node.name} has no IPv{cidr.version} address for its pod CIDR {cidr}"
