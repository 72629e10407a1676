"""The nftables batches as pure JSON: what each network's tables hold, and that the
delete batches succeed whether or not a table exists."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from xvmcni.dataplane import nft
from xvmcni.dataplane.ownership import table_name

GW = ipaddress.IPv4Address("10.244.0.1")
GW_MAC = "02:78:76:00:00:0a"


def rules(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["add"]["rule"] for c in batch if "rule" in c.get("add", {})]


def test_gateway_isolation_rebuilds_its_table_from_scratch() -> None:
    batch = nft.gateway_isolation_batch("xvm-network", "xvmvx10", GW, GW_MAC)
    name = table_name("xvm-network")
    assert batch[0] == {"add": {"table": {"family": "bridge", "name": name}}}
    assert batch[1] == {"flush": {"table": {"family": "bridge", "name": name}}}
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in batch
              if "chain" in c.get("add", {})}
    assert chains["to_vxlan"]["hook"] == "postrouting"
    assert chains["from_vxlan"]["hook"] == "prerouting"
    found = rules(batch)
    assert len(found) == 4  # two per direction: gateway MAC as source, ARP for the gateway
    text = json.dumps(found)
    assert GW_MAC in text and str(GW) in text and "xvmvx10" in text
    for rule in found:
        expr = rule["expr"]
        assert {"counter": None} in expr and {"drop": None} in expr


def test_masquerade_never_touches_pod_to_pod() -> None:
    subnet = ipaddress.IPv4Network("10.244.0.0/16")
    batch = nft.masquerade_batch("xvm-network", subnet)
    (rule,) = rules(batch)
    matches = [e["match"] for e in rule["expr"] if "match" in e]
    prefix = {"prefix": {"addr": "10.244.0.0", "len": 16}}
    assert {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
            "right": prefix} in matches
    assert {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": prefix} in matches
    assert {"masquerade": None} in rule["expr"]


def test_delete_batches_add_before_they_delete() -> None:
    batch = nft.delete_table_batch("ip", "pod-net")
    table = {"family": "ip", "name": table_name("pod-net")}
    assert batch == [{"add": {"table": table}}, {"delete": {"table": table}}]
    assert nft.delete_named_table_batch("bridge", "x") == [
        {"add": {"table": {"family": "bridge", "name": "x"}}},
        {"delete": {"table": {"family": "bridge", "name": "x"}}}]
