"""Derived names, MACs and ownership marks: deterministic, within kernel limits, and
unique where two networks or containers must never collide."""

from __future__ import annotations

import re

import pytest

from xvmcni.dataplane import names, ownership


def test_host_veth_name_is_derived_and_fits_ifnamsiz() -> None:
    name = names.host_veth_name("c0ffee", "eth0")
    assert name == names.host_veth_name("c0ffee", "eth0")
    assert re.fullmatch(r"xvm[0-9a-f]{12}", name)
    assert len(name.encode()) <= 15
    assert name != names.host_veth_name("c0ffee", "eth1")
    assert name != names.host_veth_name("c0ffe", "eeth0")  # the separator matters


@pytest.mark.parametrize(("vni", "mac"), [(10, "02:78:76:00:00:0a"),
                                          (16777215, "02:78:76:ff:ff:ff"),
                                          (0x123456, "02:78:76:12:34:56")])
def test_gateway_mac_shows_the_vni(vni: int, mac: str) -> None:
    assert names.gateway_mac(vni) == mac
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b1  # locally administered, unicast


def test_table_names_differ_for_names_that_differ_only_in_punctuation() -> None:
    made = {ownership.table_name(n) for n in ("pod-net", "pod.net", "pod_net", "podnet")}
    assert len(made) == 4
    for name in made:
        assert re.fullmatch(r"xvm_[A-Za-z0-9]{0,24}_[0-9a-f]{8}", name)
    assert ownership.table_name("x" * 200).startswith("xvm_" + "x" * 24 + "_")
    assert ownership.guard_table_name("pod-net") != ownership.table_name("pod-net")
    assert ownership.legacy_table_name("pod.net") == "xvm_pod_net"


@pytest.mark.parametrize("mark", [
    ownership.Mark("net"),
    ownership.Mark("net", "4f2a" * 16, "eth0"),
    ownership.Mark("a.b-c", "id:with:colons", "net1"),
])
def test_marks_round_trip_through_the_alias(mark: ownership.Mark) -> None:
    assert ownership.parse_alias(mark.alias()) == mark


def test_an_overlong_mark_keeps_the_network() -> None:
    mark = ownership.Mark("net", "c" * 300, "eth0")
    assert ownership.parse_alias(mark.alias()) == ownership.Mark("net")
    assert len(mark.alias().encode()) <= ownership.ALIAS_MAX


@pytest.mark.parametrize("alias", ["", None, "xvm", "xvm-cnix:net", "other:thing"])
def test_foreign_aliases_are_not_ours(alias: str | None) -> None:
    assert ownership.parse_alias(alias) is None
    assert not ownership.owned_by({"IFLA_IFALIAS": alias} if alias else {}, "net")


def test_container_macs_come_from_the_address() -> None:
    from ipaddress import ip_interface

    from xvmcni.dataplane.veth import container_mac

    assert container_mac([ip_interface("10.244.11.5/16")]) == "0a:58:0a:f4:0b:05"
    # Dual-stack: the IPv4 address names the MAC.
    assert container_mac([ip_interface("fd00::1:2/64"),
                          ip_interface("10.244.11.5/16")]) == "0a:58:0a:f4:0b:05"
    assert container_mac([ip_interface("fd00:10:244:1::a:b/64")]) == "0a:58:00:0a:00:0b"
    assert container_mac([]) == ""
