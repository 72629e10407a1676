"""The routed model's IPAM: one address per pod CIDR, gateway never handed out."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from xvmcni.errors import ADDRESS_EXHAUSTED, ADDRESS_IN_USE, INVALID_CONFIG, CniError
from xvmcni.ipam.cidr import CidrIpam, CidrPool
from xvmcni.state.attachments import Attachment, AttachmentRegistry

V4 = ipaddress.IPv4Network("10.244.1.0/29")
V6 = ipaddress.IPv6Network("fd00:1::/64")


def add(ipam: CidrIpam, reg: AttachmentRegistry, cid: str,
        requested: list[ipaddress.IPv4Address] | None = None) -> list[str]:
    att, _ = ipam.allocate(reg, Attachment(cid, "eth0"), requested or [])
    return [str(a) for a in att.addresses]


def test_both_families_skip_the_gateway(tmp_path: Path) -> None:
    ipam = CidrIpam((CidrPool.of(V4), CidrPool.of(V6)))
    with AttachmentRegistry(tmp_path / "ipam.db") as reg:
        assert add(ipam, reg, "a") == ["10.244.1.2/29", "fd00:1::2/64"]
        assert add(ipam, reg, "b") == ["10.244.1.3/29", "fd00:1::3/64"]


def test_ipv4_exhaustion_and_round_robin(tmp_path: Path) -> None:
    ipam = CidrIpam((CidrPool.of(V4),))
    with AttachmentRegistry(tmp_path / "ipam.db") as reg:
        got = [add(ipam, reg, f"c{i}")[0] for i in range(5)]
        assert got == [f"10.244.1.{i}/29" for i in range(2, 7)]   # .7 is the broadcast
        with pytest.raises(CniError) as info:
            add(ipam, reg, "full")
        assert info.value.code == ADDRESS_EXHAUSTED
        ipam.release(reg, "c0", "eth0")
        assert add(ipam, reg, "again") == ["10.244.1.2/29"]


def test_requested_addresses(tmp_path: Path) -> None:
    ipam = CidrIpam((CidrPool.of(V4), CidrPool.of(V6)))
    with AttachmentRegistry(tmp_path / "ipam.db") as reg:
        assert add(ipam, reg, "a", [ipaddress.IPv4Address("10.244.1.5")]) == \
            ["10.244.1.5/29", "fd00:1::2/64"]
        for addr, code in (("10.244.1.5", ADDRESS_IN_USE), ("10.244.1.1", INVALID_CONFIG),
                           ("10.244.2.5", INVALID_CONFIG)):
            with pytest.raises(CniError) as info:
                add(ipam, reg, f"x{addr}", [ipaddress.IPv4Address(addr)])
            assert info.value.code == code, addr


def test_status_reports_the_fullest_pool(tmp_path: Path) -> None:
    ipam = CidrIpam((CidrPool.of(ipaddress.IPv4Network("10.244.1.0/30")), CidrPool.of(V6)))
    with AttachmentRegistry(tmp_path / "ipam.db") as reg:
        add(ipam, reg, "only")      # a /30 holds one pod after its gateway
        with pytest.raises(CniError) as info:
            ipam.status(reg)
        assert info.value.code == 50
