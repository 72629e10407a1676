"""The lab's routed underlay (two subnets behind a router that carries no
multicast) and the routed model: pods reach each other across the router, while
the multicast l2 network cannot (the control that shows the router is real)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from xvmcni import lab as labmod
from xvmcni.lab import probes

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
