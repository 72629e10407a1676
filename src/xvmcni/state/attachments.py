"""The attachment registry: which (container, interface) pairs this network has on
this host, with their netns, host-side device and addresses.

The registry records; it does not choose addresses. An allocator (``ipam/``) is
handed an ``AddressBook`` inside the registry's write transaction, so choosing an
address and recording it are one atomic step, whoever chooses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from xvmcni.errors import ADDRESS_IN_USE, INVALID_CONFIG, UNKNOWN_CONTAINER, CniError
from xvmcni.state.db import Database

SCHEMA_VERSION = 3
# Container ID of an attachment rebuilt from the host (``xvmctl ipam rebuild``) whose
# real ID no evidence named: this prefix + its host device. The runtime's next DEL or
# GC for the container owning that device gives it its real name.
UNNAMED_PREFIX = "rebuilt:"

# '' when the container kept the MAC derived from its address (unique as addresses are).
_MAC_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS attachments_mac ON attachments (mac) "
              "WHERE mac != ''")
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ``key`` duplicates ``address`` as "<family>:<zero-padded hex of the integer>" (8 hex
# digits for IPv4, 32 for IPv6), so an allocator can ask for just the addresses inside
# its pool with a range query on text that sorts like the numbers (sqlite's INTEGER
# is 64 bits: schemas 1 and 2's ``num`` could not hold an IPv6 address). ``position`` keeps
# the order the addresses were handed out in (the first is the primary address).
ADDRESSES_V3 = """CREATE TABLE IF NOT EXISTS addresses (
        address TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        prefixlen INTEGER NOT NULL,
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        position INTEGER NOT NULL DEFAULT 0,
        FOREIGN KEY (container_id, ifname)
            REFERENCES attachments (container_id, ifname) ON DELETE CASCADE
    )"""
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS attachments (
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        netns TEXT NOT NULL DEFAULT '',
        host_ifname TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        mac TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (container_id, ifname)
    )""",
    ADDRESSES_V3,
    "CREATE INDEX IF NOT EXISTS addresses_owner ON addresses (container_id, ifname)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _MAC_INDEX,
)


def address_key(version: int, value: int) -> str:
    """The sortable text key of an address given as (family, integer)."""
    return f"{version}:{value:0{8 if version == 4 else 32}x}"


def key_of(addr: IPAddress) -> str:
    return address_key(addr.version, int(addr))


def migrate_v1_to_v2(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the MAC a container asked for, so no other pod of the network
    may take it."""
    conn.execute("ALTER TABLE attachments ADD COLUMN mac TEXT NOT NULL DEFAULT ''")
    conn.execute(_MAC_INDEX)


def migrate_v2_to_v3(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: the ``addresses`` table's INTEGER ``num`` becomes the text
    ``key`` (IPv6 addresses fit). Everything else is unchanged. Every earlier row is
    IPv4 (the registry could not store anything else)."""
    conn.execute("ALTER TABLE addresses RENAME TO addresses_v1")
    conn.execute("DROP INDEX IF EXISTS addresses_owner")
    conn.execute(ADDRESSES_V3)
    conn.execute(
        "INSERT INTO addresses (address, key, prefixlen, container_id, ifname, position) "
        "SELECT address, printf('4:%08x', num), prefixlen, container_id, ifname, position "
        "FROM addresses_v1")
    conn.execute("DROP TABLE addresses_v1")


# Upgrades of files an older xvm-cni wrote: from-version -> the step to the next one.
MIGRATIONS = {1: migrate_v1_to_v2, 2: migrate_v2_to_v3}


@dataclass
class Attachment:
    """One (container, interface) on this network and host."""

    container_id: str
    ifname: str
    netns: str = ""
    host_ifname: str = ""
    # Addresses with prefix length, as handed to the container ("10.244.11.5/16").
    addresses: list[IPInterface] = field(default_factory=list)
    created: float = 0.0
    # The MAC the runtime requested ('' : derived from the address).
    mac: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)


