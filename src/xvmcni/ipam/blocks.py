"""Cluster-wide IPAM for ``l2`` with a control plane: the subnet is cut into blocks
(``blockSize``, default /26), each host claims blocks in etcd by compare-and-create,
and allocates addresses only from the blocks it holds.

The blocks this host holds are listed in ``<dataDir>/<network>/claims.json``,
written by the agent (and by an ADD that had to claim one itself), so that ADDs
keep working from the host's blocks while the agent or etcd is away. Only when
every known block is full (or none is known) does an ADD ask etcd for another;
etcd unreachable then is code 11, with the reason.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from xvmcni.config import fail, get
from xvmcni.errors import ADDRESS_EXHAUSTED, INVALID_CONFIG, TRY_AGAIN_LATER, CniError
from xvmcni.ipam.base import OwnRecords, Usage
from xvmcni.ipam.pool import AddressPool
from xvmcni.ipam.slices import STATIC_SUBNET, SliceAllocator, _ipv4_only
from xvmcni.state.attachments import (
    AddressBook,
    Attachment,
    AttachmentRegistry,
    IPAddress,
    IPInterface,
)

log = logging.getLogger(__name__)

CLAIMS_FILE = "claims.json"
CLAIM_KIND = "blocks"
DEFAULT_BLOCK_PREFIX = 26
MAX_BLOCK_PREFIX = 30


class ClaimUnavailable(Exception):
    """The control plane could not be asked (etcd unreachable)."""


class NoBlockLeft(Exception):
    """Every block of the subnet is held by some host."""


# Claims one more block for this host; returns every block it now holds.
ClaimMore = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class BlockSettings:
    prefix: int


def parse_settings(raw: dict[str, Any], subnet: ipaddress.IPv4Network) -> BlockSettings:
    for key in ("perHostPrefix", "rangeStart", "rangeEnd"):
        if raw.get(key) is not None:
            raise fail(f"{key!r} does not apply with controlPlane etcd",
                       "hosts claim blocks of the subnet; size them with 'blockSize'")
    default = max(subnet.prefixlen, min(DEFAULT_BLOCK_PREFIX, MAX_BLOCK_PREFIX))
    prefix = get(raw, "blockSize", int, default)
    if not subnet.prefixlen <= prefix <= MAX_BLOCK_PREFIX:
        raise fail(f"'blockSize' /{prefix} must lie between the subnet's /{subnet.prefixlen} "
                   f"and /{MAX_BLOCK_PREFIX}")
    return BlockSettings(prefix)


def block_key(block: ipaddress.IPv4Network) -> str:
    """The block's name as an etcd key part ('/' would look like a deeper key)."""
    return f"{block.network_address}_{block.prefixlen}"


def block_of_key(key: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(key.replace("_", "/"))


def candidates(subnet: ipaddress.IPv4Network, prefix: int, host: str,
               prefer: list[str]) -> list[str]:
    """Every block of the subnet, in the order this host tries them: ``prefer`` first
    (blocks it held before), then all from a start derived from the host name, so
    hosts starting together do not all race for block 0."""
    blocks = [block_key(b) for b in subnet.subnets(new_prefix=prefix)]
    start = zlib.crc32(host.encode()) % len(blocks)
    ordered = blocks[start:] + blocks[:start]
    return [b for b in prefer if b in blocks] + [b for b in ordered if b not in prefer]


def read_claims(state_dir: Path) -> list[str]:
    try:
        data = json.loads((state_dir / CLAIMS_FILE).read_text())
        return [str(b) for b in data["blocks"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s in %s: %s", CLAIMS_FILE, state_dir, exc)
        return []


def claims_host(state_dir: Path) -> str | None:
    """The host name claims.json was written for (None: no file yet)."""
    try:
        return str(json.loads((state_dir / CLAIMS_FILE).read_text())["host"]) or None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_claims(state_dir: Path, host: str, blocks: list[str]) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / CLAIMS_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"host": host, "blocks": sorted(blocks)}, indent=1))
    os.replace(tmp, path)


@dataclass(frozen=True)
class BlocksAllocator:
    """Chooses from the host's blocks in order; a requested address is checked as
    our slices check it (inside the subnet, not reserved, not held here)."""

    pools: tuple[AddressPool, ...]
    subnet_pool: AddressPool
    requested: tuple[ipaddress.IPv4Address, ...] = ()

    def choose(self, book: AddressBook) -> list[IPInterface]:
        if self.requested:
            self.validate()
            return SliceAllocator(self.subnet_pool, self.requested,
                                  static_ips=STATIC_SUBNET).choose(book)
        for pool in self.pools:
            try:
                return SliceAllocator(pool).choose(book)
            except CniError as err:
                if err.code != ADDRESS_EXHAUSTED:
                    raise
        raise CniError(ADDRESS_EXHAUSTED, "every address block this host holds is full",
                       ", ".join(f"{p.first}-{p.last}" for p in self.pools) or "no blocks")

    def validate(self) -> None:
        """A requested address must be valid in the subnet and lie in one of this host's
        blocks: any other block is another host's to hand out (a duplicate address on
        the shared L2)."""
        SliceAllocator(self.subnet_pool, self.requested, static_ips=STATIC_SUBNET).validate()
        for addr in self.requested:
            if not any(p.first <= addr <= p.last for p in self.pools):
                raise CniError(INVALID_CONFIG,
                               f"requested address {addr} is outside this host's address "
                               "blocks", ", ".join(f"{p.first}-{p.last}" for p in self.pools)
                               or "this host holds no block yet")


