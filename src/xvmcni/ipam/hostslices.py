"""Per-host slices of a subnet, for both address families (model ``macvlan``).

Every host takes the slice of each subnet that its underlay address selects (as
``ipam/pool.py`` does for IPv4 in ``l2``): no coordination, and every host can
compute every other host's slice from its underlay address alone, so a route per
remote slice reaches the pods behind it. The first usable address of a host's slice
is that host's router address in the subnet; pods get the rest. ``excludeFirst`` /
``excludeLast`` addresses of the whole subnet are never used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xvmcni.errors import ADDRESS_IN_USE, INVALID_CONFIG, NOT_AVAILABLE, CniError
from xvmcni.ipam.base import OwnRecords, Usage
from xvmcni.ipam.blocks import BlockIpam, ClaimMore
from xvmcni.ipam.cidr import CidrAllocator, CidrPool
from xvmcni.ipam.pool import AddressPool
from xvmcni.state.attachments import (
    AddressBook,
    Attachment,
    AttachmentRegistry,
    IPAddress,
    IPInterface,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def slice_of(subnet: IPNetwork, host: IPAddress, prefix: int) -> IPNetwork:
    """The slice of ``subnet`` a host with underlay address ``host`` owns: slice number
    int(host) mod the slice count. Two hosts collide only when their underlay addresses
    are equal modulo that count (the README says how to size it)."""
    count = 1 << (prefix - subnet.prefixlen)
    size = 1 << (subnet.max_prefixlen - prefix)
    start = int(subnet.network_address) + (int(host) % count) * size
    return ipaddress.ip_network((start, prefix))


@dataclass(frozen=True)
class HostRange:
    """What one host uses of one subnet: its router address and its pods' range."""

    subnet: IPNetwork
    slice: IPNetwork
    router: IPAddress | None      # None: the slice lies wholly in an excluded range
    first: int                    # pods: first..last (empty when first > last)
    last: int

    @property
    def router_interface(self) -> IPInterface:
        assert self.router is not None
        return ipaddress.ip_interface(f"{self.router}/{self.subnet.prefixlen}")


def host_range(subnet: IPNetwork, host: IPAddress, prefix: int, exclude_first: int = 0,
               exclude_last: int = 0) -> HostRange:
    return cidr_range(subnet, slice_of(subnet, host, prefix), exclude_first, exclude_last)


def cidr_range(subnet: IPNetwork, owned: IPNetwork, exclude_first: int = 0,
               exclude_last: int = 0) -> HostRange:
    """Router address and pods' range of ``owned`` (a host's slice, or an address block
    it claimed through etcd), a part of ``subnet``."""
    v4_tail = 1 if subnet.version == 4 else 0   # the IPv4 broadcast address
    lo = max(int(owned.network_address) + 1,
             int(subnet.network_address) + max(1, exclude_first))
    hi = min(int(owned.broadcast_address) - v4_tail,
             int(subnet.broadcast_address) - v4_tail - exclude_last)
    if lo > hi:
        return HostRange(subnet, owned, None, 1, 0)
    router = ipaddress.ip_address(lo) if subnet.version == 6 else ipaddress.IPv4Address(lo)
    return HostRange(subnet, owned, router, lo + 1, hi)


class _Allocator:
    """CidrAllocator's round robin, with requests judged against this host's range."""

    def __init__(self, ranges: tuple[HostRange, ...],
                 requested: tuple[IPAddress, ...]) -> None:
        self.pools = tuple(CidrPool(r.subnet, r.first, r.last) for r in ranges)
        self.ranges = ranges
        self.requested = requested

    def choose(self, book: AddressBook) -> list[IPInterface]:
        out: list[IPInterface] = []
        for pool, rng in zip(self.pools, self.ranges, strict=True):
            wanted = [a for a in self.requested if a.version == pool.cidr.version]
            if wanted:
                check_requested(rng, wanted[0])
                holder = book.holder(wanted[0])
                if holder is not None:
                    raise CniError(ADDRESS_IN_USE, f"requested address {wanted[0]} is in "
                                   f"use by container {holder[0]} ({holder[1]})")
                addr = wanted[0]
            else:
                addr = CidrAllocator._next(book, pool)
            out.append(ipaddress.ip_interface(f"{addr}/{pool.cidr.prefixlen}"))
        return out


