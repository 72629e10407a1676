"""The routed model's peer events (issue 8): with what it applied before, a new peer
set is programmed as a change, without reading the kernel back, and the change is
exactly right: a moved peer leaves one neighbour, FDB entry and route, the old ones
gone; a foreign route on a new peer's CIDR is left alone and reported."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.controlplane.base import Peer
from xvmcni.dataplane import routes
from xvmcni.lab import plumbing
from xvmcni.models.base import PeerMemory
from xvmcni.models.routed_peers import Applied, vtep_mac
from xvmcni.runtime import Runtime

from .routed_lab import NETWORK, Lab, fdb, ip, neighbours, routes_of

VXLAN_DEV = "xvmrv1"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    made = Lab(tmp_path)
    try:
        made.build(("h1", "h2"), router=False)
        yield made
    finally:
        made.destroy()


def peer(name: str, address: str, cidr: str) -> Peer:
    return Peer(name=name, underlay=ipaddress.ip_address(address), pod_cidrs=(cidr,))


H1 = peer("h1", "172.31.1.11", "10.250.1.0/24")
H2 = peer("h2", "172.31.1.12", "10.250.2.0/24")
H2_MOVED = peer("h2", "172.31.1.22", "10.250.2.0/24")
H3 = peer("h3", "172.31.1.13", "10.250.3.0/24")


def apply(lab: Lab, conf: dict[str, Any], peers: list[Peer], memory: PeerMemory) -> None:
    """As the agent does: a fresh model per peer set, the memory kept across them."""
    network = networks.parse(conf)
    with plumbing.inside(lab.hosts["h1"].path), \
            networks.open_model(network, Runtime.in_process()) as model:
        model.on_peers(peers, memory)


def no_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, reading our routes, neighbours or FDB back fails the test."""
    def dump(*args: Any) -> Any:
        raise AssertionError("a peer change read the kernel back")
    for name in ("main_routes", "permanent_neighbours", "permanent_fdb"):
        monkeypatch.setattr(routes, name, dump)


def joined(lab: Lab, encap: str) -> tuple[dict[str, Any], PeerMemory]:
    """h1 with a pod and h2 as its peer, applied once in full (the memory filled)."""
    conf = lab.config("h1", encap=encap, peers=("h1", "h2"))
    lab.add_pod("h1", conf, "p1")
    memory = PeerMemory()
    apply(lab, conf, [H1, H2], memory)
    assert isinstance(memory.state, Applied)
    return conf, memory


def test_a_moved_peer_over_vxlan_changes_exactly_its_entries(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    conf, memory = joined(lab, "vxlan")
    h1 = lab.hosts["h1"].name
    old_mac = vtep_mac(NETWORK, H2.underlay)
    assert [(e["mac"], e["dst"]) for e in fdb(h1, VXLAN_DEV)] == [(old_mac, "172.31.1.12")]
    no_dumps(monkeypatch)
    apply(lab, conf, [H1, H2_MOVED], memory)
    new_mac = vtep_mac(NETWORK, H2_MOVED.underlay)
    assert [(n["dst"], n["lladdr"]) for n in neighbours(h1, VXLAN_DEV)] == \
        [("10.250.2.0", new_mac)]
    assert [(e["mac"], e["dst"]) for e in fdb(h1, VXLAN_DEV)] == [(new_mac, "172.31.1.22")]
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes_of(h1)] == \
        [("10.250.2.0/24", "10.250.2.0", VXLAN_DEV)]
    # A new peer, then every peer gone: all of it, and only it, changes.
    apply(lab, conf, [H1, H2_MOVED, H3], memory)
    assert sorted(r["dst"] for r in routes_of(h1)) == ["10.250.2.0/24", "10.250.3.0/24"]
    assert len(fdb(h1, VXLAN_DEV)) == 2
    apply(lab, conf, [H1], memory)
    assert (routes_of(h1), neighbours(h1, VXLAN_DEV), fdb(h1, VXLAN_DEV)) == ([], [], [])
    assert isinstance(memory.state, Applied)


def test_a_moved_peer_without_encap_gets_one_new_route(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    conf, memory = joined(lab, "none")
    h1 = lab.hosts["h1"].name
    no_dumps(monkeypatch)
    apply(lab, conf, [H1, H2_MOVED], memory)
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes_of(h1)] == \
        [("10.250.2.0/24", "172.31.1.22", "eth0")]


def test_a_foreign_route_on_a_new_peers_cidr_is_left_alone_and_reported(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    conf, memory = joined(lab, "none")
    h1 = lab.hosts["h1"].name
    ip("-n", h1, "route", "add", "10.250.3.0/24", "via", "172.31.1.200", "proto", "static")
    with caplog.at_level(logging.WARNING):
        apply(lab, conf, [H1, H2, H3], memory)
    assert "10.250.3.0/24 is routed by someone else" in caplog.text
    assert [r["dst"] for r in routes_of(h1)] == ["10.250.2.0/24"]
    assert "10.250.3.0/24 via 172.31.1.200 dev eth0 proto static" in ip("-n", h1, "route")
    # The next change knows it is theirs: still left alone, h2's route goes.
    assert isinstance(memory.state, Applied)
    apply(lab, conf, [H1, H3], memory)
    assert routes_of(h1) == []
    assert "10.250.3.0/24 via 172.31.1.200 dev eth0 proto static" in ip("-n", h1, "route")


def test_a_full_apply_repairs_what_a_change_cannot_see(lab: Lab) -> None:
    """A route removed by hand is not noticed by a change (it reads nothing back); the
    periodic full apply (memory forgotten) puts it back."""
    conf, memory = joined(lab, "none")
    h1 = lab.hosts["h1"].name
    ip("-n", h1, "route", "del", "10.250.2.0/24", "proto", "202")
    apply(lab, conf, [H1, H2, H3], memory)
    assert [r["dst"] for r in routes_of(h1)] == ["10.250.3.0/24"]
    memory.forget()
    apply(lab, conf, [H1, H2, H3], memory)
    assert sorted(r["dst"] for r in routes_of(h1)) == ["10.250.2.0/24", "10.250.3.0/24"]
