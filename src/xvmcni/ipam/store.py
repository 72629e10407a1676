"""Durable IPAM and attachment records for one network on one host (sqlite3).

STUB: signatures and contract are fixed; implementation pending.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from xvmcni.ipam.pool import AddressPool


@dataclass
class Attachment:
    """One (container, interface) on this network and host."""

    container_id: str
    ifname: str
    netns: str = ""
    host_ifname: str = ""
    # Addresses with prefix length, as handed to the container ("10.244.11.5/16").
    addresses: list[ipaddress.IPv4Interface] = field(default_factory=list)
    created: float = 0.0


class IpamStore:
    """sqlite3 database at ``path`` (the network's state dir / "ipam.db").

    Contract:
    - WAL journal, synchronous=FULL: a kill -9 at any instant leaves either the
      whole transaction or none of it.
    - Every write is one ``BEGIN IMMEDIATE`` transaction. If the database stays
      locked longer than ``timeout`` seconds, raise CniError(TRY_AGAIN_LATER=11).
    - Safe for many processes at once (each opens its own IpamStore).
    - Creates the parent directory (mode 0700) and schema if missing.
    """

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def get(self, container_id: str, ifname: str) -> Attachment | None:
        raise NotImplementedError

    def attach(self, attachment: Attachment, pool: AddressPool | None,
               requested: list[ipaddress.IPv4Address] | None = None,
               prefixlen: int | None = None) -> tuple[Attachment, bool]:
        """Record ``attachment`` and give it an address, in one transaction.

        - If (container_id, ifname) is already recorded: return (existing, False)
          unchanged; never a second address (idempotent ADD).
        - pool None: record without allocating (delegated IPAM); addresses as given.
        - requested non-empty: allocate exactly those (each must be inside
          pool.subnet, not network/broadcast/gateway: CniError(INVALID_CONFIG=7)
          otherwise; held by another attachment: CniError(ADDRESS_IN_USE=103)).
          They need not lie inside pool.first..last (a static IP may be anywhere in
          the subnet).
        - otherwise: the next free address of the pool after the last one handed out
          (round robin, wrapping, like host-local, so a just-released address is not
          reused at once); none free: CniError(ADDRESS_EXHAUSTED=102).
        - The stored address carries ``prefixlen`` (default pool.subnet.prefixlen).
        Returns (attachment as stored, True).
        """
        raise NotImplementedError

    def update_host_ifname(self, container_id: str, ifname: str, host_ifname: str,
                           netns: str) -> None:
        raise NotImplementedError

    def detach(self, container_id: str, ifname: str) -> Attachment | None:
        """Remove the record and release its addresses; None if there was none."""
        raise NotImplementedError

    def all(self) -> list[Attachment]:
        raise NotImplementedError

    def gc(self, valid: set[tuple[str, str]]) -> list[Attachment]:
        """Remove every attachment whose (container_id, ifname) is not in ``valid``;
        return what was removed."""
        raise NotImplementedError

    def used_addresses(self) -> int:
        raise NotImplementedError
