"""The xvm-cni network configuration: the seed's format, validated, with defaults.

Pure parsing: nothing here looks at the host. Whether ``hostInterface`` exists
and has an IPv4 address is checked by the handler, which owns the kernel.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvmcni.cni.errors import INVALID_CONFIG, CniError
from xvmcni.cni.result import Result, Route, check_version
from xvmcni.cni.wire import timeout_problem

DEFAULT_GROUP = ipaddress.IPv4Address("239.1.1.1")   # the original XVM's group
DEFAULT_PORT = 8472                                   # Linux's (and XVM's, Flannel's) VXLAN port
DEFAULT_DATA_DIR = Path("/var/lib/cni/xvm-cni")
DEFAULT_MTU = 1500
VNI_MAX = 16_777_215
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class NetworkConfig:
    cni_version: str
    name: str
    host_interface: str
    vxlan_id: int
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    data_dir: Path = DEFAULT_DATA_DIR
    mtu: int = DEFAULT_MTU
    group: ipaddress.IPv4Address = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    range_start: ipaddress.IPv4Address | None = None
    range_end: ipaddress.IPv4Address | None = None
    per_host_prefix: int | None = None
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)
    ip_masq: bool = False
    log_file: str = ""
    log_level: str = "info"
    ipam: dict[str, Any] | None = None
    bridge: str = ""
    prev_result: Result | None = None
    runtime_config: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """Everything this network keeps on this host lives here."""
        return self.data_dir / self.name

    @property
    def bridge_name(self) -> str:
        return self.bridge or f"xvmbr{self.vxlan_id}"

    @property
    def vxlan_name(self) -> str:
        return f"xvmvx{self.vxlan_id}"


def _fail(msg: str, details: str = "") -> CniError:
    return CniError(INVALID_CONFIG, msg, details)


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true where a number belongs is still wrong.
    if isinstance(value, bool) and kind is not bool:
        raise _fail(f"{key!r} must be {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        got = {str: "a string", float: "a fraction", list: "a list", dict: "an object",
               int: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)
        wanted = "a whole number" if kind is int else _kind_name(kind)
        raise _fail(f"{key!r} must be {wanted}, got {got}: {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "a number", bool: "true or false", dict: "an object",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _ipv4(raw: dict[str, Any], key: str) -> ipaddress.IPv4Address | None:
    text = _get(raw, key, str)
    if text is None:
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise _fail(f"{key!r} is not an IPv4 address: {text!r}") from exc


def _subnet(raw: dict[str, Any]) -> ipaddress.IPv4Network:
    text = _get(raw, "subnet", str)
    if text is None:
        text = _subnet_from_ipam(raw.get("ipam"))
    if text is None:
        raise _fail("'subnet' is required", 'for example "subnet": "10.244.0.0/16"')
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise _fail(f"'subnet' {text!r} is not a network in CIDR notation", str(exc)) from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise _fail(f"'subnet' {text!r} is IPv6; the l2 model carries IPv4 subnets")
    if net.prefixlen > 30:
        raise _fail(f"'subnet' {text!r} is too small: it needs room for a gateway and pods")
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
    for item in _get(raw, "routes", list, []):
        if not isinstance(item, dict) or not isinstance(item.get("dst"), str):
            raise _fail("each entry of 'routes' needs a \"dst\" in CIDR notation",
                        f"got {item!r}")
        try:
            dst = ipaddress.ip_network(item["dst"], strict=False)
            gw = ipaddress.ip_address(item["gw"]) if item.get("gw") else None
        except ValueError as exc:
            raise _fail(f"route {item!r} is not valid", str(exc)) from exc
        routes.append(Route(dst=dst, gw=gw))
    return routes


def parse(raw: dict[str, Any]) -> NetworkConfig:
    """Validate a network configuration (single config or one conflist entry)."""
    cni_version = check_version(_get(raw, "cniVersion", str, "0.1.0"))
    name = _get(raw, "name", str)
    if not name:
        raise _fail("'name' is required")
    if not _NAME_RE.match(name):
        raise _fail(f"'name' {name!r} may hold only letters, digits, '_', '.' and '-'")
    host_interface = _get(raw, "hostInterface", str)
    if not host_interface:
        raise _fail("'hostInterface' is required",
                    "the host interface that carries VXLAN traffic, e.g. \"eth0\"")
    vxlan_id = _get(raw, "vxlanID", int)
    if vxlan_id is None:
        raise _fail("'vxlanID' is required", f"a VXLAN network identifier, 1..{VNI_MAX}")
    if not 1 <= vxlan_id <= VNI_MAX:
        raise _fail(f"'vxlanID' {vxlan_id} is out of range", f"allowed: 1..{VNI_MAX}")

    subnet = _subnet(raw)
    gateway = _ipv4(raw, "gateway") or subnet.network_address + 1
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise _fail(f"'gateway' {gateway} is not a host address inside subnet {subnet}")

    mtu = _get(raw, "mtu", int, DEFAULT_MTU)
    if not 576 <= mtu <= 65535:
        raise _fail(f"'mtu' {mtu} is out of range", "allowed: 576..65535")
    port = _get(raw, "port", int, DEFAULT_PORT)
    if not 1 <= port <= 65535:
        raise _fail(f"'port' {port} is not a UDP port number")
    group = _ipv4(raw, "group") or DEFAULT_GROUP
    if not group.is_multicast:
        raise _fail(f"'group' {group} is not a multicast address")

    range_start = _ipv4(raw, "rangeStart")
    range_end = _ipv4(raw, "rangeEnd")
    for key, addr in (("rangeStart", range_start), ("rangeEnd", range_end)):
        if addr is not None and addr not in subnet:
            raise _fail(f"'{key}' {addr} is outside subnet {subnet}")
    if range_start and range_end and range_start > range_end:
        raise _fail(f"'rangeStart' {range_start} is after 'rangeEnd' {range_end}")

    per_host_prefix = _get(raw, "perHostPrefix", int)
    if per_host_prefix is not None and not subnet.prefixlen <= per_host_prefix <= 30:
        raise _fail(f"'perHostPrefix' {per_host_prefix} must lie between the subnet's "
                    f"prefix /{subnet.prefixlen} and /30")

    log_level = _get(raw, "logLevel", str, "info").lower()
    if log_level not in LOG_LEVELS:
        raise _fail(f"'logLevel' {log_level!r} is not one of " + ", ".join(LOG_LEVELS))

    ipam = _get(raw, "ipam", dict)
    if ipam is not None and not isinstance(ipam.get("type"), str):
        raise _fail("'ipam' needs a \"type\": the IPAM plugin to run, e.g. \"host-local\"")

    bridge = _get(raw, "bridge", str, "")
    if len(bridge) > 15:
        raise _fail(f"'bridge' {bridge!r} is longer than 15 characters")

    # Read by the thin plugin before any parsing; checked here so a mistyped value is an
    # error rather than a silent in-process run.
    _get(raw, "agentSocket", str)
    agent_timeout = raw.get("agentTimeout")
    if agent_timeout is not None and (why := timeout_problem(agent_timeout)):
        # The value is not echoed: a number with thousands of digits is not printable.
        raise _fail(f"'agentTimeout' {why}")

    prev = raw.get("prevResult")
    return NetworkConfig(
        cni_version=cni_version,
        name=name,
        host_interface=host_interface,
        vxlan_id=vxlan_id,
        subnet=subnet,
        gateway=gateway,
        data_dir=Path(_get(raw, "dataDir", str, str(DEFAULT_DATA_DIR))),
        mtu=mtu,
        group=group,
        port=port,
        range_start=range_start,
        range_end=range_end,
        per_host_prefix=per_host_prefix,
        routes=_routes(raw),
        dns=_get(raw, "dns", dict, {}),
        ip_masq=_get(raw, "ipMasq", bool, False),
        log_file=_get(raw, "logFile", str, ""),
        log_level=log_level,
        ipam=ipam,
        bridge=bridge,
        prev_result=Result.from_dict(prev) if prev is not None else None,
        runtime_config=_get(raw, "runtimeConfig", dict, {}),
        raw=raw,
    )
