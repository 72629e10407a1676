"""Static requests can't collide (issue 7 item 7): addresses only from this host's pool
unless the config says otherwise, one per family, and no reserved or taken MAC; the
registry records requested MACs (schema v2, upgraded in place from v1 files)."""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_commands import Rig, rig  # noqa: F401 - the fixture
from tests.unit.test_networks import config
from xvmcni import commands, networks
from xvmcni.cni.request import Request
from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.ipam.slices import STATIC_POOL, STATIC_SUBNET
from xvmcni.state.attachments import SCHEMA_VERSION, Attachment, AttachmentRegistry, Given

NET = networks.parse(config())


def req(args: str = "", **runtime: Any) -> tuple[Request, networks.Network]:
    raw = config(runtimeConfig=runtime) if runtime else config()
    request = Request("ADD", "c1", "/run/netns/x", "eth0",
                      args=dict(p.split("=", 1) for p in args.split(";") if p), config=raw)
    return request, networks.parse(raw)


def refused(fn: Any, *a: Any) -> CniError:
    with pytest.raises(CniError) as info:
        fn(*a)
    assert info.value.code == INVALID_CONFIG, info.value
    return info.value


@pytest.mark.parametrize(("args", "runtime"), [
    ("IP=10.244.11.5,10.244.11.6", {}),
    ("IP=10.244.11.5", {"ips": ["10.244.11.6/16"]}),
    ("", {"ips": ["10.244.11.5/16", "10.244.11.6/16"]}),
])
def test_at_most_one_address(args: str, runtime: dict[str, Any]) -> None:
    request, network = req(args, **runtime)
    requested = commands.requested_addresses(request, network)
    slices = networks.ipam(network, request, lambda: ipaddress.IPv4Address("172.30.0.11"))
    err = refused(slices.validate, requested)
    assert "at most one" in err.msg


def test_an_ipv6_address_is_refused_by_an_ipv4_network() -> None:
    request, network = req("IP=fd00::5")
    slices = networks.ipam(network, request, lambda: ipaddress.IPv4Address("172.30.0.11"))
    err = refused(slices.validate, commands.requested_addresses(request, network))
    assert "IPv6" in err.msg


@pytest.mark.parametrize("item", [167772165, None, ["10.244.11.5"], True])
def test_requested_ips_must_be_strings(item: Any) -> None:
    err = refused(commands.requested_addresses, *req(ips=[item]))
    assert "string" in err.msg


def test_one_address_accepted() -> None:
    assert [str(a) for a in commands.requested_addresses(*req("IP=10.244.11.5"))] == \
        ["10.244.11.5"]


@pytest.mark.parametrize(("mac", "why"), [
    ("00:00:00:00:00:00", "all-zero"),
    ("02:78:76:00:00:0a", "gateway"),          # gateway_mac(10)
    ("02:78:76:00:00:0A", "gateway"),
    ("0a:58:0a:f4:0b:05", "10.244.11.5"),      # what the pod at 10.244.11.5 gets
    ("01:00:5e:00:00:01", "multicast"),
    ("ff:ff:ff:ff:ff:ff", "multicast"),
])
def test_reserved_macs_are_refused(mac: str, why: str) -> None:
    err = refused(commands.requested_mac, *req(mac=mac))
    assert why in err.msg


@pytest.mark.parametrize("mac", ["02:aa:bb:cc:dd:01", "0a:58:c0:a8:00:01",
                                 "02:78:76:00:00:0b"])
def test_ordinary_macs_accepted(mac: str) -> None:
    assert commands.requested_mac(*req(mac=mac)) == mac


def test_static_ips_setting() -> None:
    default = networks.parse(config()).slices
    assert default is not None and default.static_ips == STATIC_POOL
    parsed = networks.parse(config(staticIPs="subnet")).slices
    assert parsed is not None and parsed.static_ips == STATIC_SUBNET
    for bad in ("anywhere", 1, True, ["pool"]):
        with pytest.raises(CniError) as info:
            networks.parse(config(staticIPs=bad))
        assert info.value.code == INVALID_CONFIG and "staticIPs" in info.value.msg


def test_a_mac_held_by_another_pod_is_refused(rig: Rig) -> None:  # noqa: F811
    rig.run("ADD", "c1", runtimeConfig={"mac": "02:aa:bb:cc:dd:01"})
    with pytest.raises(CniError) as info:
        rig.run("ADD", "c2", runtimeConfig={"mac": "02:AA:BB:CC:DD:01"})
    assert info.value.code == INVALID_CONFIG
    assert "c1" in info.value.msg and "02:aa:bb:cc:dd:01" in info.value.msg
    # Refused before anything changed: no step of the model ran after entering.
    assert rig.log == ["prepare", "enter"]
    assert rig.count() == 1
    # Released with its pod: free again.
    rig.run("DEL", "c1")
    rig.run("ADD", "c2", runtimeConfig={"mac": "02:aa:bb:cc:dd:01"})
    # The same container repeating its ADD is not a collision.
    rig.run("ADD", "c2", runtimeConfig={"mac": "02:aa:bb:cc:dd:01"})
    assert rig.count() == 1


def test_registry_refuses_a_duplicate_mac_itself(tmp_path: Path) -> None:
    with AttachmentRegistry(tmp_path / "ipam.db") as reg:
        addr = (ipv4("10.244.11.5/16"),)
        reg.attach(Attachment("c1", "eth0", mac="02:aa:bb:cc:dd:01"), Given(addr))
        assert reg.mac_holder("02:AA:bb:cc:dd:01") == ("c1", "eth0")
        with pytest.raises(CniError) as info:
            reg.attach(Attachment("c2", "eth0", mac="02:aa:bb:cc:dd:01"),
                       Given((ipv4("10.244.11.6/16"),)))
        assert info.value.code == INVALID_CONFIG
        # Derived MACs are not recorded: any number of pods may have none.
        reg.attach(Attachment("c3", "eth0"), Given((ipv4("10.244.11.7/16"),)))
        reg.attach(Attachment("c4", "eth0"), Given((ipv4("10.244.11.8/16"),)))
        assert reg.count() == 3


def ipv4(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


# The schema xvm-cni 0.1 wrote (SCHEMA_VERSION 1), verbatim.
V1_SCHEMA = (
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


def test_a_v1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ipam.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO attachments VALUES ('old', 'eth0', '/run/netns/o', 'xvm1', 1.0)")
    conn.execute("INSERT INTO addresses VALUES ('10.244.11.9', ?, 16, 'old', 'eth0', 0)",
                 (int.from_bytes(bytes([10, 244, 11, 9]), "big"),))
    conn.execute("INSERT INTO meta VALUES ('last_allocated', '1')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    assert SCHEMA_VERSION == 3
    with AttachmentRegistry(path) as reg:
        old = reg.get("old", "eth0")
        assert old is not None
        assert (old.netns, old.host_ifname, old.mac) == ("/run/netns/o", "xvm1", "")
        assert [str(a) for a in old.addresses] == ["10.244.11.9/16"]
        reg.attach(Attachment("new", "eth0", mac="02:aa:bb:cc:dd:02"),
                   Given((ipv4("10.244.11.10/16"),)))
        with pytest.raises(CniError):
            reg.attach(Attachment("dup", "eth0", mac="02:aa:bb:cc:dd:02"),
                       Given((ipv4("10.244.11.11/16"),)))
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
    # Opening an upgraded file again changes nothing.
    with AttachmentRegistry(path) as reg:
        assert reg.count() == 2
        assert reg.mac_holder("02:aa:bb:cc:dd:02") == ("new", "eth0")
