"""The anycast gateway: the same IP and MAC on every host, answered locally, its ARP
never crossing the VXLAN."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from xvmcni import lab as labmod
from xvmcni.dataplane.ownership import table_name

GATEWAY_MAC = "02:78:76:00:00:0a"  # VNI 10


@pytest.fixture(scope="module")
def lab() -> Iterator[labmod.Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"xtac{os.getpid():x}{secrets.token_hex(2)}"
    try:
        yield labmod.lab_up(name, hosts=3, pods=2)
    finally:
        labmod.lab_down(name)


def _in(netns: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", *argv], check=True,
                          capture_output=True, text=True).stdout


def _counters(netns: str) -> dict[tuple[str, str], int]:
    """(chain, what) -> packets dropped, from the bridge table's rule counters."""
    data = json.loads(_in(netns, "nft", "-j", "list", "table", "bridge", table_name("xvm-network")))
    out: dict[tuple[str, str], int] = {}
    for item in data["nftables"]:
        rule: dict[str, Any] | None = item.get("rule")
        if rule is None:
            continue
        exprs = rule["expr"]
        field = exprs[1]["match"]["left"]["payload"]["field"]
        packets = next(e["counter"]["packets"] for e in exprs if "counter" in e)
        out[(rule["chain"], field)] = packets
    return out


def test_every_host_answers_for_the_gateway_with_the_same_mac(lab: labmod.Lab) -> None:
    for pod in lab.pods:
        _in(pod.netns, "busybox", "ping", "-c", "1", "-W", "2", "10.244.0.1")
        neigh = _in(pod.netns, "busybox", "ip", "neigh", "show", "10.244.0.1")
        assert GATEWAY_MAC in neigh.lower(), f"{pod.name}: {neigh}"
    for host in lab.hosts:
        bridge = _in(host.netns, "busybox", "ip", "link", "show", "xvmbr10")
        assert GATEWAY_MAC in bridge


def test_gateway_arp_never_crosses_hosts(lab: labmod.Lab) -> None:
    before = {h.name: _counters(h.netns) for h in lab.hosts}
    for pod in lab.pods:  # broadcast ARP for the gateway, as a booting pod would send
        _in(pod.netns, "busybox", "arping", "-c", "2", "-w", "2", "-I", "eth0",
            "10.244.0.1")
    for host in lab.hosts:
        after = _counters(host.netns)
        # Requests for the gateway tried to leave through the VXLAN port: dropped there.
        assert after[("to_vxlan", "daddr ip")] > before[host.name][("to_vxlan", "daddr ip")]
        # Nothing for the gateway arrived from another host: every host stops its own.
        assert after[("from_vxlan", "daddr ip")] == 0
        assert after[("from_vxlan", "saddr")] == 0
