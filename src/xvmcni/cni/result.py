"""The CNI result in one internal shape, converted to and from every spec version.

0.1.0/0.2.0 carry ``ip4``/``ip6`` objects (first address of each family only);
0.3.x/0.4.0 carry ``interfaces`` and ``ips[]`` with a ``version`` field; 1.x drops
``version``. Stdlib only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from xvmcni.cni.wire import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS  # they live in wire
from xvmcni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, CniError

LEGACY_VERSIONS = ("0.1.0", "0.2.0")
VERSIONED_IPS = ("0.3.0", "0.3.1", "0.4.0")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_version(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported",
            "supported: " + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, version: str) -> dict[str, Any]:
        """Render for a caller speaking ``version``."""
        if version in LEGACY_VERSIONS:
            return self._legacy_dict(version)
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_interface_dict(i, version) for i in self.interfaces]
        ips = []
        for ip in self.ips:
            entry: dict[str, Any] = {}
            if version in VERSIONED_IPS:
                entry["version"] = str(ip.address.version)
            entry["address"] = str(ip.address)
            if ip.gateway is not None:
                entry["gateway"] = str(ip.gateway)
            if ip.interface is not None:
                entry["interface"] = ip.interface
            ips.append(entry)
        if ips:
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_route_dict(r) for r in self.routes]
        out["dns"] = dict(self.dns)
        return out

    def _legacy_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version}
        for family, key in ((4, "ip4"), (6, "ip6")):
            first = next((ip for ip in self.ips if ip.address.version == family), None)
            if first is None:
                continue
            block: dict[str, Any] = {"ip": str(first.address)}
            if first.gateway is not None:
                block["gateway"] = str(first.gateway)
            routes = [_route_dict(r) for r in self.routes if r.dst.version == family]
            if routes:
                block["routes"] = routes
            out[key] = block
        out["dns"] = dict(self.dns)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Result:
        """Parse a result of any version (a prevResult, or a delegated plugin's answer)."""
        if not isinstance(data, dict):
            raise CniError(DECODE_FAILURE, "result is not a JSON object")
        try:
            if "ip4" in data or "ip6" in data:
                return cls._from_legacy(data)
            result = cls()
            for raw in data.get("interfaces") or []:
                result.interfaces.append(
                    Interface(
                        name=str(raw.get("name", "")),
                        mac=str(raw.get("mac", "")),
                        sandbox=str(raw.get("sandbox", "")),
                        mtu=int(raw.get("mtu", 0) or 0),
                    )
                )
            for raw in data.get("ips") or []:
                gw = raw.get("gateway")
                idx = raw.get("interface")
                result.ips.append(
                    IPConfig(
                        address=ipaddress.ip_interface(raw["address"]),
                        gateway=ipaddress.ip_address(gw) if gw else None,
                        interface=int(idx) if idx is not None else None,
                    )
                )
            result.routes = [_parse_route(r) for r in data.get("routes") or []]
            result.dns = dict(data.get("dns") or {})
            return result
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CniError(DECODE_FAILURE, "cannot parse CNI result", str(exc)) from exc

    @classmethod
    def _from_legacy(cls, data: dict[str, Any]) -> Result:
        result = cls()
        for key in ("ip4", "ip6"):
            block = data.get(key)
            if not block:
                continue
            gw = block.get("gateway")
            result.ips.append(
                IPConfig(
                    address=ipaddress.ip_interface(block["ip"]),
                    gateway=ipaddress.ip_address(gw) if gw else None,
                )
            )
            result.routes.extend(_parse_route(r) for r in block.get("routes") or [])
        result.dns = dict(data.get("dns") or {})
        return result


def _interface_dict(iface: Interface, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if iface.mtu and version_tuple(version) >= (1, 1, 0):  # "mtu" arrived in CNI 1.1
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    return out


def _route_dict(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    return out


def _parse_route(raw: Any) -> Route:
    gw = raw.get("gw")
    return Route(
        dst=ipaddress.ip_network(raw["dst"], strict=False),
        gw=ipaddress.ip_address(gw) if gw else None,
    )
