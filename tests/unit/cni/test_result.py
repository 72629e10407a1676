"""cni.result: one internal Result rendered to, and parsed from, every spec version."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest

from xvmcni.cni.result import (
    LEGACY_VERSIONS,
    SUPPORTED_VERSIONS,
    VERSIONED_IPS,
    Interface,
    IPConfig,
    Result,
    Route,
    check_version,
)
from xvmcni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, CniError

NEW_VERSIONS = [v for v in SUPPORTED_VERSIONS if v not in LEGACY_VERSIONS]


def sample() -> Result:
    return Result(
        interfaces=[
            Interface("xvmbr10", mac="0a:58:0a:f4:00:01"),
            Interface("veth5a2f", mac="fe:11:22:33:44:55"),
            Interface("eth0", mac="0a:58:0a:f4:0b:05", sandbox="/var/run/netns/c1"),
        ],
        ips=[IPConfig(ip_interface("10.244.11.5/16"), ip_address("10.244.0.1"), interface=2)],
        routes=[Route(ip_network("0.0.0.0/0"), ip_address("10.244.0.1")),
                Route(ip_network("192.168.0.0/16"))],
        dns={"nameservers": ["10.244.0.53"], "search": ["cluster.local"]},
    )


def test_supported_versions_are_partitioned() -> None:
    assert set(LEGACY_VERSIONS) == {"0.1.0", "0.2.0"}
    assert set(VERSIONED_IPS) == {"0.3.0", "0.3.1", "0.4.0"}
    assert set(NEW_VERSIONS) - set(VERSIONED_IPS) == {"1.0.0", "1.1.0"}


@pytest.mark.parametrize("version", LEGACY_VERSIONS)
def test_legacy_versions_carry_an_ip4_object(version: str) -> None:
    out = sample().to_dict(version)
    assert out == {
        "cniVersion": version,
        "ip4": {
            "ip": "10.244.11.5/16",
            "gateway": "10.244.0.1",
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, {"dst": "192.168.0.0/16"}],
        },
        "dns": {"nameservers": ["10.244.0.53"], "search": ["cluster.local"]},
    }


@pytest.mark.parametrize("version", VERSIONED_IPS)
def test_0_3_and_0_4_carry_ip_version(version: str) -> None:
    out = sample().to_dict(version)
    assert out["cniVersion"] == version
    assert out["ips"] == [{"version": "4", "address": "10.244.11.5/16",
                           "gateway": "10.244.0.1", "interface": 2}]
    assert out["interfaces"][2] == {"name": "eth0", "mac": "0a:58:0a:f4:0b:05",
                                    "sandbox": "/var/run/netns/c1"}
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"},
                             {"dst": "192.168.0.0/16"}]
    assert "ip4" not in out


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_1_x_drops_the_version_field(version: str) -> None:
    out = sample().to_dict(version)
    assert out["cniVersion"] == version
    assert out["ips"] == [{"address": "10.244.11.5/16", "gateway": "10.244.0.1",
                           "interface": 2}]
    assert [i["name"] for i in out["interfaces"]] == ["xvmbr10", "veth5a2f", "eth0"]
    assert out["dns"] == {"nameservers": ["10.244.0.53"], "search": ["cluster.local"]}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_output_is_json_serialisable(version: str) -> None:
    text = json.dumps(sample().to_dict(version))
    assert json.loads(text)["cniVersion"] == version


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_round_trip_is_lossless_from_0_3_on(version: str) -> None:
    original = sample()
    assert Result.from_dict(original.to_dict(version)) == original


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_round_trip_renders_the_same(version: str) -> None:
    rendered = sample().to_dict(version)
    assert Result.from_dict(rendered).to_dict(version) == rendered


@pytest.mark.parametrize("version", LEGACY_VERSIONS)
def test_legacy_round_trip_keeps_address_gateway_routes(version: str) -> None:
    back = Result.from_dict(sample().to_dict(version))
    assert back.ips == [IPConfig(ip_interface("10.244.11.5/16"), ip_address("10.244.0.1"))]
    assert back.routes == sample().routes
    assert back.interfaces == []  # legacy results have no interface list


def test_legacy_shows_only_the_first_address_of_each_family() -> None:
    result = Result(ips=[IPConfig(ip_interface("10.244.11.5/16")),
                         IPConfig(ip_interface("10.244.11.6/16")),
                         IPConfig(ip_interface("fd00::5/64"), ip_address("fd00::1"))])
    out = result.to_dict("0.2.0")
    assert out["ip4"] == {"ip": "10.244.11.5/16"}
    assert out["ip6"] == {"ip": "fd00::5/64", "gateway": "fd00::1"}


def test_parse_legacy_result() -> None:
    legacy: dict[str, Any] = {
        "cniVersion": "0.2.0",
        "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1",
                "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "fd00::3/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": {"nameservers": ["10.1.2.53"]},
    }
    result = Result.from_dict(legacy)
    assert result.ips == [
        IPConfig(ip_interface("10.1.2.3/24"), ip_address("10.1.2.1")),
        IPConfig(ip_interface("fd00::3/64")),
    ]
    assert result.routes == [Route(ip_network("0.0.0.0/0")),
                             Route(ip_network("::/0"), ip_address("fd00::1"))]
    assert result.dns == {"nameservers": ["10.1.2.53"]}
    # Re-rendered at 1.0.0 the same data appears in the new shape.
    assert result.to_dict("1.0.0")["ips"] == [
        {"address": "10.1.2.3/24", "gateway": "10.1.2.1"}, {"address": "fd00::3/64"}]


def test_parse_0_3_1_result_from_host_local() -> None:
    data = {"cniVersion": "0.3.1",
            "ips": [{"version": "4", "address": "10.244.11.9/16", "gateway": "10.244.0.1"}],
            "dns": {}}
    result = Result.from_dict(data)
    assert result.ips == [IPConfig(ip_interface("10.244.11.9/16"), ip_address("10.244.0.1"))]
    assert result.interfaces == []
    assert result.routes == []


def test_empty_result() -> None:
    assert Result().to_dict("1.0.0") == {"cniVersion": "1.0.0", "dns": {}}
    assert Result.from_dict({"cniVersion": "1.0.0"}) == Result()


def test_interface_mtu_in_1_1_0() -> None:
    result = Result(interfaces=[Interface("eth0", mac="0a:58:0a:f4:0b:05", mtu=1450)])
    assert result.to_dict("1.1.0")["interfaces"] == [
        {"name": "eth0", "mac": "0a:58:0a:f4:0b:05", "mtu": 1450}]
    assert Result.from_dict(result.to_dict("1.1.0")) == result


BAD: list[tuple[str, Any]] = [
    ("not-object", 5),
    ("list", []),
    ("ips-not-list", {"ips": "10.0.0.1/8"}),
    ("ip-without-address", {"ips": [{"gateway": "10.0.0.1"}]}),
    ("ip-bad-address", {"ips": [{"address": "10.0.0.300/8"}]}),
    ("ip-bad-gateway", {"ips": [{"address": "10.0.0.1/8", "gateway": "gw"}]}),
    ("ip-bad-interface", {"ips": [{"address": "10.0.0.1/8", "interface": "first"}]}),
    ("ip-null-entry", {"ips": [None]}),
    ("interface-not-object", {"interfaces": ["eth0"]}),
    ("interface-bad-mtu", {"interfaces": [{"name": "eth0", "mtu": "big"}]}),
    ("route-without-dst", {"routes": [{"gw": "10.0.0.1"}]}),
    ("route-bad-dst", {"routes": [{"dst": "everywhere"}]}),
    ("dns-not-object", {"dns": "8.8.8.8"}),
    ("legacy-bad-ip", {"ip4": {"ip": "nope"}}),
    ("legacy-not-object", {"ip4": "10.0.0.1/8"}),
    ("legacy-bad-route", {"ip4": {"ip": "10.0.0.1/8", "routes": [{"dst": "x"}]}}),
]


@pytest.mark.parametrize("data", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_result_is_decode_failure(data: Any) -> None:
    with pytest.raises(CniError) as info:
        Result.from_dict(data)
    assert info.value.code == DECODE_FAILURE
    assert info.value.msg


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_check_version_accepts_supported(version: str) -> None:
    assert check_version(version) == version


@pytest.mark.parametrize("version", ["", "0.5.0", "1.2.0", "2.0.0", "v1.0.0"])
def test_check_version_rejects_others(version: str) -> None:
    with pytest.raises(CniError) as info:
        check_version(version)
    assert info.value.code == INCOMPATIBLE_VERSION
    assert "1.1.0" in info.value.details