class AddressBook:
    """What an allocator may see and note inside the registry's write transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def holder(self, addr: IPAddress) -> tuple[str, str] | None:
        """(container_id, ifname) holding ``addr``, or None when it is free."""
        row = self._conn.execute("SELECT container_id, ifname FROM addresses WHERE key = ?",
                                 (key_of(addr),)).fetchone()
        return (str(row[0]), str(row[1])) if row is not None else None

    def used_between(self, lo: int, hi: int, version: int = 4) -> set[int]:
        """Addresses of family ``version`` in use in [lo, hi], as integers."""
        return {int(row[0][2:], 16) for row in self._conn.execute(
            "SELECT key FROM addresses WHERE key BETWEEN ? AND ?",
            (address_key(version, lo), address_key(version, hi)))}

    def note(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row is not None else None

    def set_note(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           (key, value))


class Allocator(Protocol):
    """Chooses the addresses of a new attachment, inside the write transaction."""

    def choose(self, book: AddressBook) -> list[IPInterface]: ...


@dataclass(frozen=True)
class Given:
    """Addresses chosen elsewhere (a delegated IPAM plugin): record them as they are."""

    addresses: tuple[IPInterface, ...]

    def choose(self, book: AddressBook) -> list[IPInterface]:
        return list(self.addresses)


class AttachmentRegistry:
    """The network's ``<state dir>/ipam.db``; safe for many processes at once."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.db = Database(path, SCHEMA, SCHEMA_VERSION, timeout, MIGRATIONS)
        self.path = self.db.path

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AttachmentRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------

    @staticmethod
    def _load(conn: sqlite3.Connection, container_id: str, ifname: str) -> Attachment | None:
        row = conn.execute(
            "SELECT netns, host_ifname, created, mac FROM attachments "
            "WHERE container_id = ? AND ifname = ?", (container_id, ifname)).fetchone()
        if row is None:
            return None
        addresses = [
            ipaddress.ip_interface(f"{address}/{prefixlen}")
            for address, prefixlen in conn.execute(
                "SELECT address, prefixlen FROM addresses WHERE container_id = ? AND ifname = ? "
                "ORDER BY position", (container_id, ifname))
        ]
        return Attachment(container_id=container_id, ifname=ifname, netns=row[0],
                          host_ifname=row[1], addresses=addresses, created=row[2],
                          mac=row[3])

    @staticmethod
    def _load_all(conn: sqlite3.Connection) -> list[Attachment]:
        by_key: dict[tuple[str, str], Attachment] = {}
        for cid, ifname, netns, host_ifname, created, mac in conn.execute(
                "SELECT container_id, ifname, netns, host_ifname, created, mac "
                "FROM attachments ORDER BY created, container_id, ifname"):
            by_key[(cid, ifname)] = Attachment(container_id=cid, ifname=ifname, netns=netns,
                                               host_ifname=host_ifname, created=created,
                                               mac=mac)
        for address, prefixlen, cid, ifname in conn.execute(
                "SELECT address, prefixlen, container_id, ifname FROM addresses "
                "ORDER BY position"):
            owner = by_key.get((cid, ifname))
            if owner is not None:
                owner.addresses.append(ipaddress.ip_interface(f"{address}/{prefixlen}"))
        return list(by_key.values())

    @staticmethod
    def _delete(conn: sqlite3.Connection, container_id: str, ifname: str) -> None:
        conn.execute("DELETE FROM addresses WHERE container_id = ? AND ifname = ?",
                     (container_id, ifname))
        conn.execute("DELETE FROM attachments WHERE container_id = ? AND ifname = ?",
                     (container_id, ifname))

    def get(self, container_id: str, ifname: str) -> Attachment | None:
        with self.db.read() as conn:
            return self._load(conn, container_id, ifname)

    def all(self) -> list[Attachment]:
        with self.db.read() as conn:
            return self._load_all(conn)

    def count(self) -> int:
        """How many attachments this network has on this host."""
        with self.db.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM attachments").fetchone()[0])

    def mac_holder(self, mac: str) -> tuple[str, str] | None:
        """(container_id, ifname) that requested ``mac``, or None."""
        with self.db.read() as conn:
            row = conn.execute("SELECT container_id, ifname FROM attachments WHERE mac = ?",
                               (mac.lower(),)).fetchone()
        return (str(row[0]), str(row[1])) if row is not None else None

    def used_addresses(self, lo: int | None = None, hi: int | None = None,
                       version: int = 4) -> int:
        """Addresses recorded, all of them or those of family ``version`` in [lo, hi]
        (integers)."""
        with self.db.read() as conn:
            if lo is None or hi is None:
                return int(conn.execute("SELECT COUNT(*) FROM addresses").fetchone()[0])
            return int(conn.execute(
                "SELECT COUNT(*) FROM addresses WHERE key BETWEEN ? AND ?",
                (address_key(version, lo), address_key(version, hi))).fetchone()[0])

    # -- writes ----------------------------------------------------------------------

    def attach(self, attachment: Attachment, allocator: Allocator) -> tuple[Attachment, bool]:
        """Record ``attachment`` with the addresses ``allocator`` chooses, in one
        transaction.

        Already recorded (same container_id and ifname): (existing, False), unchanged:
        a repeated ADD never gets a second address. Otherwise (stored, True).
        """
        with self.db.write("recording an attachment") as conn:
            existing = self._load(conn, attachment.container_id, attachment.ifname)
            if existing is not None:
                return existing, False
            addresses = allocator.choose(AddressBook(conn))
            stored = dataclasses.replace(attachment, addresses=addresses,
                                         created=attachment.created or time.time())
            try:
                conn.execute(
                    "INSERT INTO attachments (container_id, ifname, netns, host_ifname, "
                    "created, mac) VALUES (?, ?, ?, ?, ?, ?)",
                    (stored.container_id, stored.ifname, stored.netns, stored.host_ifname,
                     stored.created, stored.mac.lower()))
            except sqlite3.IntegrityError as exc:
                # Only the MAC can collide here (the key was looked up above).
                raise CniError(INVALID_CONFIG,
                               f"requested MAC {stored.mac} is held by another pod of this "
                               "network on this host") from exc
            for position, iface in enumerate(addresses):
                self._insert_address(conn, stored, iface, position)
            return stored, True

    @staticmethod
    def _insert_address(conn: sqlite3.Connection, owner: Attachment,
                        iface: IPInterface, position: int) -> None:
        try:
            conn.execute(
                "INSERT INTO addresses (address, key, prefixlen, container_id, ifname, "
                "position) VALUES (?, ?, ?, ?, ?, ?)",
                (str(iface.ip), key_of(iface.ip), iface.network.prefixlen, owner.container_id,
                 owner.ifname, position))
        except sqlite3.IntegrityError as exc:
            # Reachable with addresses chosen elsewhere: our own allocator checked.
            holder = AddressBook(conn).holder(iface.ip)
            who = f"container {holder[0]} ({holder[1]})" if holder else "another attachment"
            raise CniError(ADDRESS_IN_USE, f"address {iface.ip} is already recorded for {who}",
                           "the IPAM plugin handed out an address this host still has "
                           "in use") from exc

    def update_host_ifname(self, container_id: str, ifname: str, host_ifname: str,
                           netns: str) -> None:
        with self.db.write("updating an attachment") as conn:
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

    def unnamed(self, host_ifname: str) -> Attachment | None:
        """The attachment ``xvmctl ipam rebuild`` recorded for device ``host_ifname``
        without knowing its container ID (``UNNAMED_PREFIX`` + device), or None."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT container_id, ifname FROM attachments WHERE host_ifname = ? "
                "AND substr(container_id, 1, ?) = ?",
                (host_ifname, len(UNNAMED_PREFIX), UNNAMED_PREFIX)).fetchone()
            return self._load(conn, str(row[0]), str(row[1])) if row is not None else None

    def rename(self, old: tuple[str, str], new: tuple[str, str]) -> None:
        """Give an attachment its real (container_id, ifname), addresses and all."""
        with self.db.write("naming a rebuilt attachment") as conn:
            # The addresses point at the key being changed: check them at COMMIT.
            conn.execute("PRAGMA defer_foreign_keys = ON")
            for table in ("attachments", "addresses"):
                conn.execute(f"UPDATE {table} SET container_id = ?, ifname = ? "  # noqa: S608
                             "WHERE container_id = ? AND ifname = ?", (*new, *old))

    def detach(self, container_id: str, ifname: str) -> Attachment | None:
        """Remove the record and release its addresses; None if there was none."""
        with self.db.write("removing an attachment") as conn:
            existing = self._load(conn, container_id, ifname)
            if existing is not None:
                self._delete(conn, container_id, ifname)
            return existing

    def gc(self, valid: set[tuple[str, str]]) -> list[Attachment]:
        """Remove every attachment whose (container_id, ifname) is not in ``valid``;
        return what was removed."""
        with self.db.write("collecting stale attachments") as conn:
            stale = [a for a in self._load_all(conn) if a.key not in valid]
            for att in stale:
                self._delete(conn, att.container_id, att.ifname)
            return stale


class RegistryCache:
    """Registries kept open per thread (the agent). Closing sqlite's last connection
    checkpoints the WAL (fsyncs) every time; keeping it open doesn't."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, path: Path, timeout: float) -> AttachmentRegistry:
        cache: dict[Path, tuple[int, AttachmentRegistry]] = \
            self._local.__dict__.setdefault("by_path", {})
        inode = path.stat().st_ino if path.exists() else -1
        cached = cache.get(path)
        # A different inode: the file was replaced (e.g. rebuilt); drop the old handle.
        if cached is None or cached[0] != inode or inode == -1:
            if cached is not None:
                cached[1].close()
                del cache[path]
            registry = AttachmentRegistry(path, timeout)
            cache[path] = (path.stat().st_ino, registry)
        return cache[path][1]


@contextmanager
def open_registry(path: Path, timeout: float,
                  cache: RegistryCache | None = None) -> Iterator[AttachmentRegistry]:
    """The registry at ``path``: a fresh connection, or the thread's cached one."""
    if cache is not None:
        yield cache.get(path, timeout)
        return
    registry = AttachmentRegistry(path, timeout)
    try:
        yield registry
    finally:
        registry.close()
