"""Which addresses this host may hand out: the per-host slice rule.

Every host on a network shares one subnet but allocates only from its own slice,
so no coordination between hosts is needed for two of them never to hand out the
same address. The slice is chosen from the host's underlay address alone, which
every host knows about itself without asking anyone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from xvmcni.errors import INVALID_CONFIG, CniError

# Smallest default slice: a /28 still leaves 14 usable addresses per host, and cutting
# small subnets finer would leave hosts with nothing to give out.
MAX_DEFAULT_SLICE_PREFIX = 28


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
        return frozenset(
            (self.subnet.network_address, self.subnet.broadcast_address, self.gateway)
        )

    def __contains__(self, addr: object) -> bool:
        """True when ``addr`` may be allocated from this pool (in range, not reserved)."""
        if not isinstance(addr, ipaddress.IPv4Address):
            return False
        return self.first <= addr <= self.last and addr not in self.reserved()

    def size(self) -> int:
        """How many addresses this pool can hand out."""
        if self.first > self.last:
            return 0
        span = int(self.last) - int(self.first) + 1
        # A reserved address only costs a slot when it falls inside the range.
        return span - sum(1 for r in self.reserved() if self.first <= r <= self.last)


def default_per_host_prefix(subnet: ipaddress.IPv4Network) -> int:
    """Prefix length of one host's slice when the config does not set perHostPrefix:
    subnet prefix + 8, at most /28 (a /16 gives /24 slices; a /24 gives /28 slices)."""
    # max(): a subnet already smaller than /28 is one single slice, never split further.
    return max(subnet.prefixlen, min(subnet.prefixlen + 8, MAX_DEFAULT_SLICE_PREFIX))


def host_slice(subnet: ipaddress.IPv4Network, host_ip: ipaddress.IPv4Address,
               per_host_prefix: int) -> ipaddress.IPv4Network:
    """The slice of ``subnet`` this host owns: the subnet is cut into
    2**(per_host_prefix - subnet.prefixlen) slices and the host takes slice number
    int(host_ip) mod that count. Two hosts collide only when their underlay
    addresses are equal modulo the slice count."""
    if not subnet.prefixlen <= per_host_prefix <= subnet.max_prefixlen:
        raise CniError(
            INVALID_CONFIG,
            f"per-host prefix /{per_host_prefix} does not fit subnet {subnet}",
            f"it must lie between /{subnet.prefixlen} and /{subnet.max_prefixlen}",
        )
    count = 1 << (per_host_prefix - subnet.prefixlen)
    index = int(host_ip) % count
    slice_size = 1 << (subnet.max_prefixlen - per_host_prefix)
    start = subnet.network_address + index * slice_size
    return ipaddress.IPv4Network((start, per_host_prefix))


def pool_for_host(subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address,
                  host_ip: ipaddress.IPv4Address, per_host_prefix: int | None,
                  range_start: ipaddress.IPv4Address | None,
                  range_end: ipaddress.IPv4Address | None) -> AddressPool:
    """rangeStart/rangeEnd given: they replace the slice (a missing end defaults to the
    subnet's edge). Otherwise the host slice."""
    if range_start is not None or range_end is not None:
        first = range_start if range_start is not None else subnet.network_address
        last = range_end if range_end is not None else subnet.broadcast_address
        for key, addr in (("rangeStart", first), ("rangeEnd", last)):
            if addr not in subnet:
                raise CniError(INVALID_CONFIG, f"{key!r} {addr} is outside subnet {subnet}")
        if first > last:
            raise CniError(INVALID_CONFIG,
                           f"'rangeStart' {first} is after 'rangeEnd' {last}")
        return AddressPool(subnet=subnet, gateway=gateway, first=first, last=last)

    prefix = per_host_prefix if per_host_prefix is not None else default_per_host_prefix(subnet)
    owned = host_slice(subnet, host_ip, prefix)
    # The slice's own first and last addresses (x.y.z.0 and x.y.z.255 for a /24) are
    # valid inside the shared subnet, but operators and firewall rules read them as
    # network/broadcast addresses: leave them out, as in any subnet.
    return AddressPool(subnet=subnet, gateway=gateway,
                       first=owned.network_address + 1, last=owned.broadcast_address - 1)
