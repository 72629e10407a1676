"""The configuration of model ``macvlan`` (seed 004): several L2 domains in one
network configuration, each a VXLAN spanning the hosts, every host a router into it.

Both spellings are accepted, field by field (the README maps them):

    seed 004 (vxlan + macvlan router)      xvm-cni
    vxlans[]                               networks[]
      id                                     vxlanID
      name                                   name
      cidr (one)                             subnet (one, or a list: one per family)
      excludeFirst / excludeLast             excludeFirst / excludeLast
      mtu                                    mtu
      options.group / port / ttl / tos       group / port / ttl / tos
      options.learning                       learning
      options.srcaddr                        localAddress
      options.vtepdev                        hostInterface (also top level)
    defaultNetwork                         defaultNetwork
    k8sNetworkFromNamespace                networkFromNamespace
    k8sReadAnnotations, k8sConfigPath      same (annotations come from the agent's
                                           watch cache, not from a client per ADD)

Pure parsing: nothing here looks at the host.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from xvmcni.cni.names import interface_name_problem, shown
from xvmcni.config import fail, get

KIND = "macvlan"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

VNI_MAX = 16_777_215
DEFAULT_PORT = 8472
DEFAULT_GROUP = ipaddress.IPv4Address("239.1.1.1")
DEFAULT_BYPASS_TABLE = 192        # the seed's table
DEFAULT_BYPASS_PRIORITY = 1000    # before "main" (32766)
DEFAULT_ROUTE_PROTOCOL = 204      # routed uses 202
PROTOCOL_MIN, PROTOCOL_MAX = 5, 255
# A segment name becomes part of the state directory and of the ownership mark.
SEGMENT_NAME_MAX = 32
_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# The seed's per-pod keys under args.annotations.
ANNOTATION_NETWORK = "vxlan-cni.phdata.io/NetworkName"
ANNOTATION_ADDRESS = "vxlan-cni.phdata.io/RequestedAddress"
IPV4_SLICE_MAX = 28
IPV6_SLICE_DEFAULT_BITS = 16      # a /64 is cut into /80 slices


@dataclass(frozen=True)
class Segment:
    """One L2 domain: a VXLAN, its subnet(s), the VXLAN device's knobs."""

    name: str
    vni: int
    subnets: tuple[IPNetwork, ...]            # at most one per family, IPv4 first
    host_interface: str
    exclude_first: int = 0
    exclude_last: int = 0
    mtu: int = 0                              # 0: the underlay's MTU minus VXLAN overhead
    group: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int = DEFAULT_PORT
    ttl: int = 0
    tos: int = 0
    learning: bool = True
    local_address: IPAddress | None = None
    isolated: bool = False
    slice_prefix: dict[int, int] = field(default_factory=dict)
    ipam: dict[str, Any] | None = None

    def subnet(self, version: int) -> IPNetwork | None:
        return next((s for s in self.subnets if s.version == version), None)

    @property
    def vxlan_name(self) -> str:
        return f"xvmmx{self.vni}"

    @property
    def macvlan_name(self) -> str:
        return f"xvmmh{self.vni}"


@dataclass(frozen=True)
class MacvlanSettings:
    network: str
    segments: tuple[Segment, ...]
    default_network: str = ""
    from_namespace: bool = False
    read_annotations: bool = False
    k8s_config_path: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    bypass_table: int = DEFAULT_BYPASS_TABLE
    bypass_priority: int = DEFAULT_BYPASS_PRIORITY
    route_protocol: int = DEFAULT_ROUTE_PROTOCOL

    def segment(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)


def _either(item: dict[str, Any], where: str, seed: str, ours: str,
            kind: type | tuple[type, ...], default: Any = None) -> Any:
    """The value under the seed's key or ours; both present must agree."""
    a, b = get(item, seed, kind), get(item, ours, kind)
    if a is not None and b is not None and a != b:
        raise fail(f"{where}: {seed!r} and {ours!r} name the same field with different "
                   f"values ({shown(a)} vs {shown(b)})", "write one of them")
    value = a if a is not None else b
    return default if value is None else value


