"""The host interface that carries VXLAN traffic."""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any

from xvmcni.dataplane.errors import DataplaneError
from xvmcni.dataplane.netlink import IFF_UP, get_link, ipv4_addresses


@dataclass(frozen=True)
class HostInterface:
    name: str
    index: int
    mtu: int
    address: ipaddress.IPv4Address
    up: bool = True


class HostInterfaceCache:
    """Lookups remembered for a few seconds (the agent: every ADD asks, it rarely
    changes, and a stale answer costs at most ``seconds`` of wrong MTU)."""

    def __init__(self, seconds: float = 2.0) -> None:
        self.seconds = seconds
        self._entries: dict[str, tuple[float, HostInterface]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> HostInterface | None:
        with self._lock:
            hit = self._entries.get(name)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, found: HostInterface) -> None:
        with self._lock:
            self._entries[found.name] = (time.monotonic() + self.seconds, found)


def lookup(ipr: Any, name: str, cache: HostInterfaceCache | None = None) -> HostInterface:
    """The host interface, or DataplaneError(HOST_CONFLICT) saying what is wrong."""
    if cache is not None:
        hit = cache.get(name)
        if hit is not None:
            return hit
    found = _lookup(ipr, name)
    if cache is not None:
        cache.put(found)
    return found


def _lookup(ipr: Any, name: str) -> HostInterface:
    link = get_link(ipr, name)
    if link is None:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"hostInterface {name!r} does not exist on this host",
                             "set hostInterface to the interface that carries traffic "
                             "between hosts")
    # A loopback address can never reach another host, so it does not count.
    addresses = [a for a in ipv4_addresses(ipr, link["index"])
                 if not ipaddress.IPv4Address(a[0]).is_loopback]
    if not addresses:
        raise DataplaneError(DataplaneError.HOST_CONFLICT,
                             f"hostInterface {name!r} has no IPv4 address other hosts can reach",
                             "VXLAN needs the host's IPv4 address as its tunnel source")
    # The first (primary) address is the VTEP source, as the kernel would pick it.
    return HostInterface(
        name=name,
        index=int(link["index"]),
        mtu=int(link.get("IFLA_MTU")),
        address=ipaddress.IPv4Address(addresses[0][0]),
        up=bool(link["flags"] & IFF_UP),
    )
