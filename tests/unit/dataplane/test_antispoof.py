"""The anti-spoofing batch builders and readers, as pure JSON (no kernel)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from xvmcni.dataplane import antispoof

T = "xvm_net_1234"
GW_MAC = "02:78:76:00:00:0a"


def _verbs(batch: list[dict[str, Any]], obj: str) -> list[str]:
    return [verb for cmd in batch for verb, body in cmd.items() if obj in body]


def test_table_batch_never_flushes_sets_or_counters() -> None:
    batch = antispoof.table_batch(T, GW_MAC, ["10.244.0.1"])
    assert _verbs(batch, "set") == ["add"] * 4
    assert _verbs(batch, "counter") == ["add"] * len(antispoof.COUNTERS)
    assert not any("table" in body for cmd in batch for verb, body in cmd.items()
                   if verb in ("flush", "delete"))
    # Every chain is flushed and rebuilt in the same batch (one kernel transaction).
    chains = [c["add"]["chain"]["name"] for c in batch if "chain" in c.get("add", {})]
    flushed = [c["flush"]["chain"]["name"] for c in batch if "flush" in c]
    assert chains == flushed and len(chains) == 5
    assert all(cmd["add"]["rule"]["table"] == T for cmd in batch if "rule" in cmd.get("add", {}))


def test_only_the_entry_chain_hooks_and_other_ports_leave_first() -> None:
    batch = antispoof.table_batch(T, GW_MAC, ["10.244.0.1"])
    hooked = [c["add"]["chain"] for c in batch
              if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"]]
    assert [(h["name"], h["hook"], h["policy"]) for h in hooked] == [
        (antispoof.ENTRY, "prerouting", "accept")]
    entry = [c["add"]["rule"]["expr"] for c in batch
             if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == antispoof.ENTRY]
    # A frame from a port that is not a pod's is accepted by the first rule.
    assert entry[0] == [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}},
                                   "right": "@" + antispoof.PORTS}}, {"accept": None}]
    # Gateway guards come before the fast-path accept, and the chain ends in the full check.
    text = [json.dumps(rule) for rule in entry]
    fast = next(i for i, t in enumerate(text) if "@" + antispoof.IPV4 in t)
    assert all(i < fast for i, t in enumerate(text) if antispoof.GATEWAY in t)
    assert sum(antispoof.GATEWAY in t for t in text) == 2
    assert entry[-1] == [{"goto": {"target": antispoof.FRAME}}]


def test_rule_count_does_not_depend_on_members() -> None:
    rules = [c for c in antispoof.table_batch(T, GW_MAC, ["10.244.0.1"])
             if "rule" in c.get("add", {})]
    admits = antispoof.admit_batch(T, "xvm0123456789ab", "0a:58:0a:f4:00:05", ["10.244.0.5"])
    assert not any("rule" in body for cmd in admits for body in cmd.values())
    assert len(rules) < 30


def test_gateway_guards_are_in_the_rules() -> None:
    text = json.dumps(antispoof.table_batch(T, "02:78:76:00:00:0A", ["10.244.0.1", "fd00::1"]))
    assert GW_MAC in text and "02:78:76:00:00:0A" not in text
    assert '"10.244.0.1"' in text and '"fd00::1"' in text


def test_admit_batch_elements() -> None:
    batch = antispoof.admit_batch(T, "xvm0123456789ab", "0A:58:0A:F4:00:05",
                                  [ipaddress.ip_interface("10.244.0.5/16"), "fd00::5/64"])
    by_set = {c["add"]["element"]["name"]: c["add"]["element"]["elem"] for c in batch}
    port, mac = "xvm0123456789ab", "0a:58:0a:f4:00:05"
    assert by_set[antispoof.PORTS] == [port]
    assert by_set[antispoof.MACS] == [{"concat": [port, mac]}]
    assert by_set[antispoof.IPV4] == [{"concat": [port, mac, "10.244.0.5"]}]
    assert by_set[antispoof.IPV6] == [{"concat": [port, mac, "fd00::5"]},
                                      {"concat": [port, mac, "fe80::858:aff:fef4:5"]}]


def test_admit_without_mac_registers_the_port_only() -> None:
    batch = antispoof.admit_batch(T, "xvm0123456789ab", "")
    assert batch == [{"add": {"element": {"family": "bridge", "table": T,
                                          "name": antispoof.PORTS,
                                          "elem": ["xvm0123456789ab"]}}}]
    with pytest.raises(ValueError, match="MAC"):
        antispoof.admit_batch(T, "xvm0123456789ab", "", ["10.244.0.5"])


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff",
                                 "00:00:00:00:00:00", "0a:58:0a:f4:00", "zz:58:0a:f4:00:05",
                                 "0a:58:0a:f4:00:05:00", "0a:58:0a:f4:0:5"])
def test_bad_macs_are_refused(mac: str) -> None:
    with pytest.raises(ValueError):
        antispoof.admit_batch(T, "xvm0123456789ab", mac)


@pytest.mark.parametrize("name", ["", "a" * 16, "é" * 8, "a/b", " eth0"])
def test_bad_port_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        antispoof.admit_batch(T, name, "0a:58:0a:f4:00:05")


def test_evict_adds_before_it_deletes() -> None:
    batch = antispoof.evict_batch(T, "xvm0123456789ab", "0a:58:0a:f4:00:05", ["10.244.0.5"],
                                  link_local=False)
    steps = [(verb, body["element"]["name"]) for cmd in batch for verb, body in cmd.items()]
    assert steps == [("add", antispoof.IPV4), ("delete", antispoof.IPV4),
                     ("add", antispoof.MACS), ("delete", antispoof.MACS),
                     ("add", antispoof.PORTS), ("delete", antispoof.PORTS)]
    kept = antispoof.evict_batch(T, "xvm0123456789ab", "0a:58:0a:f4:00:05", keep_port=True,
                                 link_local=False)
    assert [body["element"]["name"] for cmd in kept for body in cmd.values()] == [
        antispoof.MACS, antispoof.MACS]


def test_delete_table_batch() -> None:
    table = {"family": "bridge", "name": T}
    assert antispoof.delete_table_batch(T) == [{"add": {"table": table}},
                                               {"delete": {"table": table}}]


def test_eui64_link_local() -> None:
    assert str(antispoof.eui64_link_local("0a:58:0a:f4:00:05")) == "fe80::858:aff:fef4:5"


LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"table": {"family": "bridge", "name": T, "handle": 1}},
    {"counter": {"family": "bridge", "name": "drop_mac", "table": T, "packets": 3,
                 "bytes": 180}},
    {"counter": {"family": "bridge", "name": "someone_elses", "table": T, "packets": 9,
                 "bytes": 9}},
    {"set": {"family": "bridge", "name": "pod_ports", "table": T, "type": "ifname",
             "elem": ["xvm000000000001", "xvm000000000002"]}},
    {"set": {"family": "bridge", "name": "pod_macs", "table": T,
             "type": ["ifname", "ether_addr"],
             "elem": [{"concat": ["xvm000000000001", "0a:58:0a:63:00:02"]}]}},
    {"set": {"family": "bridge", "name": "pod_ipv4", "table": T,
             "type": ["ifname", "ether_addr", "ipv4_addr"],
             "elem": [{"concat": ["xvm000000000001", "0a:58:0a:63:00:02", "10.99.0.2"]},
                      {"elem": {"val": {"concat": ["xvm000000000001", "0a:58:0a:63:00:02",
                                                   "10.99.0.9"]}, "comment": "x"}}]}},
    {"set": {"family": "bridge", "name": "pod_ipv6", "table": T,
             "type": ["ifname", "ether_addr", "ipv6_addr"]}},
]}


def test_parse_members() -> None:
    members = antispoof.parse_members(LISTING)
    assert members.complete
    assert members.ports == {"xvm000000000001", "xvm000000000002"}
    one = members.port("xvm000000000001")
    assert one.macs == {"0a:58:0a:63:00:02"}
    assert one.addresses == {("0a:58:0a:63:00:02", ipaddress.ip_address("10.99.0.2")),
                             ("0a:58:0a:63:00:02", ipaddress.ip_address("10.99.0.9"))}
    assert members.port("xvm000000000002") == antispoof.PortMembers()


def test_parse_members_of_a_partial_table() -> None:
    members = antispoof.parse_members({"nftables": LISTING["nftables"][:5]})
    assert not members.complete and members.macs == frozenset()


def test_parse_counters_reads_ours_only() -> None:
    assert antispoof.parse_counters(LISTING) == {"drop_mac": (3, 180)}


def test_evict_recorded_removes_what_the_table_holds_for_the_port() -> None:
    members = antispoof.parse_members(LISTING)
    batch = antispoof.evict_recorded_batch(T, members, "xvm000000000001")
    deleted = {(body["element"]["name"], json.dumps(e)) for cmd in batch
               for verb, body in cmd.items() if verb == "delete" for e in body["element"]["elem"]}
    assert deleted == {
        ("pod_ipv4", json.dumps({"concat": ["xvm000000000001", "0a:58:0a:63:00:02",
                                            "10.99.0.2"]})),
        ("pod_ipv4", json.dumps({"concat": ["xvm000000000001", "0a:58:0a:63:00:02",
                                            "10.99.0.9"]})),
        ("pod_macs", json.dumps({"concat": ["xvm000000000001", "0a:58:0a:63:00:02"]})),
        ("pod_ports", json.dumps("xvm000000000001")),
    }
    assert [verb for cmd in batch for verb in cmd][::2] == ["add"] * 3
    # A port the table knows nothing about: only the (add-then-delete) port element.
    assert len(antispoof.evict_recorded_batch(T, members, "xvm00000000abcd")) == 2
