"""AttachmentRegistry with the slice allocator: durable attachment records and address
allocation in one transaction, no root needed."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import stat
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest

from xvmcni.errors import (
    ADDRESS_EXHAUSTED,
    ADDRESS_IN_USE,
    INVALID_CONFIG,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
)
from xvmcni.ipam.pool import AddressPool, pool_for_host
from xvmcni.ipam.slices import SliceAllocator
from xvmcni.state.attachments import Attachment, AttachmentRegistry, Given

SUBNET = IPv4Network("10.244.0.0/16")
GATEWAY = IPv4Address("10.244.0.1")
# Forked children inherit the imported modules; spawn would re-import this file
# under pytest's module name, which is fragile across runners.
MP = multiprocessing.get_context("fork")


def a(text: str) -> IPv4Address:
    return IPv4Address(text)


def tiny_pool(first: str, last: str) -> AddressPool:
    return AddressPool(SUBNET, GATEWAY, a(first), a(last))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "xvm-network" / "ipam.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[AttachmentRegistry]:
    s = AttachmentRegistry(db_path, timeout=5.0)
    yield s
    s.close()


@pytest.fixture
def pool() -> AddressPool:
    return pool_for_host(SUBNET, GATEWAY, a("172.30.0.11"), None, None, None)


def attach(store: AttachmentRegistry, pool: AddressPool | None, cid: str, ifname: str = "eth0",
           requested: list[IPv4Address] | None = None,
           prefixlen: int | None = None) -> tuple[Attachment, bool]:
    assert pool is not None
    allocator = SliceAllocator(pool, tuple(requested or ()), prefixlen)
    return store.attach(Attachment(container_id=cid, ifname=ifname), allocator)


def address_of(att: Attachment) -> IPv4Address:
    assert len(att.addresses) == 1, att
    return att.addresses[0].ip


def raw_rows(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    conn = sqlite3.connect(str(path))
    try:
        atts = conn.execute("SELECT container_id, ifname FROM attachments").fetchall()
        addrs = conn.execute("SELECT address, container_id, ifname FROM addresses").fetchall()
        return atts, addrs
    finally:
        conn.close()


# -- opening -------------------------------------------------------------------------


def test_creates_private_directory_and_wal_database(db_path: Path) -> None:
    assert not db_path.parent.exists()
    AttachmentRegistry(db_path).close()
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(str(db_path))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_records_survive_reopen(db_path: Path, pool: AddressPool) -> None:
    with AttachmentRegistry(db_path) as first:
        stored, _ = attach(first, pool, "c1")
    with AttachmentRegistry(db_path) as second:
        assert second.get("c1", "eth0") == stored
        # The round-robin cursor is persistent too.
        nxt, _ = attach(second, pool, "c2")
    assert int(address_of(nxt)) == int(address_of(stored)) + 1


# -- allocation ----------------------------------------------------------------------


def test_allocates_unique_addresses_from_the_pool(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    got = [address_of(attach(store, pool, f"c{i}")[0]) for i in range(50)]
    assert len(set(got)) == 50
    assert all(addr in pool for addr in got)
    assert store.used_addresses() == 50


def test_first_allocation_starts_at_the_pool_start(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    stored, created = attach(store, pool, "c1")
    assert created is True
    assert stored.addresses == [IPv4Interface("10.244.11.1/16")]
    assert stored.created > 0


def test_reserved_addresses_are_skipped(store: AttachmentRegistry) -> None:
    # A range starting at the network address: .0 and the gateway .1 are skipped.
    p = tiny_pool("10.244.0.0", "10.244.0.3")
    got = [address_of(attach(store, p, f"c{i}")[0]) for i in range(2)]
    assert got == [a("10.244.0.2"), a("10.244.0.3")]
    with pytest.raises(CniError) as info:
        attach(store, p, "c3")
    assert info.value.code == ADDRESS_EXHAUSTED


def test_prefixlen_override(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    stored, _ = attach(store, pool, "c1", prefixlen=24)
    assert stored.addresses[0].network.prefixlen == 24
    assert store.get("c1", "eth0") == stored


def test_attach_keeps_given_fields(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    att = Attachment(container_id="c1", ifname="net1", netns="/run/netns/x",
                     host_ifname="veth123", created=42.0)
    stored, _ = store.attach(att, SliceAllocator(pool))
    assert (stored.netns, stored.host_ifname, stored.created) == ("/run/netns/x", "veth123", 42.0)
    assert store.get("c1", "net1") == stored


def test_idempotent_attach_returns_same_address(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    first, created1 = attach(store, pool, "c1")
    again, created2 = store.attach(
        Attachment(container_id="c1", ifname="eth0", netns="/other"),
        SliceAllocator(pool, (a("10.244.11.77"),)))
    assert (created1, created2) == (True, False)
    assert again == first
    assert store.used_addresses() == 1
    # Another interface of the same container is a separate attachment.
    second_if, created3 = attach(store, pool, "c1", "eth1")
    assert created3 is True
    assert address_of(second_if) != address_of(first)


def test_requested_static_address_outside_the_pool_is_refused(
        store: AttachmentRegistry, pool: AddressPool) -> None:
    # Another host's slice: that host would hand it out again (issue 7 item 7).
    want = a("10.244.200.9")
    assert want not in pool
    with pytest.raises(CniError) as info:
        attach(store, pool, "c1", requested=[want])
    assert info.value.code == INVALID_CONFIG
    assert "outside this host's pool" in info.value.msg and "staticIPs" in info.value.details
    assert store.count() == 0


def test_requested_static_address_in_the_pool(store: AttachmentRegistry,
                                              pool: AddressPool) -> None:
    stored, created = attach(store, pool, "c1", requested=[a("10.244.11.200")])
    assert created and address_of(stored) == a("10.244.11.200")


def test_requested_static_address_anywhere_in_the_subnet(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    # "staticIPs": "subnet": anywhere in the subnet, even outside this host's slice.
    want = a("10.244.200.9")
    assert want not in pool
    stored, created = store.attach(Attachment("c1", "eth0"),
                                   SliceAllocator(pool, (want,), static_ips="subnet"))
    assert created
    assert stored.addresses == [IPv4Interface("10.244.200.9/16")]
    # A static allocation does not move the round-robin cursor off the pool.
    nxt, _ = attach(store, pool, "c2")
    assert address_of(nxt) == pool.first


def test_requested_address_in_use(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    held, _ = attach(store, pool, "c1")
    with pytest.raises(CniError) as info:
        attach(store, pool, "c2", requested=[address_of(held)])
    assert info.value.code == ADDRESS_IN_USE
    assert "c1" in info.value.msg
    assert store.get("c2", "eth0") is None


@pytest.mark.parametrize(
    "requested",
    [
        ["10.245.0.5"],                 # outside the subnet
        ["10.244.0.1"],                 # gateway
        ["10.244.0.0"],                 # network address
        ["10.244.255.255"],             # broadcast address
        ["10.244.3.3", "10.244.3.3"],   # the same address twice
        ["10.244.3.4", "192.168.0.1"],  # second one bad: nothing at all is recorded
    ],
)
def test_requested_address_invalid(store: AttachmentRegistry, pool: AddressPool,
                                   requested: list[str]) -> None:
    with pytest.raises(CniError) as info:
        attach(store, pool, "c1", requested=[a(r) for r in requested])
    assert info.value.code == INVALID_CONFIG
    assert store.get("c1", "eth0") is None
    assert store.used_addresses() == 0


def test_several_requested_addresses_keep_their_order(store: AttachmentRegistry,
                                                      pool: AddressPool) -> None:
    want = [a("10.244.11.9"), a("10.244.11.1"), a("10.244.11.5")]
    stored, _ = attach(store, pool, "c1", requested=want)
    assert [i.ip for i in stored.addresses] == want
    got = store.get("c1", "eth0")
    assert got is not None
    assert [i.ip for i in got.addresses] == want


def test_exhaustion(store: AttachmentRegistry) -> None:
    p = tiny_pool("10.244.1.10", "10.244.1.11")
    attach(store, p, "c1")
    attach(store, p, "c2")
    with pytest.raises(CniError) as info:
        attach(store, p, "c3")
    assert info.value.code == ADDRESS_EXHAUSTED
    assert "10.244.1.10" in info.value.msg
    assert store.get("c3", "eth0") is None
    assert store.used_addresses() == 2
    # Releasing one makes room again.
    store.detach("c1", "eth0")
    assert address_of(attach(store, p, "c3")[0]) == a("10.244.1.10")


def test_round_robin_does_not_reuse_a_released_address_at_once(store: AttachmentRegistry) -> None:
    p = tiny_pool("10.244.1.10", "10.244.1.14")
    c1 = address_of(attach(store, p, "c1")[0])
    c2 = address_of(attach(store, p, "c2")[0])
    store.detach("c1", "eth0")
    c3 = address_of(attach(store, p, "c3")[0])
    assert (c1, c2, c3) == (a("10.244.1.10"), a("10.244.1.11"), a("10.244.1.12"))
    c4 = address_of(attach(store, p, "c4")[0])
    c5 = address_of(attach(store, p, "c5")[0])
    assert (c4, c5) == (a("10.244.1.13"), a("10.244.1.14"))
    # The cursor wraps to the pool start, where c1's old address is free again.
    assert address_of(attach(store, p, "c6")[0]) == a("10.244.1.10")


def test_cursor_outside_a_changed_pool_restarts_at_its_start(store: AttachmentRegistry) -> None:
    attach(store, tiny_pool("10.244.1.10", "10.244.1.20"), "c1")
    moved = tiny_pool("10.244.7.0", "10.244.7.9")
    assert address_of(attach(store, moved, "c2")[0]) == a("10.244.7.0")


def test_large_pool(store: AttachmentRegistry) -> None:
    big = IPv4Network("10.0.0.0/8")
    p = AddressPool(big, a("10.0.0.1"), big.network_address, big.broadcast_address)
    assert p.size() == 2**24 - 3
    got = [address_of(store.attach(Attachment(f"c{i}", "eth0"), SliceAllocator(p))[0])
           for i in range(3)]
    assert got == [a("10.0.0.2"), a("10.0.0.3"), a("10.0.0.4")]


# -- delegated IPAM ------------------------------------------------------------------


def test_delegated_mode_records_addresses_as_given(store: AttachmentRegistry) -> None:
    given = [IPv4Interface("10.244.3.7/16"), IPv4Interface("10.244.3.8/24")]
    stored, created = store.attach(Attachment("c1", "eth0"), Given(tuple(given)))
    assert created
    assert stored.addresses == given
    got = store.get("c1", "eth0")
    assert got is not None
    assert got.addresses == given
    assert store.used_addresses() == 2


def test_delegated_mode_without_addresses(store: AttachmentRegistry) -> None:
    stored, created = store.attach(Attachment("c1", "eth0"), Given(()))
    assert created
    assert stored.addresses == []
    assert store.get("c1", "eth0") == stored
    assert store.used_addresses() == 0


def test_delegated_duplicate_address_rejected(store: AttachmentRegistry) -> None:
    iface = IPv4Interface("10.244.3.7/16")
    store.attach(Attachment("c1", "eth0"), Given((iface,)))
    with pytest.raises(CniError) as info:
        store.attach(Attachment("c2", "eth0"), Given((iface,)))
    assert info.value.code == ADDRESS_IN_USE
    assert store.get("c2", "eth0") is None


# -- update, detach, gc --------------------------------------------------------------


def test_update_host_ifname(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    attach(store, pool, "c1")
    store.update_host_ifname("c1", "eth0", "veth0a1b", "/run/netns/c1")
    got = store.get("c1", "eth0")
    assert got is not None
    assert (got.host_ifname, got.netns) == ("veth0a1b", "/run/netns/c1")


def test_update_host_ifname_of_unknown_attachment(store: AttachmentRegistry) -> None:
    with pytest.raises(CniError) as info:
        store.update_host_ifname("nope", "eth0", "veth0", "/run/netns/x")
    assert info.value.code == UNKNOWN_CONTAINER


def test_detach_releases(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    stored, _ = attach(store, pool, "c1")
    other, _ = attach(store, pool, "c2")
    removed = store.detach("c1", "eth0")
    assert removed == stored
    assert store.get("c1", "eth0") is None
    assert store.used_addresses() == 1
    assert store.detach("c1", "eth0") is None
    # The released address can be requested by someone else now.
    again, _ = attach(store, pool, "c3", requested=[address_of(stored)])
    assert address_of(again) == address_of(stored)
    assert store.get("c2", "eth0") == other


def test_gc_keeps_only_valid_pairs(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    for cid, ifname in [("c1", "eth0"), ("c1", "eth1"), ("c2", "eth0"), ("c3", "eth0")]:
        attach(store, pool, cid, ifname)
    removed = store.gc({("c1", "eth0"), ("c3", "eth0"), ("ghost", "eth0")})
    assert sorted((r.container_id, r.ifname) for r in removed) == [("c1", "eth1"), ("c2", "eth0")]
    assert all(len(r.addresses) == 1 for r in removed)
    assert sorted((r.container_id, r.ifname) for r in store.all()) == \
        [("c1", "eth0"), ("c3", "eth0")]
    assert store.used_addresses() == 2
    assert store.gc({("c1", "eth0"), ("c3", "eth0")}) == []
    assert len(store.gc(set())) == 2
    assert store.all() == []
    assert store.used_addresses() == 0


def test_all_lists_every_attachment_with_addresses(store: AttachmentRegistry,
        pool: AddressPool) -> None:
    made = [attach(store, pool, f"c{i}")[0] for i in range(5)]
    listed = store.all()
    key = lambda x: (x.container_id, x.ifname)  # noqa: E731
    assert sorted(listed, key=key) == sorted(made, key=key)


# -- locking -------------------------------------------------------------------------


def test_lock_timeout_is_try_again_later(db_path: Path, pool: AddressPool) -> None:
    AttachmentRegistry(db_path).close()
    holder = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with AttachmentRegistry(db_path, timeout=0.2) as s:
            with pytest.raises(CniError) as info:
                attach(s, pool, "c1")
            assert info.value.code == TRY_AGAIN_LATER
            assert str(db_path) in info.value.msg
            assert "locked" in info.value.msg
            # Reads are not blocked by a writer in WAL mode.
            assert s.get("c1", "eth0") is None
            holder.execute("ROLLBACK")
            # The failed transaction left the connection usable.
            stored, created = attach(s, pool, "c1")
            assert created
            assert s.get("c1", "eth0") == stored
    finally:
        holder.close()


def test_lock_timeout_on_every_write(db_path: Path, pool: AddressPool) -> None:
    with AttachmentRegistry(db_path) as s:
        attach(s, pool, "c1")
    holder = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with AttachmentRegistry(db_path, timeout=0.2) as s:
            for op in (lambda: s.detach("c1", "eth0"),
                       lambda: s.gc(set()),
                       lambda: s.update_host_ifname("c1", "eth0", "v", "/n")):
                with pytest.raises(CniError) as info:
                    op()
                assert info.value.code == TRY_AGAIN_LATER
    finally:
        holder.close()


# -- many processes ------------------------------------------------------------------


def _attach_many(path: str, worker: int, count: int, start: Barrier) -> None:
    p = pool_for_host(SUBNET, GATEWAY, a("172.30.0.11"), None, None, None)
    with AttachmentRegistry(Path(path), timeout=60.0) as s:
        start.wait()
        for i in range(count):
            s.attach(Attachment(f"w{worker}-c{i}", "eth0"), SliceAllocator(p))


def test_concurrent_processes_get_unique_addresses(db_path: Path) -> None:
    workers, each = 8, 25
    AttachmentRegistry(db_path).close()
    start = MP.Barrier(workers)
    procs = [MP.Process(target=_attach_many, args=(str(db_path), w, each, start))
             for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * workers

    with AttachmentRegistry(db_path) as s:
        records = s.all()
        assert len(records) == workers * each
        assert {(r.container_id, r.ifname) for r in records} == \
            {(f"w{w}-c{i}", "eth0") for w in range(workers) for i in range(each)}
        addresses = [address_of(r) for r in records]
        assert len(set(addresses)) == workers * each
        assert s.used_addresses() == workers * each


# -- crash safety --------------------------------------------------------------------


WHOLE = AddressPool(SUBNET, GATEWAY, SUBNET.network_address, SUBNET.broadcast_address)


def _churn(path: str, round_no: int, running: Event) -> None:
    with AttachmentRegistry(Path(path), timeout=60.0) as s:
        i = 0
        while True:
            s.attach(Attachment(f"r{round_no}-c{i}", "eth0"), SliceAllocator(WHOLE))
            s.update_host_ifname(f"r{round_no}-c{i}", "eth0", f"veth{i}", "/run/netns/x")
            # Releasing as well, so the kill can land inside a detach too.
            if i % 3 == 2:
                s.detach(f"r{round_no}-c{i - 1}", "eth0")
            if i == 0:
                running.set()
            i += 1


def _check_consistent(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute(
            "SELECT a.address FROM addresses a LEFT JOIN attachments t "
            "ON a.container_id = t.container_id AND a.ifname = t.ifname "
            "WHERE t.container_id IS NULL").fetchall()
        assert orphans == []
        counts = conn.execute(
            "SELECT t.container_id, COUNT(a.address) FROM attachments t "
            "LEFT JOIN addresses a ON a.container_id = t.container_id AND a.ifname = t.ifname "
            "GROUP BY t.container_id, t.ifname").fetchall()
        assert counts, "the child never committed anything"
        assert {n for _, n in counts} == {1}, [c for c in counts if c[1] != 1]
    finally:
        conn.close()


def test_kill_9_never_leaves_a_partial_record(db_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)  # noqa: S311 - picks kill moments, nothing secret
    AttachmentRegistry(db_path).close()
    for round_no in range(6):
        running = MP.Event()
        child = MP.Process(target=_churn, args=(str(db_path), round_no, running))
        child.start()
        try:
            assert running.wait(60), f"child never got going (seed {seed})"
            # Sleeping before the kill only spreads it over different moments of the
            # child's write loop; nothing asserts on how long anything took.
            child.join(rng.uniform(0.0, 0.15))
            assert child.is_alive(), f"child died on its own: {child.exitcode} (seed {seed})"
        finally:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
            child.join(30)
        assert child.exitcode == -signal.SIGKILL
        _check_consistent(db_path)

    with AttachmentRegistry(db_path) as s:
        before = s.used_addresses()
        stored, created = s.attach(Attachment("after", "eth0"), SliceAllocator(WHOLE))
        assert created
        assert s.used_addresses() == before + 1
        assert s.get("after", "eth0") == stored
        assert len({address_of(r) for r in s.all()}) == before + 1
    _check_consistent(db_path)