def _int(value: int, where: str, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise fail(f"{where} {shown(value)} is out of range", f"allowed: {lo}..{hi}")
    return value


def _subnets(value: Any, where: str) -> tuple[IPNetwork, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise fail(f"{where}: 'cidr' (or 'subnet') is required: a CIDR, or a list of one "
                   "per address family", f"got {shown(value)}")
    out: list[IPNetwork] = []
    for text in items:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise fail(f"{where}: {shown(text)} is not a network in CIDR notation",
                       str(exc)) from exc
        if any(n.version == net.version for n in out):
            raise fail(f"{where}: two IPv{net.version} subnets", "one per address family")
        if net.version == 4 and net.prefixlen > 28:
            raise fail(f"{where}: subnet {net} is too small",
                       "every host takes a slice of it for its router and pods")
        if net.version == 6 and not 48 <= net.prefixlen <= 112:
            raise fail(f"{where}: IPv6 subnet {net} must be between a /48 and a /112")
        out.append(net)
    return tuple(sorted(out, key=lambda n: n.version))


def _address(text: str, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise fail(f"{where}: {shown(text)} is not an IP address") from exc


def _slice_prefixes(item: dict[str, Any], where: str,
                    subnets: tuple[IPNetwork, ...]) -> dict[int, int]:
    out: dict[int, int] = {}
    for net in subnets:
        key = "perHostPrefix" if net.version == 4 else "perHostPrefixIPv6"
        default = (max(net.prefixlen, min(net.prefixlen + 8, IPV4_SLICE_MAX))
                   if net.version == 4
                   else min(net.prefixlen + IPV6_SLICE_DEFAULT_BITS, 120))
        prefix = get(item, key, int, default)
        limit = 30 if net.version == 4 else 126
        if not net.prefixlen <= prefix <= limit:
            raise fail(f"{where}: {key!r} {shown(prefix)} must lie between /{net.prefixlen} "
                       f"and /{limit}")
        out[net.version] = prefix
    return out


def parse_segment(item: Any, index: int, top_interface: str) -> Segment:
    where = f"vxlans[{index}]"
    if not isinstance(item, dict):
        raise fail(f"{where} must be an object with id, name and cidr")
    options = get(item, "options", dict, {})
    merged = {**options, **{k: v for k, v in item.items() if k != "options"}}
    name = get(item, "name", str, "")
    if not name or not _SEGMENT_RE.fullmatch(name) or len(name) > SEGMENT_NAME_MAX:
        raise fail(f"{where}: 'name' {shown(name)} must be 1-{SEGMENT_NAME_MAX} letters, "
                   "digits, '_', '.' or '-', beginning with a letter or digit")
    where = f"vxlans[{index}] ({name})"
    vni = _either(item, where, "id", "vxlanID", int)
    if vni is None:
        raise fail(f"{where}: 'id' (or 'vxlanID') is required", f"a VNI, 1..{VNI_MAX}")
    _int(vni, f"{where}: 'id'", 1, VNI_MAX)
    subnets = _subnets(item.get("cidr", item.get("subnet")), where)
    host_interface = _either(merged, where, "vtepdev", "hostInterface", str, top_interface)
    if not host_interface:
        raise fail(f"{where}: no underlay interface",
                   "set options.vtepdev (or hostInterface, per network or at the top)")
    why = interface_name_problem(host_interface)
    if why:
        raise fail(f"{where}: interface {shown(host_interface)} is not valid: {why}")
    excl_first = _int(get(item, "excludeFirst", int, 0), f"{where}: 'excludeFirst'", 0, 1 << 20)
    excl_last = _int(get(item, "excludeLast", int, 0), f"{where}: 'excludeLast'", 0, 1 << 20)
    mtu = get(item, "mtu", int, 0)
    if mtu:
        _int(mtu, f"{where}: 'mtu'", 576, 65535)
    group_text = get(merged, "group", str)
    group = _address(group_text, f"{where}: 'group'") if group_text else None
    if group is not None and not group.is_multicast:
        raise fail(f"{where}: 'group' {group} is not a multicast address")
    local_text = _either(merged, where, "srcaddr", "localAddress", str)
    learning = get(merged, "learning", bool, True)
    return Segment(
        name=name, vni=vni, subnets=subnets, host_interface=host_interface,
        exclude_first=excl_first, exclude_last=excl_last, mtu=mtu, group=group,
        port=_int(get(merged, "port", int, DEFAULT_PORT), f"{where}: 'port'", 1, 65535),
        ttl=_int(get(merged, "ttl", int, 0), f"{where}: 'ttl'", 0, 255),
        tos=_int(get(merged, "tos", int, 0), f"{where}: 'tos'", 0, 255),
        learning=bool(learning),
        local_address=_address(local_text, f"{where}: 'srcaddr'") if local_text else None,
        isolated=bool(get(item, "isolated", bool, False)),
        slice_prefix=_slice_prefixes(item, where, subnets),
        ipam=get(item, "ipam", dict))


def _annotations(raw: dict[str, Any]) -> dict[str, str]:
    args = get(raw, "args", dict, {})
    found = get(args, "annotations", dict, {})
    for key, value in found.items():
        if not isinstance(value, str):
            raise fail(f"args.annotations[{shown(key)}] must be a string, got {shown(value)}")
    return dict(found)


def parse_settings(raw: dict[str, Any], network: str) -> MacvlanSettings:
    top_interface = get(raw, "hostInterface", str, "")
    key = "vxlans" if raw.get("vxlans") is not None else "networks"
    if raw.get("vxlans") is not None and raw.get("networks") is not None:
        raise fail("'vxlans' and 'networks' are the same list", "write one of them")
    items = get(raw, key, list)
    if not items:
        raise fail("'vxlans' (or 'networks') is required: the L2 domains, each "
                   '{"id": <VNI>, "name": ..., "cidr": ...}')
    segments = [parse_segment(item, i, top_interface) for i, item in enumerate(items)]
    _no_overlap(segments)
    default = get(raw, "defaultNetwork", str, "")
    if default and not any(s.name == default for s in segments):
        raise fail(f"'defaultNetwork' {shown(default)} is not one of the networks",
                   "known: " + ", ".join(s.name for s in segments))
    from_ns = _either(raw, "config", "k8sNetworkFromNamespace", "networkFromNamespace",
                      bool, False)
    k8s_path = get(raw, "k8sConfigPath", str, "")
    table = _int(get(raw, "bypassTable", int, DEFAULT_BYPASS_TABLE), "'bypassTable'",
                 1, 0xFFFFFFFF - 1)
    if table in (253, 254, 255):
        raise fail(f"'bypassTable' {table} is one of the kernel's tables (default, main, "
                   "local)")
    return MacvlanSettings(
        network=network, segments=tuple(segments), default_network=default,
        from_namespace=bool(from_ns),
        read_annotations=bool(get(raw, "k8sReadAnnotations", bool, False)),
        k8s_config_path=k8s_path, annotations=_annotations(raw), bypass_table=table,
        bypass_priority=_int(get(raw, "bypassPriority", int, DEFAULT_BYPASS_PRIORITY),
                             "'bypassPriority'", 1, 32765),
        route_protocol=_int(get(raw, "routeProtocol", int, DEFAULT_ROUTE_PROTOCOL),
                            "'routeProtocol'", PROTOCOL_MIN, PROTOCOL_MAX))


def _no_overlap(segments: list[Segment]) -> None:
    """Names, VNIs and subnets identify a network: two of one would mix them."""
    for i, a in enumerate(segments):
        for b in segments[:i]:
            if a.name == b.name:
                raise fail(f"two networks are named {a.name!r}")
            if a.vni == b.vni:
                raise fail(f"networks {b.name!r} and {a.name!r} share VXLAN id {a.vni}")
            for x in a.subnets:
                for y in b.subnets:
                    if x.version == y.version and x.overlaps(y):
                        raise fail(f"networks {b.name!r} and {a.name!r} overlap: {y} and {x}",
                                   "traffic between them is routed: give each its own subnet")
