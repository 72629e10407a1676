"""The lab's routed underlay (two subnets behind a router that carries no
multicast) and the routed model: pods reach each other across the router, while
the multicast l2 network cannot (the control that shows the router is real)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.pinging import PingRun, ping_continuously
from xvmcni import lab as labmod
from xvmcni.lab import plumbing, probes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")


@pytest.mark.parametrize("encap", ["vxlan", "auto"])
def test_routed_model_across_a_routed_underlay(make_lab_name: Callable[[str], str],
                                               encap: str) -> None:
    name = make_lab_name("r")
    try:
        lab = labmod.lab_up(name, hosts=3, pods=1, model="routed", encap=encap,
                            underlay="routed")
        assert {h.underlay.rsplit(".", 2)[0] for h in lab.hosts} == {"172.30"}
        assert len({h.underlay.split(".")[2] for h in lab.hosts}) == 2  # two subnets
        assert [p.address.split("/")[0].rsplit(".", 1)[0] for p in lab.pods] == [
            "10.244.1", "10.244.2", "10.244.3"]  # each host its own pod CIDR
        matrix = probes.ping_matrix(lab)
        assert matrix.ok, matrix
        mtu = probes.mtu_check(lab)
        assert mtu is None or mtu.ok
        # lab status shows each host's peers as its kernel has them programmed: one
        # route per remote host; vxlan peers also one neighbour and one FDB entry.
        peers = {p.host: p for p in labmod.lab_status(name).peers}
        assert set(peers) == {"h1", "h2", "h3"}
        for host, found in peers.items():
            assert not found.error
            assert len(found.routes) == 2, (host, found.routes)
            tunnelled = 2 if encap == "vxlan" else (2 if host == "h2" else 1)
            assert (found.neighbours, found.fdb) == (tunnelled, tunnelled), (host, found)
    finally:
        labmod.lab_down(name)


def test_multicast_does_not_cross_the_router(make_lab_name: Callable[[str], str]) -> None:
    name = make_lab_name("m")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, underlay="routed")
        matrix = probes.ping_matrix(lab)
        a, b = (p.name for p in lab.pods)
        # Each pod still reaches its own gateway; across the router nothing arrives.
        assert matrix.cells[(a, "gateway")].ok and matrix.cells[(b, "gateway")].ok
        assert not matrix.cells[(a, b)].ok and not matrix.cells[(b, a)].ok
    finally:
        labmod.lab_down(name)


@pytest.mark.parametrize("family", ["dual", "ipv6"])
def test_routed_model_dual_stack_and_ipv6(make_lab_name: Callable[[str], str],
                                          family: str) -> None:
    name = make_lab_name("f")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, model="routed", underlay="routed",
                            family=family)
        wanted = [4, 6] if family == "dual" else [6]
        assert probes.lab_families(lab) == wanted
        for pod in lab.pods:
            assert pod.families == wanted
        for version in wanted:
            matrix = probes.ping_matrix(lab, family=version)
            assert matrix.family == version
            assert matrix.total == 2 * 2  # the other pod and the gateway, each way
            assert matrix.ok, matrix.failures()
            mtu = probes.mtu_check(lab, family=version)
            assert mtu is not None and mtu.ok, mtu
    finally:
        labmod.lab_down(name)


def test_routed_agent_kill_loses_no_packet(make_lab_name: Callable[[str], str]) -> None:
    """A pod on h1 pings a pod on h2 (behind the router, through the VXLAN device)
    every 10 ms while h1's agent is killed (SIGKILL) and started again three times:
    routes, neighbours and FDB entries stay, and the new agent's reconcile changes
    nothing that works."""
    name = make_lab_name("k")
    try:
        lab = labmod.lab_up(name, hosts=2, pods=1, model="routed", underlay="routed")
        src, dst = (next(p for p in lab.pods if p.host == h) for h in ("h1", "h2"))
        h1 = lab.host("h1")
        links_before = {link.name: link.index for link in plumbing.links(h1.netns_path)}
        peers_before = labmod.lab_status(name).peers
        stop, run = threading.Event(), PingRun()
        with ThreadPoolExecutor(max_workers=1) as pool:
            pinger = pool.submit(ping_continuously, src, dst.ip, stop, run)
            try:
                deadline = time.monotonic() + 10
                while run.received < 20 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert run.received >= 20 and not run.lost, run
                for _ in range(3):
                    labmod.agent_restart(name, "h1", kill=True)
                    time.sleep(0.3)
            finally:
                stop.set()
            pinger.result(timeout=30)
        assert run.lost == [], run.lost[:5]
        assert run.sent == run.received > 60
        assert {link.name: link.index for link in plumbing.links(h1.netns_path)} \
            == links_before
        assert labmod.lab_status(name).peers == peers_before
    finally:
        labmod.lab_down(name)
