"""IPAM of a host that owns whole pod CIDRs (the routed model): one address from
each of the host's pod CIDRs (one per family), recorded in the network's registry.

No coordination with other hosts is needed: the CIDRs are this host's alone. The
gateway (each CIDR's first address), the network address and the IPv4 broadcast
address are never handed out. Allocation goes round robin per family, as
host-local does, so a just-released address is not reused at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from xvmcni.errors import (
    ADDRESS_EXHAUSTED,
    ADDRESS_IN_USE,
    INVALID_CONFIG,
    NOT_AVAILABLE,
    CniError,
)
from xvmcni.ipam.base import OwnRecords, Usage
from xvmcni.state.attachments import (
    AddressBook,
    Attachment,
    AttachmentRegistry,
    IPAddress,
    IPInterface,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CidrPool:
    """The addresses of one pod CIDR this host hands out: ``first``..``last``."""

    cidr: IPNetwork
    first: int
    last: int

    @classmethod
    def of(cls, cidr: IPNetwork, first: IPAddress | None = None,
           last: IPAddress | None = None) -> CidrPool:
        lo = int(cidr.network_address) + 2              # after the gateway
        hi = int(cidr.broadcast_address) - (1 if cidr.version == 4 else 0)
        if first is not None:
            lo = max(lo, int(first))
        if last is not None:
            hi = min(hi, int(last))
        return cls(cidr, lo, hi)

    @property
    def gateway(self) -> IPAddress:
        return self.cidr.network_address + 1

    def address(self, value: int) -> IPAddress:
        return ipaddress.ip_address(value) if self.cidr.version == 6 \
            else ipaddress.IPv4Address(value)

    def size(self) -> int:
        return max(0, self.last - self.first + 1)

    @property
    def note(self) -> str:
        # IPv4 keeps the slice allocator's note name: a host switching models reuses it.
        return "last_allocated" if self.cidr.version == 4 else "last_allocated_v6"


@dataclass(frozen=True)
class CidrAllocator:
    pools: tuple[CidrPool, ...]
    requested: tuple[IPAddress, ...] = ()

    def choose(self, book: AddressBook) -> list[IPInterface]:
        out: list[IPInterface] = []
        for pool in self.pools:
            wanted = [a for a in self.requested if a.version == pool.cidr.version]
            if len(wanted) > 1:
                raise CniError(INVALID_CONFIG, f"more than one IPv{pool.cidr.version} "
                               "address requested")
            addr = self._requested(book, pool, wanted[0]) if wanted else self._next(book, pool)
            out.append(ipaddress.ip_interface(f"{addr}/{pool.cidr.prefixlen}"))
        return out

    @staticmethod
    def _requested(book: AddressBook, pool: CidrPool, addr: IPAddress) -> IPAddress:
        CidrAllocator.check_requested(pool, addr)
        holder = book.holder(addr)
        if holder is not None:
            raise CniError(ADDRESS_IN_USE, f"requested address {addr} is in use by "
                           f"container {holder[0]} ({holder[1]})")
        return addr

    @staticmethod
    def check_requested(pool: CidrPool, addr: IPAddress) -> None:
        """Inside the pod CIDR and not one of its reserved addresses."""
        if addr not in pool.cidr:
            raise CniError(INVALID_CONFIG, f"requested address {addr} is outside this "
                           f"host's pod CIDR {pool.cidr}")
        if addr in (pool.cidr.network_address, pool.gateway) or (
                pool.cidr.version == 4 and addr == pool.cidr.broadcast_address):
            raise CniError(INVALID_CONFIG, f"requested address {addr} is reserved in "
                           f"{pool.cidr}", "it can never be given to a container")

    @staticmethod
    def _next(book: AddressBook, pool: CidrPool) -> IPAddress:
        lo, hi, version = pool.first, pool.last, pool.cidr.version
        span = hi - lo + 1
        if span > 0:
            used = book.used_between(lo, hi, version)
            note = book.note(pool.note)
            last = int(note) if note is not None and note.isdigit() else None
            start = last + 1 if last is not None and lo <= last < hi else lo
            # At most len(used) + 1 candidates: the set of used ones is small even
            # where the CIDR (an IPv6 /64) is not.
            for step in range(min(span, len(used) + 1)):
                candidate = lo + (start - lo + step) % span
                if candidate not in used:
                    book.set_note(pool.note, str(candidate))
                    return pool.address(candidate)
        raise CniError(ADDRESS_EXHAUSTED,
                       f"no free address left in {pool.cidr} ({pool.size()} in all)",
                       "remove unused containers, or give this host a larger pod CIDR")


class CidrIpam(OwnRecords):
    """The routed model's own IPAM over this host's pod CIDRs."""

    def __init__(self, pools: tuple[CidrPool, ...]) -> None:
        self.pools = pools

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[IPAddress]) -> tuple[Attachment, bool]:
        return registry.attach(record, CidrAllocator(self.pools, tuple(requested)))

    def validate(self, requested: list[IPAddress]) -> None:
        """Refuse, before anything changes, what no registry state could allow: an
        address of a family this host has no pod CIDR of, outside it, reserved, or two
        of one family."""
        families = {pool.cidr.version: pool for pool in self.pools}
        for addr in requested:
            pool = families.get(addr.version)
            if pool is None:
                raise CniError(INVALID_CONFIG, f"requested address {addr} is IPv{addr.version}:"
                               " this host has no pod CIDR of that family")
            CidrAllocator.check_requested(pool, addr)
        for version in families:
            if sum(1 for a in requested if a.version == version) > 1:
                raise CniError(INVALID_CONFIG,
                               f"more than one IPv{version} address requested")

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        # Every pod takes one address of each family: the fullest pool is the limit.
        worst = max(self.pools, key=lambda p: self._used(registry, p) - p.size())
        return Usage(self._used(registry, worst), worst.size(),
                     f"{worst.address(worst.first)}-{worst.address(worst.last)}")

    @staticmethod
    def _used(registry: AttachmentRegistry | None, pool: CidrPool) -> int:
        if registry is None:
            return 0
        return registry.used_addresses(pool.first, pool.last, pool.cidr.version)

    def status(self, registry: AttachmentRegistry | None) -> None:
        usage = self.usage(registry)
        if usage.size is not None and usage.used >= usage.size:
            raise CniError(NOT_AVAILABLE,
                           f"address range {usage.range} is exhausted: no ADD can succeed",
                           f"{usage.used} of {usage.size} addresses in use")
