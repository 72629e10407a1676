"""Connectivity per address family: which tests a dual-stack probe plans, with the
full-size packet sized for its family, and the hop blamed within that family."""

from __future__ import annotations

from xvmcni.cli.status import Style
from xvmcni.diagnose.connectivity import (
    Cell,
    HostProbe,
    Result,
    _by_family,
    _targets,
    explain,
    render,
)


def _probe(host: str, n: int, *, v6: bool = True, underlay: str = "") -> HostProbe:
    addresses = {4: f"10.0.{n}.2"} | ({6: f"fd00:0:{n}::2"} if v6 else {})
    gateways = {4: f"10.0.{n}.1"} | ({6: f"fd00:0:{n}::1"} if v6 else {})
    return HostProbe(host, f"/s{n}", addresses=addresses, gateways=gateways, mtu=1450,
                     underlay=underlay or f"172.30.0.1{n}", model="routed")


def test_addresses_are_sorted_by_family_ipv4_first() -> None:
    assert _by_family(["fd00::2", "10.0.0.2", "fd00::3", "bad"]) == {4: "10.0.0.2",
                                                                    6: "fd00::2"}
    assert _by_family(None) == {}


def test_a_dual_stack_probe_tests_both_families_to_a_dual_stack_peer() -> None:
    h1, h2 = _probe("h1", 1), _probe("h2", 2)
    planned = {(kind, dst): target for kind, dst, target in _targets(h1, [h1, h2])}
    assert set(planned) == {("gateway", "h1"), ("gateway6", "h1"), ("pod", "h2"),
                            ("pod6", "h2"), ("mtu", "h2"), ("mtu6", "h2"),
                            ("underlay", "h2")}
    assert planned[("mtu", "h2")]["size"] == 1450 - 28
    assert planned[("mtu6", "h2")]["size"] == 1450 - 48
    assert planned[("pod6", "h2")]["dst"] == "fd00:0:2::2"


def test_no_ipv6_test_towards_or_from_a_probe_without_ipv6() -> None:
    h1, h2 = _probe("h1", 1), _probe("h2", 2, v6=False)
    kinds = {kind for kind, _, _ in _targets(h1, [h1, h2])}
    assert "pod6" not in kinds and "mtu6" not in kinds and "pod" in kinds
    kinds = {kind for kind, _, _ in _targets(h2, [h1, h2])}
    assert kinds == {"gateway", "pod", "mtu", "underlay"}


def test_an_ipv6_underlay_is_tested_from_the_ipv6_address() -> None:
    h1, h2 = _probe("h1", 1), _probe("h2", 2, underlay="fd99::12")
    planned = {(kind, dst) for kind, dst, _ in _targets(h1, [h1, h2])}
    assert ("underlay6", "h2") in planned and ("underlay", "h2") not in planned


def test_the_failing_ipv6_hop_is_judged_by_the_ipv6_cells() -> None:
    probes = [_probe("h1", 1), _probe("h2", 2)]
    mtu6 = Cell("h1", "mtu6", "h2", "fd00:0:2::2", False, "no reply")
    pod6_ok = Cell("h1", "pod6", "h2", "fd00:0:2::2", True)
    pod_bad = Cell("h1", "pod", "h2", "10.0.2.2", False)
    result = Result("net", probes, [pod_bad, pod6_ok, mtu6])
    assert "path MTU" in explain(result, mtu6)   # IPv6 small packets pass


def test_the_matrix_has_one_block_per_family() -> None:
    probes = [_probe("h1", 1), _probe("h2", 2)]
    cells = [Cell("h1", kind, dst, "x", kind != "pod6")
             for kind, dst, _ in _targets(probes[0], probes)]
    text = render(Result("net", probes, cells), Style())
    assert "IPv4" in text and "IPv6" in text
    assert f"{len(cells) - 1}/{len(cells)} tests passed" in text
