"""Durable IPAM and attachment records for one network on one host (sqlite3).

Runtimes run many plugin processes at once and may kill any of them; sqlite in
WAL mode gives us cross-process locking and all-or-nothing transactions without a
daemon. Every write takes the write lock up front (``BEGIN IMMEDIATE``) so two
writers never both read a free address and then race to claim it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from xvmcni.cni.errors import (
    ADDRESS_EXHAUSTED,
    ADDRESS_IN_USE,
    INVALID_CONFIG,
    IO_FAILURE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
)
from xvmcni.ipam.pool import AddressPool

SCHEMA_VERSION = 1
_LAST_ALLOCATED = "last_allocated"
# sqlite3 exports these names only from Python 3.11; we support 3.10.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# ``num`` duplicates ``address`` as an integer so the allocator can ask for just the
# addresses inside its pool with a range query; ``position`` keeps the order the
# addresses were handed out in (the first is the container's primary address).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS attachments (
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        netns TEXT NOT NULL DEFAULT '',
        host_ifname TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        PRIMARY KEY (container_id, ifname)
    )""",
    """CREATE TABLE IF NOT EXISTS addresses (
        address TEXT PRIMARY KEY,
        num INTEGER NOT NULL UNIQUE,
        prefixlen INTEGER NOT NULL,
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        position INTEGER NOT NULL DEFAULT 0,
        FOREIGN KEY (container_id, ifname)
            REFERENCES attachments (container_id, ifname) ON DELETE CASCADE
    )""",
    "CREATE INDEX IF NOT EXISTS addresses_owner ON addresses (container_id, ifname)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


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


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        # The primary code is the low byte; extended codes like SQLITE_BUSY_RECOVERY
        # are still "somebody else holds it".
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


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
        self.path = Path(path)
        self.timeout = timeout
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot create IPAM state directory "
                           f"{self.path.parent}", str(exc)) from exc
        try:
            # isolation_level=None: the sqlite3 module must not open transactions
            # behind our back; we issue BEGIN IMMEDIATE/COMMIT ourselves.
            self._conn = sqlite3.connect(str(self.path), timeout=timeout,
                                         isolation_level=None)
        except sqlite3.Error as exc:
            raise CniError(IO_FAILURE, f"cannot open IPAM database {self.path}",
                           str(exc)) from exc
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    # -- connection and transactions -------------------------------------------------

    def _setup(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._conn.execute("PRAGMA foreign_keys = ON")
                mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    # Switching to WAL needs an exclusive lock and does not always go
                    # through the busy handler, hence the retry loop around it.
                    self._conn.execute("PRAGMA journal_mode = WAL")
                # Per connection, not stored in the file: without FULL a power cut
                # could lose a commit that already told the runtime "address X is
                # yours".
                self._conn.execute("PRAGMA synchronous = FULL")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise self._translate(exc, "opening") from exc
                time.sleep(0.01)
        # Read first: once the schema exists, opening must not queue behind a writer.
        if self._schema_version() == SCHEMA_VERSION:
            return
        with self._write("creating the schema") as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CniError(IO_FAILURE, f"IPAM database {self.path} has schema version "
                               f"{version}; this xvm-cni understands up to {SCHEMA_VERSION}",
                               "a newer xvm-cni wrote it; upgrade this host's plugin")
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version(self) -> int:
        try:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._translate(exc, "opening") from exc

    def _translate(self, exc: sqlite3.Error, doing: str) -> CniError:
        if _is_busy(exc):
            return CniError(
                TRY_AGAIN_LATER,
                f"IPAM database {self.path} is locked by another process",
                f"gave up {doing} after waiting {self.timeout:g}s; the runtime should retry",
            )
        return CniError(IO_FAILURE, f"IPAM database {self.path} failed while {doing}",
                        str(exc))

    @contextmanager
    def _transaction(self, mode: str, doing: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise self._translate(exc, doing) from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            self._rollback()
            raise self._translate(exc, doing) from exc
        except BaseException:
            self._rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._translate(exc, doing) from exc

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                # sqlite already rolled back on its own (e.g. after SQLITE_FULL); the
                # error that brought us here is the one worth reporting.
                return

    def _write(self, doing: str = "writing") -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("IMMEDIATE", doing)

    def _read(self, doing: str = "reading") -> AbstractContextManager[sqlite3.Connection]:
        # A read transaction so several SELECTs see one consistent snapshot.
        return self._transaction("DEFERRED", doing)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> IpamStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------

    @staticmethod
    def _load(conn: sqlite3.Connection, container_id: str, ifname: str) -> Attachment | None:
        row = conn.execute(
            "SELECT netns, host_ifname, created FROM attachments "
            "WHERE container_id = ? AND ifname = ?", (container_id, ifname)).fetchone()
        if row is None:
            return None
        addresses = [
            ipaddress.IPv4Interface(f"{address}/{prefixlen}")
            for address, prefixlen in conn.execute(
                "SELECT address, prefixlen FROM addresses WHERE container_id = ? AND ifname = ? "
                "ORDER BY position", (container_id, ifname))
        ]
        return Attachment(container_id=container_id, ifname=ifname, netns=row[0],
                          host_ifname=row[1], addresses=addresses, created=row[2])

    @staticmethod
    def _load_all(conn: sqlite3.Connection) -> list[Attachment]:
        by_key: dict[tuple[str, str], Attachment] = {}
        for cid, ifname, netns, host_ifname, created in conn.execute(
                "SELECT container_id, ifname, netns, host_ifname, created FROM attachments "
                "ORDER BY created, container_id, ifname"):
            by_key[(cid, ifname)] = Attachment(container_id=cid, ifname=ifname, netns=netns,
                                               host_ifname=host_ifname, created=created)
        for address, prefixlen, cid, ifname in conn.execute(
                "SELECT address, prefixlen, container_id, ifname FROM addresses "
                "ORDER BY position"):
            owner = by_key.get((cid, ifname))
            if owner is not None:
                owner.addresses.append(ipaddress.IPv4Interface(f"{address}/{prefixlen}"))
        return list(by_key.values())

    @staticmethod
    def _delete(conn: sqlite3.Connection, container_id: str, ifname: str) -> None:
        conn.execute("DELETE FROM addresses WHERE container_id = ? AND ifname = ?",
                     (container_id, ifname))
        conn.execute("DELETE FROM attachments WHERE container_id = ? AND ifname = ?",
                     (container_id, ifname))

    def get(self, container_id: str, ifname: str) -> Attachment | None:
        with self._read() as conn:
            return self._load(conn, container_id, ifname)

    def all(self) -> list[Attachment]:
        with self._read() as conn:
            return self._load_all(conn)

    def count(self) -> int:
        """How many attachments this network has on this host."""
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM attachments").fetchone()[0])

    def used_addresses(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM addresses").fetchone()[0])

    # -- writes ----------------------------------------------------------------------

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
        with self._write("recording an attachment") as conn:
            existing = self._load(conn, attachment.container_id, attachment.ifname)
            if existing is not None:
                return existing, False

            if pool is None:
                # The delegated IPAM plugin already chose; ``requested`` was its input.
                addresses = list(attachment.addresses)
            else:
                plen = prefixlen if prefixlen is not None else pool.subnet.prefixlen
                if requested:
                    chosen = self._check_requested(conn, pool, requested)
                else:
                    chosen = [self._next_free(conn, pool)]
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                  (_LAST_ALLOCATED, str(int(chosen[0]))))
                addresses = [ipaddress.IPv4Interface((a, plen)) for a in chosen]

            stored = dataclasses.replace(
                attachment, addresses=addresses,
                created=attachment.created or time.time())
            conn.execute(
                "INSERT INTO attachments (container_id, ifname, netns, host_ifname, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (stored.container_id, stored.ifname, stored.netns, stored.host_ifname,
                 stored.created))
            for position, iface in enumerate(addresses):
                self._insert_address(conn, stored, iface, position)
            return stored, True

    def _insert_address(self, conn: sqlite3.Connection, owner: Attachment,
                        iface: ipaddress.IPv4Interface, position: int) -> None:
        try:
            conn.execute(
                "INSERT INTO addresses (address, num, prefixlen, container_id, ifname, "
                "position) VALUES (?, ?, ?, ?, ?, ?)",
                (str(iface.ip), int(iface.ip), iface.network.prefixlen, owner.container_id,
                 owner.ifname, position))
        except sqlite3.IntegrityError as exc:
            # Only reachable in delegated mode: our own allocator checked already.
            holder = conn.execute("SELECT container_id, ifname FROM addresses WHERE num = ?",
                                  (int(iface.ip),)).fetchone()
            who = f"container {holder[0]} ({holder[1]})" if holder else "another attachment"
            raise CniError(ADDRESS_IN_USE, f"address {iface.ip} is already recorded for {who}",
                           "the IPAM plugin handed out an address this host still has "
                           "in use") from exc

    @staticmethod
    def _check_requested(conn: sqlite3.Connection, pool: AddressPool,
                         requested: list[ipaddress.IPv4Address]) -> list[ipaddress.IPv4Address]:
        reserved = pool.reserved()
        seen: set[ipaddress.IPv4Address] = set()
        for addr in requested:
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
            seen.add(addr)
            holder = conn.execute("SELECT container_id, ifname FROM addresses WHERE num = ?",
                                  (int(addr),)).fetchone()
            if holder is not None:
                raise CniError(ADDRESS_IN_USE,
                               f"requested address {addr} is in use by container "
                               f"{holder[0]} ({holder[1]})")
        return list(requested)

    @staticmethod
    def _next_free(conn: sqlite3.Connection, pool: AddressPool) -> ipaddress.IPv4Address:
        lo, hi = int(pool.first), int(pool.last)
        span = hi - lo + 1
        used = {row[0] for row in conn.execute(
            "SELECT num FROM addresses WHERE num BETWEEN ? AND ?", (lo, hi))}
        blocked = used | {int(a) for a in pool.reserved() if lo <= int(a) <= hi}
        if span > len(blocked):
            row = conn.execute("SELECT value FROM meta WHERE key = ?",
                               (_LAST_ALLOCATED,)).fetchone()
            last = int(row[0]) if row is not None else None
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

    def update_host_ifname(self, container_id: str, ifname: str, host_ifname: str,
                           netns: str) -> None:
        with self._write("updating an attachment") as conn:
            cur = conn.execute(
                "UPDATE attachments SET host_ifname = ?, netns = ? "
                "WHERE container_id = ? AND ifname = ?",
                (host_ifname, netns, container_id, ifname))
            if cur.rowcount == 0:
                # The record vanished under us (a concurrent DEL or GC): carrying on
                # would leave a live interface whose address is free for reuse.
                raise CniError(UNKNOWN_CONTAINER,
                               f"no attachment recorded for container {container_id} "
                               f"({ifname})", "it was removed while being set up")

    def detach(self, container_id: str, ifname: str) -> Attachment | None:
        """Remove the record and release its addresses; None if there was none."""
        with self._write("removing an attachment") as conn:
            existing = self._load(conn, container_id, ifname)
            if existing is not None:
                self._delete(conn, container_id, ifname)
            return existing

    def gc(self, valid: set[tuple[str, str]]) -> list[Attachment]:
        """Remove every attachment whose (container_id, ifname) is not in ``valid``;
        return what was removed."""
        with self._write("collecting stale attachments") as conn:
            stale = [a for a in self._load_all(conn)
                     if (a.container_id, a.ifname) not in valid]
            for att in stale:
                self._delete(conn, att.container_id, att.ifname)
            return stale
