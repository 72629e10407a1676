"""The host interface that carries VXLAN traffic."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from xvmcni.cni.errors import INVALID_CONFIG, CniError
from xvmcni.dataplane.netlink import get_link, ipv4_addresses


@dataclass(frozen=True)
class HostInterface:
    name: str
    index: int
    mtu: int
    address: ipaddress.IPv4Address


# Agent only: the host interface changes rarely, and every ADD asks for it.
CACHE_SECONDS = 2.0
_cache: dict[str, tuple[float, HostInterface]] | None = None


def enable_cache() -> None:
    global _cache
    _cache = {}


def lookup(ipr: Any, name: str) -> HostInterface:
    """The host interface, or CniError(INVALID_CONFIG) saying what is wrong."""
    if _cache is not None:
        hit = _cache.get(name)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
    found = _lookup(ipr, name)
    if _cache is not None:
        _cache[name] = (time.monotonic() + CACHE_SECONDS, found)
    return found


def _lookup(ipr: Any, name: str) -> HostInterface:
    link = get_link(ipr, name)
    if link is None:
        raise CniError(INVALID_CONFIG, f"hostInterface {name!r} does not exist on this host",
                       "set hostInterface to the interface that carries traffic between hosts")
    # A loopback address can never reach another host, so it does not count.
    addresses = [a for a in ipv4_addresses(ipr, link["index"])
                 if not ipaddress.IPv4Address(a[0]).is_loopback]
    if not addresses:
        raise CniError(INVALID_CONFIG, f"hostInterface {name!r} has no IPv4 address "
                       "other hosts can reach",
                       "VXLAN needs the host's IPv4 address as its tunnel source")
    # The first (primary) address is the VTEP source, as the kernel would pick it.
    return HostInterface(
        name=name,
        index=int(link["index"]),
        mtu=int(link.get("IFLA_MTU")),
        address=ipaddress.IPv4Address(addresses[0][0]),
    )
