"""The per-host slice rule: which addresses each host may hand out."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.ipam.pool import (
    AddressPool,
    default_per_host_prefix,
    host_slice,
    pool_for_host,
)

NET16 = IPv4Network("10.244.0.0/16")
GW16 = IPv4Address("10.244.0.1")


def addr(text: str) -> IPv4Address:
    return IPv4Address(text)


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("10.244.0.0/16", 24),
        ("10.0.0.0/8", 16),
        ("10.244.0.0/20", 28),
        ("10.244.0.0/22", 28),
        ("10.244.0.0/24", 28),
        ("10.244.0.0/28", 28),
        # Already smaller than /28: the whole subnet is the slice, never cut finer.
        ("10.244.0.0/29", 29),
        ("10.244.0.0/30", 30),
    ],
)
def test_default_per_host_prefix(subnet: str, expected: int) -> None:
    assert default_per_host_prefix(IPv4Network(subnet)) == expected


def test_documented_example_host_11_on_slash16() -> None:
    pool = pool_for_host(NET16, GW16, addr("172.30.0.11"), None, None, None)
    assert (pool.first, pool.last) == (addr("10.244.11.1"), addr("10.244.11.254"))


@pytest.mark.parametrize(
    ("host", "prefix", "expected"),
    [
        ("172.30.0.11", 24, "10.244.11.0/24"),
        ("172.30.0.12", 24, "10.244.12.0/24"),
        ("192.168.7.200", 24, "10.244.200.0/24"),
        # 172.30.1.11 = ...1*256+11: modulo 1024 slices of /26 it is slice 267.
        ("172.30.1.11", 26, "10.244.66.192/26"),
        ("172.30.0.11", 16, "10.244.0.0/16"),
    ],
)
def test_host_slice(host: str, prefix: int, expected: str) -> None:
    assert host_slice(NET16, addr(host), prefix) == IPv4Network(expected)


def test_slice_index_is_host_ip_modulo_slice_count() -> None:
    for host in ("1.2.3.4", "172.30.0.11", "255.255.255.254", "0.0.0.1"):
        got = host_slice(NET16, addr(host), 24)
        assert int(got.network_address) - int(NET16.network_address) == \
            (int(addr(host)) % 256) * 256


def test_hosts_equal_modulo_slice_count_collide() -> None:
    """The documented limit of the rule: the last octet alone picks a /24 slice of
    a /16, so 172.30.0.11 and 172.30.1.11 share one."""
    a = host_slice(NET16, addr("172.30.0.11"), 24)
    b = host_slice(NET16, addr("172.30.1.11"), 24)
    assert a == b == IPv4Network("10.244.11.0/24")


def test_hosts_differing_modulo_slice_count_do_not_overlap() -> None:
    a = host_slice(NET16, addr("172.30.0.11"), 24)
    b = host_slice(NET16, addr("172.30.0.12"), 24)
    assert not a.overlaps(b)


def test_every_slice_lies_inside_the_subnet() -> None:
    subnet = IPv4Network("10.244.16.0/20")
    prefix = default_per_host_prefix(subnet)
    slices = {host_slice(subnet, addr(f"172.30.0.{i}"), prefix) for i in range(256)}
    assert len(slices) == 256  # a /20 cut into /28 slices: one per last octet
    assert all(s.subnet_of(subnet) for s in slices)


@pytest.mark.parametrize(
    ("subnet", "gateway", "host", "first", "last", "size"),
    [
        # /16 -> /24 slice; the slice's own .0 and .255 are left out.
        ("10.244.0.0/16", "10.244.0.1", "172.30.0.11", "10.244.11.1", "10.244.11.254", 254),
        # Slice 0 also holds the gateway.
        ("10.244.0.0/16", "10.244.0.1", "172.30.0.0", "10.244.0.1", "10.244.0.254", 253),
        # The last slice: the subnet's broadcast is its own last address anyway.
        ("10.244.0.0/16", "10.244.0.1", "172.30.0.255", "10.244.255.1", "10.244.255.254", 254),
        # /24 -> /28 slices, 16 of them: host .11 takes slice 11.
        ("10.244.5.0/24", "10.244.5.1", "172.30.0.11", "10.244.5.177", "10.244.5.190", 14),
        # /24, slice 0: the gateway is removed too.
        ("10.244.5.0/24", "10.244.5.1", "172.30.0.32", "10.244.5.1", "10.244.5.14", 13),
        # /20 -> /28 slices, 256 of them.
        ("10.244.16.0/20", "10.244.16.1", "172.30.0.11", "10.244.16.177", "10.244.16.190", 14),
        ("10.244.16.0/20", "10.244.16.1", "172.30.0.255", "10.244.31.241", "10.244.31.254", 14),
    ],
)
def test_default_pool(subnet: str, gateway: str, host: str, first: str, last: str,
                      size: int) -> None:
    pool = pool_for_host(IPv4Network(subnet), addr(gateway), addr(host), None, None, None)
    assert (pool.first, pool.last) == (addr(first), addr(last))
    assert pool.size() == size


def test_explicit_per_host_prefix() -> None:
    pool = pool_for_host(NET16, GW16, addr("172.30.0.11"), 20, None, None)
    # 16 slices of /20: 11 mod 16 = 11.
    assert (pool.first, pool.last) == (addr("10.244.176.1"), addr("10.244.191.254"))
    assert pool.size() == 4094


@pytest.mark.parametrize("prefix", [15, 33])
def test_per_host_prefix_outside_subnet_rejected(prefix: int) -> None:
    with pytest.raises(CniError) as info:
        host_slice(NET16, addr("172.30.0.11"), prefix)
    assert info.value.code == INVALID_CONFIG


def test_range_overrides_slice() -> None:
    pool = pool_for_host(NET16, GW16, addr("172.30.0.11"), 24,
                         addr("10.244.200.10"), addr("10.244.200.19"))
    assert (pool.first, pool.last) == (addr("10.244.200.10"), addr("10.244.200.19"))
    assert pool.size() == 10
    assert addr("10.244.11.5") not in pool
    assert addr("10.244.200.10") in pool
    assert addr("10.244.200.19") in pool
    assert addr("10.244.200.20") not in pool


def test_range_start_only_runs_to_subnet_edge() -> None:
    pool = pool_for_host(NET16, GW16, addr("172.30.0.11"), None, addr("10.244.255.250"), None)
    assert pool.first == addr("10.244.255.250")
    assert pool.last == NET16.broadcast_address
    assert pool.size() == 5  # .250-.254; the broadcast address is never handed out
    assert NET16.broadcast_address not in pool


def test_range_end_only_starts_at_subnet_edge() -> None:
    pool = pool_for_host(NET16, GW16, addr("172.30.0.11"), None, None, addr("10.244.0.10"))
    assert pool.first == NET16.network_address
    assert pool.last == addr("10.244.0.10")
    assert pool.size() == 9  # .2-.10: network and gateway removed
    assert NET16.network_address not in pool
    assert GW16 not in pool
    assert addr("10.244.0.2") in pool


@pytest.mark.parametrize(
    ("start", "end"),
    [("10.245.0.1", None), (None, "10.243.255.255"), ("10.244.0.20", "10.244.0.10")],
)
def test_bad_range_rejected(start: str | None, end: str | None) -> None:
    with pytest.raises(CniError) as info:
        pool_for_host(NET16, GW16, addr("172.30.0.11"), None,
                      addr(start) if start else None, addr(end) if end else None)
    assert info.value.code == INVALID_CONFIG


def test_reserved_addresses() -> None:
    pool = AddressPool(NET16, addr("10.244.0.100"), addr("10.244.0.0"), addr("10.244.0.255"))
    assert pool.reserved() == frozenset(
        {addr("10.244.0.0"), addr("10.244.255.255"), addr("10.244.0.100")})


def test_reserved_addresses_never_in_pool() -> None:
    subnet = IPv4Network("10.244.5.0/24")
    gateway = addr("10.244.5.7")
    whole = AddressPool(subnet, gateway, subnet.network_address, subnet.broadcast_address)
    members = [a for a in (subnet.network_address + i for i in range(256)) if a in whole]
    assert len(members) == whole.size() == 253
    for reserved in (subnet.network_address, subnet.broadcast_address, gateway):
        assert reserved not in whole
    # Sweep every slice of a small subnet: reserved addresses never count.
    for octet in range(16):
        pool = pool_for_host(subnet, gateway, addr(f"172.30.0.{octet}"), None, None, None)
        inside = [pool.first + i for i in range(int(pool.last) - int(pool.first) + 1)]
        allocatable = [a for a in inside if a in pool]
        assert len(allocatable) == pool.size()
        assert not set(allocatable) & pool.reserved()


def test_contains_rejects_other_types() -> None:
    pool = pool_for_host(NET16, GW16, addr("172.30.0.11"), None, None, None)
    assert addr("10.244.11.5") in pool
    assert "10.244.11.5" not in pool
    assert IPv4Interface("10.244.11.5/16") not in pool
    assert None not in pool


def test_size_of_empty_or_inverted_range() -> None:
    pool = AddressPool(NET16, GW16, addr("10.244.0.10"), addr("10.244.0.9"))
    assert pool.size() == 0
    assert addr("10.244.0.9") not in pool
    only_gateway = AddressPool(NET16, GW16, GW16, GW16)
    assert only_gateway.size() == 0
