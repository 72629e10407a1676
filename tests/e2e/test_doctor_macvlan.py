"""``xvmctl doctor`` and ``xvmctl connectivity`` on the macvlan model (dual-stack lab:
networks blue and red over three hosts, pod 1 of each host on blue, pod 2 on red)
and on a dual-stack routed lab: healthy labs pass both, in both families; each
macvlan fault, injected alone, is named by doctor as the only problem.

On macvlan every ADD re-runs the host's join (VXLAN device, host macvlan, bypass
rule, slice routes), so connectivity's probe ADD repairs the host-side faults
below before it tests: it shows no failing pair and doctor is healthy after it.
The effect of each fault is therefore shown with the lab's own pods and routes.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.test_doctor import (
    connectivity,
    doctor,
    gc,
    healthy,
    in_host,
    make_lab,
    only_problem,
    pod_reaches,
    problems,
)
from xvmcni import lab as labmod
from xvmcni.lab import icmp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root")

BLUE, RED = "xvm-macvlan@blue", "xvm-macvlan@red"
H1_BLUE_MACVLAN = "xvmmh110"   # the lab's blue network has VXLAN id 110


@pytest.fixture(scope="module")
def macvlan_lab() -> Iterator[labmod.Lab]:
    yield from make_lab(f"xm{os.getpid():x}{os.urandom(2).hex()}", pods=2,
                        model="macvlan", family="dual")


def _v4(lab: labmod.Lab, name: str) -> str:
    found = next(p for p in lab.pods if p.name == name).address_of(4)
    assert found is not None, name
    return found[0]


def _slice(lab: labmod.Lab, name: str) -> str:
    """The /24 slice of the host of pod ``name`` in its network (the lab's IPv4 slices)."""
    return _v4(lab, name).rsplit(".", 1)[0] + ".0/24"


def route_get(lab: labmod.Lab, host: str, dst: str, src: str = "") -> str:
    """How ``host`` itself routes to ``dst`` (from ``src``)."""
    extra = ["from", src] if src else []
    return subprocess.run(["nsenter", f"--net={lab.host(host).netns_path}", "ip", "route",
                           "get", dst, *extra], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def forwards(lab: labmod.Lab, host: str, dst: str, src: str, iif: str) -> bool:
    """Whether ``host`` accepts a packet from ``src`` to ``dst`` arriving on ``iif``
    (the reverse-path filter refuses it with EINVAL)."""
    return subprocess.run(["nsenter", f"--net={lab.host(host).netns_path}", "ip", "route",
                           "get", dst, "from", src, "iif", iif], capture_output=True,
                          timeout=30, check=False).returncode == 0


def test_a_healthy_macvlan_lab_passes_in_both_families(macvlan_lab: labmod.Lab) -> None:
    assert pod_reaches(macvlan_lab, "h1-p1", "h2-p1")
    healthy(macvlan_lab)
    status, found = doctor(macvlan_lab, "h3")
    assert (status, problems(found)) == (0, [])
    checked = {(f["check"], f["network"]) for f in found}
    for network in (BLUE, RED):
        assert {("macvlan", network), ("peers", network), ("objects", network)} <= checked
    assert any(f["subject"] == "ipv6 forwarding" for f in found)
    for network in (BLUE, RED):
        tested, failed = connectivity(macvlan_lab, network)
        assert failed == set()
        # Per probe: its gateway in both families; per other host its probe small and
        # full-size in both, and its (IPv4) underlay address.
        assert len(tested) == 3 * (2 + 2 * 5)
        assert {k for _, k, _ in tested} == {"gateway", "gateway6", "pod", "pod6", "mtu",
                                             "mtu6", "underlay"}


def test_a_deleted_bypass_rule_is_named(macvlan_lab: labmod.Lab) -> None:
    """Without the rule the host's own traffic to a pod of the segment detours
    through the remote host's router instead of going straight over the L2."""
    h2_pod = _v4(macvlan_lab, "h2-p1")
    router = macvlan_lab.pods_of("h1")[0].gateways[0]
    assert " via " not in route_get(macvlan_lab, "h1", h2_pod, router)
    in_host(macvlan_lab, "h1", "ip", "rule", "del", "pref", "1000", "from", "10.10.0.0/16",
            "to", "10.10.0.0/16", "table", "192")
    try:
        assert " via " in route_get(macvlan_lab, "h1", h2_pod, router)
        bad = only_problem(macvlan_lab)
        assert (bad["check"], bad["network"]) == ("objects", BLUE)
        assert "bypass rule for 10.10.0.0/16 (table 192) is missing" in bad["cause"]
        assert "xvmctl gc" in bad["fix"]
    finally:
        gc(macvlan_lab, "h1")
    assert " via " not in route_get(macvlan_lab, "h1", h2_pod, router)
    healthy(macvlan_lab)


def test_a_deleted_slice_route_is_named(macvlan_lab: labmod.Lab) -> None:
    """Without the route to h3's slice, h1 reaches h3's pods only by resolving each
    one on the L2 (the state the routes exist to avoid)."""
    cidr = _slice(macvlan_lab, "h3-p1")
    h3_pod = _v4(macvlan_lab, "h3-p1")
    in_host(macvlan_lab, "h1", "ip", "route", "del", cidr)
    try:
        assert " via " not in route_get(macvlan_lab, "h1", h3_pod)
        bad = only_problem(macvlan_lab)
        assert (bad["check"], bad["network"]) == ("peers", BLUE)
        assert f"route to {cidr} (host h3)" in bad["cause"] and "missing" in bad["cause"]
    finally:
        gc(macvlan_lab, "h1")
    assert " via " in route_get(macvlan_lab, "h1", h3_pod)
    healthy(macvlan_lab)


def test_a_deleted_host_macvlan_is_named(macvlan_lab: labmod.Lab) -> None:
    """The router into blue gone: h1's blue pod loses its gateway and every other
    network; pods of blue on other hosts still reach it over the L2."""
    in_host(macvlan_lab, "h1", "ip", "link", "del", H1_BLUE_MACVLAN)
    try:
        assert not pod_reaches(macvlan_lab, "h1-p1", "h2-p2")   # blue -> red via h1
        assert pod_reaches(macvlan_lab, "h2-p1", "h1-p1")       # blue L2 intact
        bad = only_problem(macvlan_lab)
        assert (bad["check"], bad["network"]) == ("objects", BLUE)
        assert f"host macvlan {H1_BLUE_MACVLAN} is missing" in bad["cause"]
        # The probe's ADD on h1 re-runs the join: the fault is repaired, not shown.
        tested, failed = connectivity(macvlan_lab, BLUE)
        assert tested and failed == set()
        assert pod_reaches(macvlan_lab, "h1-p1", "h2-p2")
    finally:
        gc(macvlan_lab, "h1")
    healthy(macvlan_lab)


def test_strict_rp_filter_on_the_host_macvlan_is_named(macvlan_lab: labmod.Lab) -> None:
    """Strict reverse-path filtering on h1's router into blue: a red pod of h2 reaches
    h1's blue pod through h2's router on blue, but h1 routes back to red through its
    red macvlan, so the kernel refuses the packet (asked as ``ip route get ... iif``:
    a cached forwarding decision can let a few packets of a running flow through)."""
    key = f"net.ipv4.conf.{H1_BLUE_MACVLAN}.rp_filter"
    red, blue = _v4(macvlan_lab, "h2-p2"), _v4(macvlan_lab, "h1-p1")
    assert forwards(macvlan_lab, "h1", blue, red, H1_BLUE_MACVLAN)
    in_host(macvlan_lab, "h1", "sysctl", "-qw", f"{key}=1")
    try:
        assert not forwards(macvlan_lab, "h1", blue, red, H1_BLUE_MACVLAN)
        bad = only_problem(macvlan_lab)
        assert (bad["check"], bad["subject"], bad["network"]) == \
            ("kernel", f"rp_filter {H1_BLUE_MACVLAN}", BLUE)
        assert "10.20." in bad["cause"] and "xvmmh120" in bad["cause"]
        assert f"{key}=2" in bad["fix"]
    finally:
        in_host(macvlan_lab, "h1", "sysctl", "-qw", f"{key}=2")
    assert forwards(macvlan_lab, "h1", blue, red, H1_BLUE_MACVLAN)
    assert pod_reaches(macvlan_lab, "h2-p2", "h1-p1")
    healthy(macvlan_lab)


def test_a_leftover_bypass_rule_is_named(macvlan_lab: labmod.Lab) -> None:
    """A bypass rule of a macvlan network this host no longer knows (its devices
    went, the rule stayed): a leftover, with the command that removes it."""
    rule = ["pref", "1000", "from", "10.99.0.0/16", "to", "10.99.0.0/16", "table", "192"]
    in_host(macvlan_lab, "h1", "ip", "rule", "add", *rule, "proto", "204")
    try:
        bad = only_problem(macvlan_lab)
        assert (bad["check"], bad["status"], bad["subject"]) == \
            ("macvlan", "warn", "rule from 10.99.0.0/16")
        assert "leftover" in bad["cause"]
        assert bad["fix"] == "ip rule del " + " ".join(rule)
    finally:
        in_host(macvlan_lab, "h1", "ip", "rule", "del", *rule)
    healthy(macvlan_lab)


# --- routed, dual-stack -----------------------------------------------------------------


@pytest.fixture(scope="module")
def routed_dual_lab() -> Iterator[labmod.Lab]:
    yield from make_lab(f"xq{os.getpid():x}{os.urandom(2).hex()}", model="routed",
                        family="dual")


def test_a_healthy_dual_stack_routed_lab_passes_in_both_families(
        routed_dual_lab: labmod.Lab) -> None:
    healthy(routed_dual_lab)
    tested, failed = connectivity(routed_dual_lab)
    assert failed == set()
    assert {k for _, k, _ in tested} == {"gateway", "gateway6", "pod", "pod6", "mtu",
                                         "mtu6", "underlay"}
    assert len(tested) == 3 * (2 + 2 * 5)


def test_a_lost_ipv6_route_fails_only_the_ipv6_pairs(routed_dual_lab: labmod.Lab) -> None:
    """An IPv6 pod route deleted on h1: h1's pod loses h3's pod over IPv6 only, and
    doctor names the route."""
    h1_pod = routed_dual_lab.pods_of("h1")[0]
    h3 = routed_dual_lab.pods_of("h3")[0].address_of(6)
    h3_v4 = routed_dual_lab.pods_of("h3")[0].address_of(4)
    assert h3 is not None and h3_v4 is not None
    assert icmp.ping(h1_pod.netns_path, h3[0], timeout=0.5, tries=2)
    routes = subprocess.run(["nsenter", f"--net={routed_dual_lab.host('h1').netns_path}",
                             "ip", "-6", "route", "show", "proto", "202"],
                            capture_output=True, text=True, check=True).stdout
    cidr = next(line.split()[0] for line in routes.splitlines()
                if line and _contains(line.split()[0], h3[0]))
    in_host(routed_dual_lab, "h1", "ip", "-6", "route", "del", cidr)
    try:
        assert not icmp.ping(h1_pod.netns_path, h3[0], timeout=0.5, tries=2)
        assert icmp.ping(h1_pod.netns_path, h3_v4[0], timeout=0.5, tries=2)
        bad = only_problem(routed_dual_lab)
        assert bad["check"] == "peers" and f"route to {cidr} (host h3)" in bad["cause"]
    finally:
        gc(routed_dual_lab, "h1")
    assert icmp.ping(h1_pod.netns_path, h3[0], timeout=0.5, tries=2)
    healthy(routed_dual_lab)


def _contains(cidr: str, address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)
