"""Which addresses this host may hand out: the per-host slice rule.

STUB: signatures and contract are fixed; implementation pending.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class AddressPool:
    """The addresses one host allocates from, for one network.

    ``first``..``last`` inclusive; network, broadcast and gateway addresses of
    ``subnet`` are never handed out even when inside that range.
    """

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address

    def reserved(self) -> frozenset[ipaddress.IPv4Address]:
        """Addresses never allocated: network, broadcast, gateway."""
        raise NotImplementedError

    def __contains__(self, addr: object) -> bool:
        """True when ``addr`` may be allocated from this pool (in range, not reserved)."""
        raise NotImplementedError

    def size(self) -> int:
        """How many addresses this pool can hand out."""
        raise NotImplementedError


def default_per_host_prefix(subnet: ipaddress.IPv4Network) -> int:
    """Prefix length of one host's slice when the config does not set perHostPrefix:
    subnet prefix + 8, at most /28 (a /16 gives /24 slices; a /24 gives /28 slices)."""
    raise NotImplementedError


def host_slice(subnet: ipaddress.IPv4Network, host_ip: ipaddress.IPv4Address,
               per_host_prefix: int) -> ipaddress.IPv4Network:
    """The slice of ``subnet`` this host owns: the subnet is cut into
    2**(per_host_prefix - subnet.prefixlen) slices and the host takes slice number
    int(host_ip) mod that count. Two hosts collide only when their underlay
    addresses are equal modulo the slice count."""
    raise NotImplementedError


def pool_for_host(subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address,
                  host_ip: ipaddress.IPv4Address, per_host_prefix: int | None,
                  range_start: ipaddress.IPv4Address | None,
                  range_end: ipaddress.IPv4Address | None) -> AddressPool:
    """rangeStart/rangeEnd given: they replace the slice (a missing end defaults to the
    subnet's edge). Otherwise the host slice."""
    raise NotImplementedError