class BlockIpam(OwnRecords):
    def __init__(self, subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address,
                 state_dir: Path, claim_more: ClaimMore | None) -> None:
        self.subnet = subnet
        self.gateway = gateway
        self.state_dir = state_dir
        self._claim_more = claim_more

    def _pool(self, block: ipaddress.IPv4Network) -> AddressPool:
        return AddressPool(self.subnet, self.gateway, block.network_address,
                           block.broadcast_address)

    def pools(self, blocks: list[str] | None = None) -> tuple[AddressPool, ...]:
        keys = read_claims(self.state_dir) if blocks is None else blocks
        out = []
        for key in keys:
            try:
                block = block_of_key(key)
            except ValueError:
                log.warning("ignoring block %r in %s: not a network", key, CLAIMS_FILE)
                continue
            if block.subnet_of(self.subnet):
                out.append(self._pool(block))
        return tuple(out)

    def _whole(self) -> AddressPool:
        return AddressPool(self.subnet, self.gateway, self.subnet.network_address,
                           self.subnet.broadcast_address)

    def validate(self, requested: list[IPAddress]) -> None:
        BlocksAllocator(self.pools(), self._whole(), _ipv4_only(requested)).validate()

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[IPAddress]) -> tuple[Attachment, bool]:
        whole = self._whole()
        known = read_claims(self.state_dir)
        try:
            return registry.attach(record, BlocksAllocator(self.pools(known), whole,
                                                           _ipv4_only(requested)))
        except CniError as err:
            if err.code != ADDRESS_EXHAUSTED or requested:
                raise
        blocks = self._more(known)
        return registry.attach(record, BlocksAllocator(self.pools(blocks), whole))

    def _more(self, known: list[str]) -> list[str]:
        """Every block this host holds after claiming one more."""
        what = "no address block is known on this host" if not known else \
            "every address block this host holds is full"
        if self._claim_more is None:
            raise CniError(TRY_AGAIN_LATER, f"{what}, and no control plane can be asked")
        try:
            return self._claim_more(known)
        except ClaimUnavailable as exc:
            raise CniError(TRY_AGAIN_LATER, f"{what}, and etcd cannot be reached to claim "
                           "one", str(exc)) from exc
        except NoBlockLeft as exc:
            raise CniError(ADDRESS_EXHAUSTED,
                           f"{what}, and every block of {self.subnet} is held by a host",
                           "remove unused hosts (their blocks return after reclaimAfter), or "
                           "use a larger subnet or smaller 'blockSize'") from exc

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        pools = self.pools()
        used = sum(registry.used_addresses(int(p.first), int(p.last)) for p in pools) \
            if registry is not None else 0
        return Usage(used, sum(p.size() for p in pools),
                     ", ".join(f"{p.first}-{p.last}" for p in pools))

    def status(self, registry: AttachmentRegistry | None) -> None:
        return None  # full blocks are not the end: an ADD claims another one


class Claimer(Protocol):
    """What this IPAM needs from a control plane (``EtcdControlPlane`` is one)."""

    me: str

    def owned(self, kind: str) -> list[str]: ...

    def claim(self, kind: str, candidates: Iterable[str]) -> str: ...


def hold_blocks(claimer: Claimer, subnet: ipaddress.IPv4Network, prefix: int,
                state_dir: Path, need_new: bool = False) -> list[str]:
    """Bring ``claims.json`` in line with what etcd says this host holds: look its
    blocks up by name first (restart, reboot), take back blocks it listed but lost
    (gone longer than reclaimAfter) when they are still free, and claim one when it
    holds none or ``need_new`` (its blocks are full). Raises what the claimer raises."""
    known = read_claims(state_dir)
    valid = {block_key(b) for b in subnet.subnets(new_prefix=prefix)}
    held = [b for b in claimer.owned(CLAIM_KIND) if b in valid]
    for lost in (b for b in known if b in valid and b not in held):
        try:
            held.append(claimer.claim(CLAIM_KIND, [lost]))
        except LookupError:
            log.warning("block %s of this host was reclaimed by another host", lost)
    if not held or (need_new and set(held) <= set(known)):
        order = candidates(subnet, prefix, claimer.me, known)
        held.append(claimer.claim(CLAIM_KIND, [c for c in order if c not in held]))
    write_claims(state_dir, claimer.me, held)
    return held