def check_requested(rng: HostRange, addr: IPAddress) -> None:
    if addr == rng.router:
        raise CniError(INVALID_CONFIG, f"requested address {addr} is this host's router "
                       f"address in {rng.subnet}")
    if not rng.first <= int(addr) <= rng.last:
        shown = (f"{ipaddress.ip_address(rng.first)}-{ipaddress.ip_address(rng.last)}"
                 if rng.first <= rng.last else "none")
        raise CniError(INVALID_CONFIG, f"requested address {addr} is not in this host's "
                       f"slice of {rng.subnet} (pods here get {shown})",
                       "without a cluster-wide allocator only a host's own slice is "
                       "known to be free; request an address of the host's slice or "
                       "use a delegated cluster-aware IPAM")


class HostSliceIpam(OwnRecords):
    """One address per subnet of a network from this host's slice of it."""

    def __init__(self, ranges: Callable[[], tuple[HostRange, ...]]) -> None:
        # Computed on first use: DEL and GC never need this host's underlay address.
        self._ranges_of = ranges
        self._ranges: tuple[HostRange, ...] | None = None

    @property
    def ranges(self) -> tuple[HostRange, ...]:
        if self._ranges is None:
            self._ranges = self._ranges_of()
        return self._ranges

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[IPAddress]) -> tuple[Attachment, bool]:
        return registry.attach(record, _Allocator(self.ranges, tuple(requested)))

    def validate(self, requested: list[IPAddress]) -> None:
        families = {r.subnet.version: r for r in self.ranges}
        for addr in requested:
            rng = families.get(addr.version)
            if rng is None:
                raise CniError(INVALID_CONFIG, f"requested address {addr} is IPv"
                               f"{addr.version}: the network has no subnet of that family")
            check_requested(rng, addr)

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        worst = min(self.ranges, key=lambda r: r.last - r.first)
        used = registry.used_addresses(worst.first, worst.last, worst.subnet.version) \
            if registry is not None else 0
        pool = CidrPool(worst.subnet, worst.first, worst.last)
        return Usage(used, pool.size(), f"{pool.address(worst.first)}-"
                     f"{pool.address(worst.last)}")

    def status(self, registry: AttachmentRegistry | None) -> None:
        usage = self.usage(registry)
        if usage.size is not None and usage.used >= usage.size:
            raise CniError(NOT_AVAILABLE, f"address range {usage.range} is exhausted",
                           f"{usage.used} of {usage.size} addresses in use")


class RouterBlockIpam(BlockIpam):
    """Cluster-wide address blocks claimed through etcd (``ipam/blocks``), where the
    first usable address of every block is its host's router address in the subnet;
    pods get the rest. ``excludeFirst`` / ``excludeLast`` hold as with slices."""

    def __init__(self, subnet: ipaddress.IPv4Network, state_dir: Path,
                 claim_more: ClaimMore | None, exclude_first: int = 0,
                 exclude_last: int = 0) -> None:
        # The network address stands in for the l2 gateway: reserved anyway.
        super().__init__(subnet, subnet.network_address, state_dir, claim_more)
        self.exclude_first = exclude_first
        self.exclude_last = exclude_last

    def _pool(self, block: ipaddress.IPv4Network) -> AddressPool:
        rng = cidr_range(self.subnet, block, self.exclude_first, self.exclude_last)
        if rng.router is None:   # wholly excluded: an empty pool
            return AddressPool(self.subnet, self.gateway, block.broadcast_address,
                               block.network_address)
        return AddressPool(self.subnet, self.gateway, ipaddress.IPv4Address(rng.first),
                           ipaddress.IPv4Address(rng.last))
