"""Registry schema 2: addresses of both families (the text key), and the in-place
migration of a schema-1 file."""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path

import pytest

from xvmcni.errors import ADDRESS_IN_USE, CniError
from xvmcni.state.attachments import (
    SCHEMA_VERSION,
    Attachment,
    AttachmentRegistry,
    Given,
    address_key,
)

# Schema 1 exactly as the released registry created it.
V1 = (
    """CREATE TABLE attachments (container_id TEXT NOT NULL, ifname TEXT NOT NULL,
        netns TEXT NOT NULL DEFAULT '', host_ifname TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL, PRIMARY KEY (container_id, ifname))""",
    """CREATE TABLE addresses (address TEXT PRIMARY KEY, num INTEGER NOT NULL UNIQUE,
        prefixlen INTEGER NOT NULL, container_id TEXT NOT NULL, ifname TEXT NOT NULL,
        position INTEGER NOT NULL DEFAULT 0, FOREIGN KEY (container_id, ifname)
        REFERENCES attachments (container_id, ifname) ON DELETE CASCADE)""",
    "CREATE INDEX addresses_owner ON addresses (container_id, ifname)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def write_v1(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    for statement in V1:
        conn.execute(statement)
    conn.execute("INSERT INTO attachments VALUES ('c1', 'eth0', '/run/netns/p1', 'xvmaaa', 1.0)")
    conn.execute("INSERT INTO attachments VALUES ('c2', 'eth0', '/run/netns/p2', 'xvmbbb', 2.0)")
    for address, owner, pos in (("10.244.1.2", "c1", 0), ("10.244.1.3", "c1", 1),
                                ("10.244.1.10", "c2", 0)):
        conn.execute("INSERT INTO addresses VALUES (?, ?, 24, ?, 'eth0', ?)",
                     (address, int(ipaddress.IPv4Address(address)), owner, pos))
    conn.execute("INSERT INTO meta VALUES ('last_allocated', '184549642')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_v1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    write_v1(path)
    with AttachmentRegistry(path) as reg:
        found = {a.container_id: [str(x) for x in a.addresses] for a in reg.all()}
        assert found == {"c1": ["10.244.1.2/24", "10.244.1.3/24"], "c2": ["10.244.1.10/24"]}
        got = reg.get("c2", "eth0")
        assert got is not None and got.host_ifname == "xvmbbb"
        net = ipaddress.IPv4Network("10.244.1.0/24")
        lo, hi = int(net.network_address), int(net.broadcast_address)
        assert reg.used_addresses(lo, hi) == 3
        with reg.db.read() as conn:
            assert conn.execute("SELECT value FROM meta").fetchone()[0] == "184549642"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            columns = [row[1] for row in conn.execute("PRAGMA table_info(addresses)")]
            assert "num" not in columns and "key" in columns
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
            assert "addresses_v1" not in tables and "addresses_owner" in tables
        # Still enforced after the migration: one address, one holder; cascade on delete.
        dup = Attachment("c3", "eth0")
        with pytest.raises(CniError) as info:
            reg.attach(dup, Given((ipaddress.IPv4Interface("10.244.1.10/24"),)))
        assert info.value.code == ADDRESS_IN_USE
        reg.detach("c1", "eth0")
        assert reg.used_addresses() == 1
    # Opening again is a no-op (already version 2).
    with AttachmentRegistry(path) as reg:
        assert reg.used_addresses() == 1


def test_both_families_are_recorded(tmp_path: Path) -> None:
    with AttachmentRegistry(tmp_path / "ipam.db") as reg:
        v4 = ipaddress.IPv4Interface("10.244.1.2/24")
        v6 = ipaddress.IPv6Interface("fd00:1::2/64")
        reg.attach(Attachment("c1", "eth0"), Given((v4, v6)))
        got = reg.get("c1", "eth0")
        assert got is not None and got.addresses == [v4, v6]
        net = ipaddress.IPv6Network("fd00:1::/64")
        lo, hi = int(net.network_address), int(net.broadcast_address)
        assert reg.used_addresses(lo, hi, version=6) == 1
        # The same integer in the other family is another address.
        assert reg.used_addresses(int(v6.ip), int(v6.ip), version=4) == 0
        with reg.db.read() as conn:
            keys = sorted(row[0] for row in conn.execute("SELECT key FROM addresses"))
        assert keys == [address_key(4, int(v4.ip)), address_key(6, int(v6.ip))]
        assert keys[1] == "6:fd000001000000000000000000000002"
