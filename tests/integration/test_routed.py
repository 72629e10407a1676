"""The routed model across simulated hosts (issue 8): pods on different hosts reach
each other over VXLAN or plain routes, the kernel holds exactly one neighbour, one
FDB entry and one route per remote host, and nothing that is not ours is touched."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .routed_lab import HOSTS, Lab, fdb, neighbours, ping, routes_of

VXLAN_DEV = "xvmrv1"
BRIDGE = "xvmrb1"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.destroy()


def test_vxlan_pods_reach_each_other_across_a_router(lab: Lab) -> None:
    lab.build()
    pods = {n: lab.add_pod(n, lab.config(n), f"c-{n}") for n in lab.hosts}
    for src, (pod, _) in pods.items():
        for dst, (_, address) in pods.items():
            if src != dst:
                assert ping(lab.hosts[src], pod, address), f"{src} -> {dst} ({address})"
    # Exactly one neighbour, one FDB entry and one route per remote host.
    h1 = lab.hosts["h1"].name
    routes = routes_of(h1)
    assert sorted(r["dst"] for r in routes) == ["10.250.2.0/24", "10.250.3.0/24"]
    assert all(r["dev"] == VXLAN_DEV and "onlink" in r["flags"] for r in routes)
    assert sorted(r["gateway"] for r in routes) == ["10.250.2.0", "10.250.3.0"]
    neigh = neighbours(h1, VXLAN_DEV)
    assert sorted(n["dst"] for n in neigh) == ["10.250.2.0", "10.250.3.0"]
    entries = fdb(h1, VXLAN_DEV)
    assert sorted(e["dst"] for e in entries) == ["172.31.1.12", "172.31.2.13"]
    assert {e["mac"] for e in entries} == {n["lladdr"] for n in neigh}
