"""The routed model's pure parts: its configuration, the static peer list, VTEP MAC
derivation, and the diff from a peer list to kernel changes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.controlplane.base import Peer
from xvmcni.dataplane.routes import FdbEntry, NeighEntry, RouteEntry
from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.models import routed
from xvmcni.models.routed_peers import Applied, Local, desired, plan, plan_change, vtep_mac

BASE: dict[str, Any] = {"cniVersion": "1.0.0", "name": "rnet", "type": "xvm-cni",
                        "model": "routed", "hostInterface": "eth0",
                        "podCIDR": "10.244.1.0/24"}
V4 = ipaddress.IPv4Address
N4 = ipaddress.IPv4Network


def parse(**changes: Any) -> networks.Network:
    return networks.parse({k: v for k, v in {**BASE, **changes}.items() if v is not None})


def settings(**changes: Any) -> routed.RoutedSettings:
    found = parse(**changes).settings
    assert isinstance(found, routed.RoutedSettings)
    return found


def test_defaults() -> None:
    s = settings()
    assert (s.encap, s.vxlan_id, s.port, s.route_protocol, s.mtu, s.ip_masq) == \
        ("vxlan", 1, 8472, 202, 1500, False)
    assert (s.bridge_name, s.vxlan_name) == ("xvmrb1", "xvmrv1")
    assert [str(g) for g in s.gateways] == ["10.244.1.1/24"]


def test_seed_003_needs_no_model_field() -> None:
    net = networks.parse({"cniVersion": "0.3.1", "name": "bvcni", "type": "xvm-cni",
                          "podcidr": "10.244.1.0/24", "hostInterface": "eth0"})
    assert net.config.model == "routed"
    assert isinstance(net.settings, routed.RoutedSettings)
    assert net.settings.pod_cidrs == (N4("10.244.1.0/24"),)


def test_an_l2_config_stays_l2() -> None:
    net = networks.parse({"cniVersion": "1.0.0", "name": "x", "type": "xvm-cni",
                          "hostInterface": "eth0", "vxlanID": 10, "subnet": "10.0.0.0/16"})
    assert net.config.model == "l2"


def test_lists_per_family() -> None:
    s = settings(podCIDR=["10.244.1.0/24"], clusterCIDR=["10.244.0.0/16", "fd00::/48"],
                 ipMasq=True, encap="auto", routeProtocol=200, bridge="cbr0")
    assert s.cluster_cidr(6) == ipaddress.IPv6Network("fd00::/48")
    assert (s.encap, s.route_protocol, s.bridge_name) == ("auto", 200, "cbr0")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"podCIDR": None}, "podCIDR"),
    ({"podCIDR": "10.244.1.1/24"}, "podCIDR"),
    ({"podCIDR": "10.244.1.0/31"}, "too small"),
    ({"podCIDR": ["10.244.1.0/24", "10.244.2.0/24"]}, "two IPv4"),
    ({"podCIDR": 5}, "podCIDR"),
    ({"podCIDR": "fd00::/48"}, "larger than a /64"),
    ({"podCIDR": "fd00::/64", "rangeStart": "10.0.0.5"}, "IPv4"),
    ({"clusterCIDR": "10.245.0.0/16"}, "outside"),
    ({"ipMasq": True}, "clusterCIDR"),
    ({"encap": "ipip"}, "encap"),
    ({"routeProtocol": 2}, "routeProtocol"),
    ({"routeProtocol": 256}, "routeProtocol"),
    ({"vxlanID": 16_777_216}, "vxlanID"),
    ({"port": 0}, "port"),
    ({"bridge": "a-very-long-bridge-name"}, "bridge"),
    ({"hostInterface": None}, "hostInterface"),
    ({"perHostPrefix": 26}, "perHostPrefix"),
    ({"controlPlane": {"type": "static", "peers": [{"address": "10.0.0.1"}]}}, "podCIDRs"),
    ({"controlPlane": {"type": "static", "peers": "x"}}, "peers"),
    ({"controlPlane": {"type": "static", "peers": [
        {"address": "10.0.0.1", "podCIDRs": ["10.244.2.0/24"], "vtepMAC": "01:00:00:00:00:01"}
    ]}}, "vtepMAC"),
    ({"controlPlane": {"type": "static", "peers": [
        {"name": "a", "address": "10.0.0.1", "podCIDRs": ["10.244.2.0/24"]},
        {"name": "a", "address": "10.0.0.2", "podCIDRs": ["10.244.3.0/24"]}]}}, "twice"),
])
def test_bad_values_are_refused(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CniError) as info:
        parse(**change)
    assert info.value.code == INVALID_CONFIG
    assert fragment in str(info.value) + info.value.details


def test_static_peers_parse() -> None:
    net = parse(controlPlane={"type": "static", "peers": [
        {"name": "n2", "address": "192.168.1.12", "podCIDRs": ["10.244.2.0/24"]},
        {"address": "192.168.1.13", "podCIDR": "10.244.3.0/24", "vtepMAC": "02:AA:00:00:00:01"},
    ]})
    assert net.static_peers == (
        Peer("n2", V4("192.168.1.12"), "", ("10.244.2.0/24",)),
        Peer("peer-1", V4("192.168.1.13"), "02:aa:00:00:00:01", ("10.244.3.0/24",)))
    assert networks.control_plane(net).peers() == list(net.static_peers)


def test_vtep_mac_is_derived_unicast_and_distinct() -> None:
    mac = vtep_mac("net", V4("192.168.1.11"))
    assert mac == vtep_mac("net", V4("192.168.1.11"))            # restarts, reboots
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2                     # unicast, local
    others = {vtep_mac("net", V4(f"192.168.1.{i}")) for i in range(1, 200)}
    assert len(others) == 199                                    # one per host
    assert vtep_mac("other", V4("192.168.1.11")) != mac          # one per network


LOCAL = Local(network="net", encap="vxlan",
              underlay=ipaddress.IPv4Interface("192.168.1.11/24"),
              pod_cidrs=(N4("10.244.1.0/24"),), gateways=(V4("10.244.1.1"),),
              underlay_index=2, vxlan_index=9)
PEERS = [Peer("me", V4("192.168.1.11"), "", ("10.244.1.0/24",)),
         Peer("near", V4("192.168.1.12"), "", ("10.244.2.0/24",)),
         Peer("far", V4("192.168.7.13"), "", ("10.244.3.0/24",))]


def test_vxlan_wants_one_of_each_per_remote_host() -> None:
    want = desired(LOCAL, PEERS)
    assert set(want.routes) == {N4("10.244.2.0/24"), N4("10.244.3.0/24")}
    route = want.routes[N4("10.244.2.0/24")]
    assert route == RouteEntry(N4("10.244.2.0/24"), V4("10.244.2.0"), 9, onlink=True,
                               prefsrc=V4("10.244.1.1"))
    near_mac = vtep_mac("net", V4("192.168.1.12"))
    assert want.neighbours[V4("10.244.2.0")] == NeighEntry(V4("10.244.2.0"), near_mac)
    assert want.fdb[near_mac] == FdbEntry(near_mac, V4("192.168.1.12"))
    assert len(want.neighbours) == len(want.fdb) == 2


def test_auto_routes_the_own_subnet_directly() -> None:
    local = Local(**{**LOCAL.__dict__, "encap": "auto"})
    want = desired(local, PEERS)
    assert want.routes[N4("10.244.2.0/24")] == RouteEntry(N4("10.244.2.0/24"),
                                                          V4("192.168.1.12"), 2)
    assert want.routes[N4("10.244.3.0/24")].oif == 9
    assert list(want.neighbours) == [V4("10.244.3.0")]


def test_auto_tunnels_a_family_the_underlay_cannot_route() -> None:
    """Dual-stack pods over an IPv4 underlay: the near host's IPv4 CIDR is routed
    directly, its IPv6 CIDR (no IPv6 next hop exists) goes over VXLAN."""
    local = Local(**{**LOCAL.__dict__, "encap": "auto",
                     "pod_cidrs": (N4("10.244.1.0/24"), ipaddress.ip_network("fd00:1:1::/64")),
                     "gateways": (V4("10.244.1.1"), ipaddress.ip_address("fd00:1:1::1"))})
    near = Peer("near", V4("192.168.1.12"), "", ("10.244.2.0/24", "fd00:1:2::/64"))
    want = desired(local, [near])
    assert want.routes[N4("10.244.2.0/24")].oif == 2                   # direct
    v6 = want.routes[ipaddress.ip_network("fd00:1:2::/64")]
    assert (v6.oif, v6.onlink) == (9, True) and not want.skipped         # tunnelled
    assert list(want.fdb.values()) == [FdbEntry(vtep_mac("net", V4("192.168.1.12")),
                                                V4("192.168.1.12"))]


def test_overlapping_and_foreign_family_cidrs_are_left_out() -> None:
    peers = [Peer("clash", V4("192.168.1.20"), "", ("10.244.1.0/25",)),
             Peer("v6", V4("192.168.1.21"), "", ("fd00:1::/64",))]
    want = desired(LOCAL, peers)
    assert want.routes == {} and len(want.skipped) == 2


def test_plan_is_empty_when_the_kernel_matches() -> None:
    want = desired(LOCAL, PEERS)
    todo = plan(want, want.routes.values(), want.neighbours.values(), want.fdb.values())
    assert todo.empty


def test_plan_removes_a_gone_peer_and_only_it() -> None:
    have = desired(LOCAL, PEERS)
    want = desired(LOCAL, PEERS[:2])
    todo = plan(want, have.routes.values(), have.neighbours.values(), have.fdb.values())
    far_mac = vtep_mac("net", V4("192.168.7.13"))
    assert [r.dst for r in todo.del_routes] == [N4("10.244.3.0/24")]
    assert todo.del_fdb == [FdbEntry(far_mac, V4("192.168.7.13"))]
    assert [n.address for n in todo.del_neighbours] == [V4("10.244.3.0")]
    assert not (todo.add_routes or todo.add_fdb or todo.add_neighbours)


def test_plan_follows_a_peer_that_moved() -> None:
    have = desired(LOCAL, PEERS)
    moved = [PEERS[1], Peer("far", V4("192.168.7.14"), "02:00:00:00:00:07",
                            ("10.244.3.0/24",))]
    todo = plan(desired(LOCAL, moved), have.routes.values(), have.neighbours.values(),
                have.fdb.values())
    assert [n.mac for n in todo.add_neighbours] == ["02:00:00:00:00:07"]
    assert todo.add_fdb == [FdbEntry("02:00:00:00:00:07", V4("192.168.7.14"))]
    assert todo.add_routes == [] and todo.del_routes == []     # the route is unchanged
    assert [f.dst for f in todo.del_fdb] == [V4("192.168.7.13")]


def test_a_cidr_someone_else_routes_is_not_taken_over() -> None:
    want = desired(LOCAL, PEERS)
    todo = plan(want, [], [], [], foreign=[N4("10.244.3.0/24")])
    assert [r.dst for r in todo.add_routes] == [N4("10.244.2.0/24")]
    assert [n.address for n in todo.add_neighbours] == [V4("10.244.2.0")]
    assert len(todo.add_fdb) == 1


def test_a_change_against_what_was_applied_touches_only_the_changed_peer() -> None:
    """A peer that moved to another underlay address: its neighbour and FDB entry are
    replaced, the old FDB entry goes, its route (via its CIDR, onlink) stays; the
    unchanged peer is not touched; a destination foreign at the last full apply stays
    out."""
    first = desired(LOCAL, PEERS)
    applied = Applied(7, LOCAL, first, frozenset({N4("10.244.9.0/24")}))
    moved = [*PEERS[:2], Peer("far", V4("192.168.7.99"), "", ("10.244.3.0/24",)),
             Peer("theirs", V4("192.168.7.14"), "", ("10.244.9.0/24",))]
    want = desired(LOCAL, moved)
    todo = plan_change(applied, want)
    old_mac, new_mac = vtep_mac("net", V4("192.168.7.13")), vtep_mac("net", V4("192.168.7.99"))
    assert todo.add_neighbours == [NeighEntry(V4("10.244.3.0"), new_mac)]
    assert todo.add_fdb == [FdbEntry(new_mac, V4("192.168.7.99"))]
    assert todo.del_fdb == [FdbEntry(old_mac, V4("192.168.7.13"))]
    assert (todo.add_routes, todo.del_routes, todo.del_neighbours) == ([], [], [])
    assert N4("10.244.9.0/24") not in want.routes
    assert any("10.244.9.0/24 is routed by someone else" in why for why in want.skipped)
    # Every peer gone: everything that was applied goes, in reverse order of adding.
    gone = plan_change(applied, desired(LOCAL, PEERS[:1]))
    assert {r.dst for r in gone.del_routes} == set(first.routes)
    assert len(gone.del_fdb) == len(gone.del_neighbours) == 2
