"""Our own IPAM: every host allocates from its own slice of the network's subnet
(or from rangeStart..rangeEnd), recorded in the network's registry.

Choosing and recording happen in one sqlite write transaction, so concurrent
plugin processes and agent threads never hand out one address twice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xvmcni.cni.names import shown
from xvmcni.errors import (
    ADDRESS_EXHAUSTED,
    ADDRESS_IN_USE,
    INVALID_CONFIG,
    NOT_AVAILABLE,
    CniError,
)
from xvmcni.ipam.base import OwnRecords, Usage
from xvmcni.ipam.pool import AddressPool
from xvmcni.state.attachments import (
    AddressBook,
    Attachment,
    AttachmentRegistry,
    IPAddress,
    IPInterface,
)

# Registry note: the last address handed out, so allocation goes round robin and a
# just-released address is not reused at once (as host-local does).
LAST_ALLOCATED = "last_allocated"


# Where a requested (static) address may lie: "pool" (default), only in this host's
# own slice or range, which no other host hands out; "subnet", anywhere in the subnet,
# for operators who keep statics apart from every host's pool themselves.
STATIC_POOL = "pool"
STATIC_SUBNET = "subnet"
STATIC_SCOPES = (STATIC_POOL, STATIC_SUBNET)


@dataclass(frozen=True)
class SliceSettings:
    """The config fields of this IPAM: where in the subnet this host allocates."""

    range_start: ipaddress.IPv4Address | None = None
    range_end: ipaddress.IPv4Address | None = None
    per_host_prefix: int | None = None
    static_ips: str = STATIC_POOL


def parse_settings(raw: dict[str, Any], subnet: ipaddress.IPv4Network) -> SliceSettings:
    def address(key: str) -> ipaddress.IPv4Address | None:
        text = raw.get(key)
        if text is None:
            return None
        if not isinstance(text, str):
            raise CniError(INVALID_CONFIG, f"{key!r} must be a string holding an IPv4 address")
        try:
            addr = ipaddress.IPv4Address(text)
        except ValueError as exc:
            raise CniError(INVALID_CONFIG, f"{key!r} is not an IPv4 address: {text!r}") from exc
        if addr not in subnet:
            raise CniError(INVALID_CONFIG, f"'{key}' {addr} is outside subnet {subnet}")
        return addr

    start, end = address("rangeStart"), address("rangeEnd")
    if start and end and start > end:
        raise CniError(INVALID_CONFIG, f"'rangeStart' {start} is after 'rangeEnd' {end}")
    prefix = raw.get("perHostPrefix")
    if prefix is not None:
        if isinstance(prefix, bool) or not isinstance(prefix, int):
            raise CniError(INVALID_CONFIG, "'perHostPrefix' must be a whole number")
        if not subnet.prefixlen <= prefix <= 30:
            raise CniError(INVALID_CONFIG,
                           f"'perHostPrefix' {shown(prefix)} must lie between the subnet's "
                           f"prefix /{subnet.prefixlen} and /30")
    static_ips = raw.get("staticIPs", STATIC_POOL)
    if static_ips is None:
        static_ips = STATIC_POOL
    if static_ips not in STATIC_SCOPES:
        raise CniError(INVALID_CONFIG, f"'staticIPs' {shown(static_ips)} must be "
                       f"\"{STATIC_POOL}\" or \"{STATIC_SUBNET}\"",
                       "where a requested address may lie: this host's pool (default), "
                       "or anywhere in the subnet")
    return SliceSettings(start, end, prefix, static_ips)


@dataclass(frozen=True)
class SliceAllocator:
    """Chooses addresses from ``pool``: the requested ones if given and free, else
    the next free one after the last handed out."""

    pool: AddressPool
    requested: tuple[ipaddress.IPv4Address, ...] = ()
    prefixlen: int | None = None
    static_ips: str = STATIC_POOL

    def choose(self, book: AddressBook) -> list[IPInterface]:
        plen = self.prefixlen if self.prefixlen is not None else self.pool.subnet.prefixlen
        if self.requested:
            chosen = self._check_requested(book)
        else:
            chosen = [self._next_free(book)]
            book.set_note(LAST_ALLOCATED, str(int(chosen[0])))
        out: list[IPInterface] = [ipaddress.IPv4Interface((a, plen)) for a in chosen]
        return out

    def _check_requested(self, book: AddressBook) -> list[ipaddress.IPv4Address]:
        self.validate()
        for addr in self.requested:
            holder = book.holder(addr)
            if holder is not None:
                raise CniError(ADDRESS_IN_USE,
                               f"requested address {addr} is in use by container "
                               f"{holder[0]} ({holder[1]})")
        return list(self.requested)

    def validate(self) -> None:
        """Refuse requested addresses no registry state could make valid: outside the
        subnet (or this host's pool), reserved, or repeated."""
        pool = self.pool
        reserved = pool.reserved()
        seen: set[ipaddress.IPv4Address] = set()
        for addr in self.requested:
            if addr not in pool.subnet:
                raise CniError(INVALID_CONFIG,
                               f"requested address {addr} is outside subnet {pool.subnet}")
            if addr in reserved:
                what = "gateway" if addr == pool.gateway else (
                    "network address" if addr == pool.subnet.network_address
                    else "broadcast address")
                raise CniError(INVALID_CONFIG,
                               f"requested address {addr} is the subnet's {what}",
                               "it can never be given to a container")
            if addr in seen:
                raise CniError(INVALID_CONFIG, f"address {addr} is requested twice")
            if self.static_ips == STATIC_POOL and addr not in pool:
                # Another host's pool may hold it: it would hand it out again, a
                # duplicate address on the shared L2.
                raise CniError(INVALID_CONFIG,
                               f"requested address {addr} is outside this host's pool "
                               f"{pool.first}-{pool.last}",
                               "another host may hand it out; set \"staticIPs\": "
                               "\"subnet\" to allow any address of the subnet if you keep "
                               "static addresses out of every host's pool yourself")
            seen.add(addr)

    def _next_free(self, book: AddressBook) -> ipaddress.IPv4Address:
        pool = self.pool
        lo, hi = int(pool.first), int(pool.last)
        span = hi - lo + 1
        used = book.used_between(lo, hi)
        blocked = used | {int(a) for a in pool.reserved() if lo <= int(a) <= hi}
        if span > len(blocked):
            note = book.note(LAST_ALLOCATED)
            last = int(note) if note is not None else None
            # Outside the pool (first run, or the pool changed): begin at its start.
            start = last + 1 if last is not None and lo <= last < hi else lo
            for step in range(span):
                candidate = lo + (start - lo + step) % span
                if candidate not in blocked:
                    return ipaddress.IPv4Address(candidate)
        raise CniError(
            ADDRESS_EXHAUSTED,
            f"no free address left in {pool.first}-{pool.last} ({len(used)} in use)",
            "remove unused containers, or give this host a larger range "
            "(perHostPrefix, rangeStart/rangeEnd)")


def _ipv4_only(requested: list[IPAddress]) -> tuple[ipaddress.IPv4Address, ...]:
    """This IPAM's networks are IPv4, with one address per container interface."""
    for addr in requested:
        if not isinstance(addr, ipaddress.IPv4Address):
            raise CniError(INVALID_CONFIG, f"requested IP {addr} is IPv6; this network is IPv4")
    if len(requested) > 1:
        raise CniError(INVALID_CONFIG,
                       f"{len(requested)} addresses requested: at most one IPv4 address per "
                       "container interface", ", ".join(map(str, requested[:8])))
    return tuple(a for a in requested if isinstance(a, ipaddress.IPv4Address))


class SliceIpam(OwnRecords):
    """The built-in IPAM over one host's pool.

    The pool is worked out on first use: it depends on the host's underlay
    address, which releasing an address (DEL) must never need to look up.
    """

    def __init__(self, pool: AddressPool | Callable[[], AddressPool],
                 static_ips: str = STATIC_POOL) -> None:
        self._pool = pool
        self.static_ips = static_ips

    @property
    def pool(self) -> AddressPool:
        if not isinstance(self._pool, AddressPool):
            self._pool = self._pool()
        return self._pool

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[IPAddress]) -> tuple[Attachment, bool]:
        return registry.attach(record, SliceAllocator(self.pool, _ipv4_only(requested),
                                                      static_ips=self.static_ips))

    def validate(self, requested: list[IPAddress]) -> None:
        SliceAllocator(self.pool, _ipv4_only(requested),
                       static_ips=self.static_ips).validate()

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        # Only addresses inside the pool use it up: a static address elsewhere in the
        # subnet does not make the next ADD fail.
        used = (registry.used_addresses(int(self.pool.first), int(self.pool.last))
                if registry is not None else 0)
        return Usage(used, self.pool.size(), f"{self.pool.first}-{self.pool.last}")

    def status(self, registry: AttachmentRegistry | None) -> None:
        usage = self.usage(registry)
        if usage.size is not None and usage.used >= usage.size:
            raise CniError(NOT_AVAILABLE,
                           f"address range {usage.range} is exhausted: no ADD can succeed",
                           f"{usage.used} of {usage.size} addresses in use")
