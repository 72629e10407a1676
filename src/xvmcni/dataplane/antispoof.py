"""Anti-spoofing: a pod may only send with its own MAC and its own addresses.

One bridge-family nftables table per network (the caller names it). Frames
entering the bridge from a *pod port* (the host end of a pod's veth) are checked;
frames from any other port (the VXLAN port: remote pods are checked on their own
host) and from the host itself are not. The rule set is fixed; pods live in four
sets, so the number of rules never grows with the number of pods:

- ``pod_ports``  (ifname): the ports that are pods. Only these are checked.
- ``pod_macs``   (ifname . ether_addr): the MAC each pod port may send from.
- ``pod_ipv4``   (ifname . ether_addr . ipv4_addr): its IPv4 addresses.
- ``pod_ipv6``   (ifname . ether_addr . ipv6_addr): its IPv6 addresses.

What a pod port may send (everything else is dropped and counted):

- any frame: source MAC in ``pod_macs`` for that port, never the gateway's MAC;
- ARP (Ethernet/IPv4 only): sender MAC . sender IP in ``pod_ipv4`` for that port,
  or sender IP 0.0.0.0 (an RFC 5227 probe) from its own MAC; never the gateway IP;
- IPv4: source in ``pod_ipv4`` for that port and MAC, or the DHCP client's
  0.0.0.0:68 -> 255.255.255.255:67 (delegated IPAM runs before the pod has an
  address; its MAC must already be admitted);
- IPv6: source in ``pod_ipv6``, or ``::`` for duplicate-address detection, router
  solicitation and MLD reports; never a router advertisement or redirect;
- no other EtherType (VLAN tags included: they would hide the inner header).

Cost: a frame from another port leaves after one set lookup; a pod's ordinary IPv4
frame is accepted after two (``pod_ports``, then ``pod_ipv4`` whose key holds the
MAC) and two compares (the gateway guards). Only ARP, IPv6, DHCP and what is
about to be dropped take the full path (bench/antispoof_cost.py measures it).

A port is *registered* before it is *admitted* when the model adds it to
``pod_ports`` with no MAC (``admit_batch(..., mac="")``): from then on every frame
from it is dropped, so the window between creating a veth and learning its MAC or
address is closed rather than open. Rules match names, so elements may exist
before the device does.

Limit (nftables 1.0.6, Debian 12): ``icmpv6 taddr`` cannot be named, so the target
of a neighbour advertisement is not checked, only its source address. Linux sends
NAs from the target address itself; an NA claiming another target from a pod's own
source passes. IPv4 (the only family the networks carry today) is fully covered.

Drops go to named counters (``COUNTERS``) that survive a refresh, so the doctor
command and an operator (``nft list counters``) can read them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xvmcni.dataplane import nft
from xvmcni.dataplane.errors import DataplaneError

FAMILY = "bridge"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The unspecified source of a DHCP client or an ARP probe (a constant, not a bind).
UNSPECIFIED_V4 = str(ipaddress.IPv4Address(0))
AddressLike = str | IPAddress | ipaddress.IPv4Interface | ipaddress.IPv6Interface

PORTS = "pod_ports"
MACS = "pod_macs"
IPV4 = "pod_ipv4"
IPV6 = "pod_ipv6"
_SET_TYPES: dict[str, str | list[str]] = {
    PORTS: "ifname",
    MACS: ["ifname", "ether_addr"],
    IPV4: ["ifname", "ether_addr", "ipv4_addr"],
    IPV6: ["ifname", "ether_addr", "ipv6_addr"],
}

ENTRY = "prerouting"
FRAME, ARP, FROM_V4, FROM_V6 = "pod_frame", "pod_arp", "pod_ipv4", "pod_ipv6"
# Before the gateway-isolation table (priority 0): a forged frame is counted here.
PRIORITY = -200

# Named counters, one per reason a frame from a pod port was dropped.
GATEWAY = "drop_gateway"  # claimed the anycast gateway's MAC or address
MAC = "drop_mac"  # source MAC not the port's own (includes a changed MAC)
ARP_DROP = "drop_arp"  # ARP with another sender IP/MAC, or not Ethernet/IPv4 ARP
IPV4_DROP = "drop_ipv4"  # IPv4 from another source address
IPV6_DROP = "drop_ipv6"  # IPv6 from another source address
ND_DROP = "drop_nd"  # router advertisement or redirect from a pod
OTHER = "drop_other"  # any other EtherType (VLAN-tagged, PPPoE, ...)
COUNTERS = (GATEWAY, MAC, ARP_DROP, IPV4_DROP, IPV6_DROP, ND_DROP, OTHER)

IFNAMSIZ = 16
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# -- small JSON builders ---------------------------------------------------------------

def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field_: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field_}}


def _concat(*parts: Any) -> dict[str, Any]:
    return {"concat": list(parts)}


def _anon(values: Sequence[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": list(values)}


def _count_drop(counter: str) -> list[dict[str, Any]]:
    return [{"counter": counter}, {"drop": None}]


# -- validation ------------------------------------------------------------------------

def normalize_mac(mac: str) -> str:
    """Lower-case colon form of a unicast, non-zero MAC; ValueError otherwise."""
    text = mac.strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac!r}")
    if int(text[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast MAC, a pod cannot send from it")
    if text == "00:00:00:00:00:00":
        raise ValueError("the all-zero MAC cannot be a pod's")
    return text


def _check_ifname(name: str) -> str:
    # As the kernel's dev_valid_name: 1-15 bytes, no '/', ':' or whitespace.
    if (not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..")
            or any(c in "/:" or c.isspace() for c in name)):
        raise ValueError(f"not an interface name: {name!r}")
    return name


def _address(value: AddressLike) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return value.ip
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    text = value.split("/", 1)[0]
    return ipaddress.ip_address(text)



def eui64_link_local(mac: str) -> ipaddress.IPv6Address:
    """The fe80::/64 address Linux derives from ``mac`` (addr_gen_mode eui64, the default)."""
    octets = bytearray(bytes.fromhex(normalize_mac(mac).replace(":", "")))
    octets[0] ^= 0x02
    iid = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid)


# -- batches ---------------------------------------------------------------------------

def table_batch(table: str, gateway_mac: str,
                gateway_ips: Iterable[AddressLike] = ()) -> list[dict[str, Any]]:
    """Create or refresh the network's anti-spoofing table (idempotent).

    Sets and counters are added, never flushed: a refresh (the reconcile loop) keeps
    every admitted pod and every drop count. The chains are flushed and rebuilt in
    the same batch, which the kernel applies as one transaction, so no frame ever
    sees a half-built or empty chain. ``gateway_mac``/``gateway_ips`` are refused as
    a pod's source even if a caller admitted them by mistake.
    """
    gw_mac = normalize_mac(gateway_mac)
    gw = [_address(a) for a in gateway_ips]
    gw4 = [str(a) for a in gw if a.version == 4]
    gw6 = [str(a) for a in gw if a.version == 6]
    tbl = {"family": FAMILY, "name": table}
    batch: list[dict[str, Any]] = [{"add": {"table": tbl}}]
    for name, type_ in _SET_TYPES.items():
        batch.append({"add": {"set": {"family": FAMILY, "table": table, "name": name,
                                      "type": type_}}})
    for counter in COUNTERS:
        batch.append({"add": {"counter": {"family": FAMILY, "table": table, "name": counter}}})
    base = {"type": "filter", "hook": "prerouting", "prio": PRIORITY, "policy": "accept"}
    for chain in (ENTRY, FRAME, ARP, FROM_V4, FROM_V6):
        spec: dict[str, Any] = {"family": FAMILY, "table": table, "name": chain}
        if chain == ENTRY:
            spec.update(base)
        batch.append({"add": {"chain": spec}})
        batch.append({"flush": {"chain": {"family": FAMILY, "table": table, "name": chain}}})

    iif, ether_src = _meta("iifname"), _payload("ether", "saddr")
    ip_src = _payload("ip", "saddr")
    rules: list[tuple[str, list[dict[str, Any]]]] = [
        # Frames from any other port (the VXLAN port: remote pods are checked on their
        # own host; another network's pods) leave after one lookup.
        (ENTRY, [_match(iif, "@" + PORTS, "!="), {"accept": None}]),
        # The gateway guards: a compare that fails at once for any other source.
        (ENTRY, [_match(ether_src, gw_mac), *_count_drop(GATEWAY)]),
    ]
    if gw4:
        rules.append((ENTRY, [_match(ip_src, _anon(gw4)), *_count_drop(GATEWAY)]))
    rules += [
        # Fast path: IPv4 from the pod's own MAC and address, one lookup (the MAC is
        # part of the key).
        (ENTRY, [_match(_concat(iif, ether_src, ip_src), "@" + IPV4), {"accept": None}]),
        # Everything else from a pod port gets the full check.
        (ENTRY, [{"goto": {"target": FRAME}}]),
        (FRAME, [_match(_concat(iif, ether_src), "@" + MACS, "!="), *_count_drop(MAC)]),
        (FRAME, [{"vmap": {"key": _payload("ether", "type"),
                           "data": {"set": [["arp", {"goto": {"target": ARP}}],
                                            ["ip", {"goto": {"target": FROM_V4}}],
                                            ["ip6", {"goto": {"target": FROM_V6}}]]}}}]),
        (FRAME, _count_drop(OTHER)),
    ]
    # ARP: fixed offsets below assume Ethernet/IPv4 ARP; anything else is refused.
    for field_, value in (("htype", 1), ("ptype", "ip"), ("hlen", 6), ("plen", 4)):
        rules.append((ARP, [_match(_payload("arp", field_), value, "!="), *_count_drop(ARP_DROP)]))
    arp_sha, arp_spa = _payload("arp", "saddr ether"), _payload("arp", "saddr ip")
    if gw4:
        rules.append((ARP, [_match(arp_spa, _anon(gw4)), *_count_drop(GATEWAY)]))
    rules += [
        (ARP, [_match(_concat(iif, arp_sha, arp_spa), "@" + IPV4), {"accept": None}]),
        # RFC 5227 probe (a DHCP client checking its lease): claims no address.
        (ARP, [_match(arp_spa, UNSPECIFIED_V4), _match(_concat(iif, arp_sha), "@" + MACS),
               {"accept": None}]),
        (ARP, _count_drop(ARP_DROP)),
    ]
    rules += [
        # Its own address was accepted in ENTRY already. What else IPv4 may use: the
        # DHCP client before it has a lease (the MAC was checked in FRAME).
        (FROM_V4, [_match(ip_src, UNSPECIFIED_V4),
                   _match(_payload("ip", "daddr"), "255.255.255.255"),
                   _match(_payload("udp", "sport"), 68), _match(_payload("udp", "dport"), 67),
                   {"accept": None}]),
        (FROM_V4, _count_drop(IPV4_DROP)),
    ]
    ip6_src, icmp6_type = _payload("ip6", "saddr"), _payload("icmpv6", "type")
    rules.append((FROM_V6, [_match(icmp6_type, {"set": ["nd-router-advert", "nd-redirect"]}),
                            *_count_drop(ND_DROP)]))
    if gw6:
        rules.append((FROM_V6, [_match(ip6_src, _anon(gw6)), *_count_drop(GATEWAY)]))
    rules += [
        (FROM_V6, [_match(_concat(iif, ether_src, ip6_src), "@" + IPV6), {"accept": None}]),
        (FROM_V6, [_match(ip6_src, "::"),
                   _match(icmp6_type, {"set": ["nd-neighbor-solicit", "nd-router-solicit",
                                               "mld2-listener-report"]}),
                   {"accept": None}]),
        (FROM_V6, _count_drop(IPV6_DROP)),
    ]
    for chain, expr in rules:
        batch.append({"add": {"rule": {"family": FAMILY, "table": table, "chain": chain,
                                       "expr": expr}}})
    return batch


def _elements(host_ifname: str, mac: str, addresses: Iterable[AddressLike],
              link_local: bool) -> dict[str, list[Any]]:
    """Set name -> elements for one pod port."""
    port = _check_ifname(host_ifname)
    found: dict[str, list[Any]] = {PORTS: [port], MACS: [], IPV4: [], IPV6: []}
    addrs = [_address(a) for a in addresses]
    if not mac:
        if addrs:
            raise ValueError("addresses need the MAC they are sent from")
        return found
    mac = normalize_mac(mac)
    found[MACS].append(_concat(port, mac))
    if link_local:
        addrs.append(eui64_link_local(mac))
    for addr in dict.fromkeys(addrs):  # ordered, without duplicates
        found[IPV4 if addr.version == 4 else IPV6].append(_concat(port, mac, str(addr)))
    return found


def _element_cmd(verb: str, table: str, name: str, elems: list[Any]) -> dict[str, Any]:
    return {verb: {"element": {"family": FAMILY, "table": table, "name": name, "elem": elems}}}


def _add_then_delete(table: str, found: dict[str, list[Any]]) -> list[dict[str, Any]]:
    # Addresses before the MAC before the port: the reverse of admission.
    batch: list[dict[str, Any]] = []
    for name in (IPV4, IPV6, MACS, PORTS):
        if found[name]:
            batch.append(_element_cmd("add", table, name, found[name]))
            batch.append(_element_cmd("delete", table, name, found[name]))
    return batch


def admit_batch(table: str, host_ifname: str, mac: str, addresses: Iterable[AddressLike] = (),
                link_local: bool = True) -> list[dict[str, Any]]:
    """Let the pod behind ``host_ifname`` send from ``mac`` and ``addresses``.

    ``mac=""`` registers the port with nothing admitted: every frame from it is
    dropped until a later admit (create the veth after this, admit its MAC before
    delegated IPAM/DHCP, its addresses once known). ``link_local`` also admits the
    EUI-64 fe80:: address Linux derives from the MAC. Adding an element that exists
    is a no-op, so a repeated ADD or a reconcile may re-admit freely.
    """
    return [_element_cmd("add", table, name, elems)
            for name, elems in _elements(host_ifname, mac, addresses, link_local).items()
            if elems]


def evict_batch(table: str, host_ifname: str, mac: str, addresses: Iterable[AddressLike] = (),
                link_local: bool = True, keep_port: bool = False) -> list[dict[str, Any]]:
    """Remove what ``admit_batch`` added (the port too, unless ``keep_port``).

    nft fails a whole batch on deleting an absent element (ENOENT), so each element
    is added first, then deleted: the pair succeeds whether or not it was present.
    With ``keep_port`` the port stays registered and, if its MAC was evicted, drops
    everything (e.g. while a pod's address changes).
    """
    found = _elements(host_ifname, mac, addresses, link_local)
    if keep_port:
        found[PORTS] = []
    return _add_then_delete(table, found)


def evict_recorded_batch(table: str, recorded: Members, host_ifname: str,
                         keep_port: bool = False) -> list[dict[str, Any]]:
    """Remove every element the table holds for ``host_ifname`` (reconcile: a port whose
    veth is gone, or whose recorded MAC/addresses the model no longer knows)."""
    port = _check_ifname(host_ifname)
    mine = recorded.port(port)
    found: dict[str, list[Any]] = {
        IPV4: [_concat(port, m, str(a)) for m, a in sorted(mine.addresses, key=str)
               if a.version == 4],
        IPV6: [_concat(port, m, str(a)) for m, a in sorted(mine.addresses, key=str)
               if a.version == 6],
        MACS: [_concat(port, m) for m in sorted(mine.macs)],
        PORTS: [] if keep_port else [port],
    }
    return _add_then_delete(table, found)


def delete_table_batch(table: str) -> list[dict[str, Any]]:
    """Remove the table, present or not ("add" first makes the delete always succeed)."""
    tbl = {"family": FAMILY, "name": table}
    return [{"add": {"table": tbl}}, {"delete": {"table": tbl}}]


# -- reading back ----------------------------------------------------------------------

@dataclass(frozen=True)
class PortMembers:
    """What one pod port may send from."""

    macs: frozenset[str] = frozenset()
    addresses: frozenset[tuple[str, IPAddress]] = frozenset()  # (mac, address)


@dataclass(frozen=True)
class Members:
    """The membership sets of one table, as the kernel holds them."""

    ports: frozenset[str] = frozenset()
    macs: frozenset[tuple[str, str]] = frozenset()  # (port, mac)
    addresses: frozenset[tuple[str, str, IPAddress]] = frozenset()  # (port, mac, address)
    sets_found: frozenset[str] = field(default_factory=frozenset)

    def port(self, host_ifname: str) -> PortMembers:
        return PortMembers(
            macs=frozenset(m for p, m in self.macs if p == host_ifname),
            addresses=frozenset((m, a) for p, m, a in self.addresses if p == host_ifname))

    @property
    def complete(self) -> bool:
        """All four sets exist (a table refreshed by ``table_batch``)."""
        return self.sets_found == frozenset(_SET_TYPES)


def _elem_values(elem: Any) -> list[str]:
    # Elements come as plain values, {"concat": [...]}, or {"elem": {"val": ...}}
    # when they carry a counter/timeout/comment.
    if isinstance(elem, dict) and "elem" in elem:
        return _elem_values(elem["elem"].get("val"))
    if isinstance(elem, dict) and "concat" in elem:
        return [str(v) for v in elem["concat"]]
    return [str(elem)]


def parse_members(listing: Mapping[str, Any]) -> Members:
    """Members from the JSON of ``nft -j list table bridge <table>`` (or ``list set``)."""
    ports: set[str] = set()
    macs: set[tuple[str, str]] = set()
    addresses: set[tuple[str, str, IPAddress]] = set()
    found: set[str] = set()
    for item in listing.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not isinstance(s, dict) or s.get("name") not in _SET_TYPES:
            continue
        found.add(s["name"])
        for elem in s.get("elem", []):
            values = _elem_values(elem)
            if s["name"] == PORTS and len(values) == 1:
                ports.add(values[0])
            elif s["name"] == MACS and len(values) == 2:
                macs.add((values[0], values[1]))
            elif s["name"] in (IPV4, IPV6) and len(values) == 3:
                addresses.add((values[0], values[1], ipaddress.ip_address(values[2])))
    return Members(frozenset(ports), frozenset(macs), frozenset(addresses), frozenset(found))


def parse_counters(listing: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Counter name -> (packets, bytes) from ``nft -j list table`` JSON (our counters only)."""
    found: dict[str, tuple[int, int]] = {}
    for item in listing.get("nftables", []):
        c = item.get("counter") if isinstance(item, dict) else None
        if isinstance(c, dict) and c.get("name") in COUNTERS:
            found[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return found


def list_table(table: str) -> dict[str, Any] | None:
    """``list table bridge <table>`` (JSON) in the current netns; None if it is absent."""
    try:
        out = nft.run(f"list table {FAMILY} {table}")
    except DataplaneError as exc:
        if "No such file or directory" in exc.details:
            return None
        raise
    data = json.loads(out) if out.strip() else {"nftables": []}
    return data if isinstance(data, dict) else None


def members(table: str) -> Members | None:
    """The table's membership sets (for CHECK, reconcile and doctor); None if no table."""
    listing = list_table(table)
    return None if listing is None else parse_members(listing)


def drop_counters(table: str) -> dict[str, tuple[int, int]] | None:
    """Drop counters by reason, (packets, bytes); None if the table is absent."""
    listing = list_table(table)
    return None if listing is None else parse_counters(listing)
