"""The macvlan model's configuration: the seed's spelling and ours, clear CNI errors
for bad input, the per-pod network choice and the per-host slices."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.cni.request import Request
from xvmcni.errors import CniError
from xvmcni.ipam.hostslices import RouterBlockIpam, host_range, slice_of
from xvmcni.models import macvlan
from xvmcni.models.macvlan_choice import choose_network
from xvmcni.models.macvlan_config import MacvlanSettings, parse_settings

SEED: dict[str, Any] = {
    "cniVersion": "0.3.1", "name": "vxlan-net", "type": "xvm-cni", "model": "macvlan",
    "defaultNetwork": "blue", "k8sNetworkFromNamespace": True,
    "k8sReadAnnotations": False, "k8sConfigPath": "/etc/kubernetes/kubelet.conf",
    "vxlans": [
        {"id": 100, "name": "blue", "cidr": "10.10.0.0/16", "excludeFirst": 10,
         "excludeLast": 5, "mtu": 1400,
         "options": {"group": "239.2.2.2", "port": 4789, "ttl": 8, "tos": 1,
                     "learning": False, "srcaddr": "192.0.2.7", "vtepdev": "eth1"}},
        {"id": 200, "name": "red", "cidr": "10.20.0.0/16", "options": {"vtepdev": "eth1"}},
    ],
    "args": {"annotations": {"vxlan-cni.phdata.io/NetworkName": "red",
                             "vxlan-cni.phdata.io/RequestedAddress": "10.20.3.4"}},
}


def settings(**over: Any) -> MacvlanSettings:
    raw = {**SEED, **over}
    return parse_settings({k: v for k, v in raw.items() if v is not None}, raw["name"])


def error(**over: Any) -> str:
    with pytest.raises(CniError) as caught:
        raw = {**SEED, **over}
        networks.parse({k: v for k, v in raw.items() if v is not None})
    assert caught.value.code == 7
    return str(caught.value)


def test_seed_configuration_as_written() -> None:
    s = settings()
    blue = s.segment("blue")
    assert blue is not None
    assert (blue.vni, str(blue.subnets[0]), blue.exclude_first, blue.exclude_last,
            blue.mtu) == (100, "10.10.0.0/16", 10, 5, 1400)
    assert (str(blue.group), blue.port, blue.ttl, blue.tos, blue.learning,
            str(blue.local_address), blue.host_interface) == \
        ("239.2.2.2", 4789, 8, 1, False, "192.0.2.7", "eth1")
    assert s.default_network == "blue" and s.from_namespace
    assert s.k8s_config_path == "/etc/kubernetes/kubelet.conf"
    assert s.annotations["vxlan-cni.phdata.io/NetworkName"] == "red"
    assert s.bypass_table == 192


def test_our_spelling_side_by_side() -> None:
    ours = settings(vxlans=None, hostInterface="eth0", networkFromNamespace=True,
                    defaultNetwork="a", k8sNetworkFromNamespace=None, networks=[
                        {"vxlanID": 7, "name": "a", "subnet": ["10.1.0.0/16", "fd00:1::/64"],
                         "localAddress": "192.0.2.9", "isolated": True}])
    seg = ours.segments[0]
    assert seg.vni == 7 and seg.host_interface == "eth0" and seg.isolated
    assert [str(n) for n in seg.subnets] == ["10.1.0.0/16", "fd00:1::/64"]
    assert seg.slice_prefix == {4: 24, 6: 80} and ours.from_namespace


@pytest.mark.parametrize(("over", "words"), [
    ({"vxlans": []}, "'vxlans' (or 'networks') is required"),
    ({"vxlans": [{"name": "x", "cidr": "10.0.0.0/16"}]}, "'id' (or 'vxlanID') is required"),
    ({"vxlans": [{"id": 0, "name": "x", "cidr": "10.0.0.0/16", "hostInterface": "e"}]},
     "out of range"),
    ({"vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.1/16", "hostInterface": "e"}]},
     "not a network in CIDR notation"),
    ({"vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.0/16"}]}, "no underlay interface"),
    ({"vxlans": [{"id": 1, "name": "a b", "cidr": "10.0.0.0/16", "hostInterface": "e"}]},
     "'name'"),
    ({"vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.0/16", "hostInterface": "e",
                  "options": {"group": "10.1.1.1"}}]}, "not a multicast address"),
    ({"vxlans": [{"id": 1, "name": "x", "vxlanID": 2, "cidr": "10.0.0.0/16",
                  "hostInterface": "e"}]}, "same field with different values"),
    ({"vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.0/16", "hostInterface": "e"},
                 {"id": 2, "name": "y", "cidr": "10.0.128.0/17", "hostInterface": "e"}]},
     "overlap"),
    ({"vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.0/16", "hostInterface": "e"},
                 {"id": 1, "name": "y", "cidr": "10.1.0.0/16", "hostInterface": "e"}]},
     "share VXLAN id"),
    ({"defaultNetwork": "green"}, "'defaultNetwork' 'green' is not one of"),
    ({"bypassTable": 254}, "kernel's tables"),
    ({"vxlans": "blue"}, "must be a list"),
    ({"vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.0/16", "hostInterface": "e",
                  "excludeFirst": "3"}]}, "must be a whole number"),
    ({"args": {"annotations": {"vxlan-cni.phdata.io/NetworkName": 3}}}, "must be a string"),
])
def test_bad_input_is_a_clear_error(over: dict[str, Any], words: str) -> None:
    assert words in error(**over)


def test_static_peers_need_no_pod_cidrs() -> None:
    net = networks.parse({**SEED, "controlPlane": {"type": "static", "peers": [
        {"name": "n1", "address": "192.0.2.1"}, {"name": "n2", "address": "192.0.2.2"}]}})
    parts = networks.segments(net)
    assert [p.name for p in parts] == ["vxlan-net@blue", "vxlan-net@red"]
    assert len({p.state_dir for p in parts}) == 2
    assert net.static_peers is not None and len(net.static_peers) == 2


def test_etcd_control_plane_per_network() -> None:
    net = networks.parse({**SEED, "controlPlane": {
        "type": "etcd", "endpoints": ["http://127.0.0.1:2379"]}})
    parts = networks.segments(net)
    # IPv4-only networks share their subnet out in /26 blocks claimed through etcd.
    assert all(p.etcd is not None and p.blocks is not None and p.blocks.prefix == 26
               for p in parts)
    red = parts[1].settings
    assert isinstance(red, macvlan.SegmentSettings) and red.segment.group is None
    assert red.blocks
    dual = networks.parse({**SEED, "blockSize": 28, "controlPlane": {
        "type": "etcd", "endpoints": ["http://127.0.0.1:2379"]}, "vxlans": [
            {"id": 1, "name": "d", "cidr": ["10.1.0.0/16", "fd00::/64"], "hostInterface": "e"},
            {"id": 2, "name": "v4", "cidr": "10.2.0.0/16", "hostInterface": "e"}],
        "defaultNetwork": "d"})
    d, v4 = networks.segments(dual)
    assert d.blocks is None                       # dual-stack: per-host slices
    assert v4.blocks is not None and v4.blocks.prefix == 28


def test_multicast_default_group() -> None:
    raw = {**SEED, "vxlans": [{"id": 1, "name": "x", "cidr": "10.0.0.0/16",
                               "hostInterface": "eth0"}], "defaultNetwork": None}
    net = networks.parse({k: v for k, v in raw.items() if v is not None})
    seg = networks.segments(net)[0].settings
    assert isinstance(seg, macvlan.SegmentSettings)
    assert str(seg.segment.group) == "239.1.1.1"


# --- choice --------------------------------------------------------------------------

def test_choice_order() -> None:
    s = settings(args=None)
    annotations = {"vxlan-cni.phdata.io/NetworkName": "red"}
    assert choose_network(s, annotations, {}, []).segment.name == "red"
    assert choose_network(s, {}, {"XVM_NETWORK": "red"}, []).segment.name == "red"
    by_address = choose_network(s, {}, {}, ["10.20.1.2/16"])
    assert by_address.segment.name == "red" and by_address.source == "address"
    assert [str(a) for a in by_address.requested] == ["10.20.1.2"]
    assert choose_network(s, {}, {"K8S_POD_NAMESPACE": "red"}, []).segment.name == "red"
    assert choose_network(s, {}, {"K8S_POD_NAMESPACE": "other"}, []).segment.name == "blue"
    assert choose_network(s, {}, {}, []).source == "default"


@pytest.mark.parametrize(("annotations", "args", "ips", "words"), [
    ({"vxlan-cni.phdata.io/NetworkName": "green"}, {}, [], "is not one of"),
    ({"vxlan-cni.phdata.io/NetworkName": "blue",
      "vxlan-cni.phdata.io/RequestedAddress": "10.20.0.5"}, {}, [], "not inside network"),
    ({}, {}, ["10.99.0.1"], "lies in no network"),
    ({"vxlan-cni.phdata.io/RequestedAddress": "nonsense"}, {}, [], "is not an address"),
    ({}, {"XVM_NETWORK": "blue"}, ["10.10.0.5", "10.10.0.6"], "more than one IPv4"),
])
def test_choice_refusals(annotations: dict[str, str], args: dict[str, str],
                         ips: list[str], words: str) -> None:
    with pytest.raises(CniError) as caught:
        choose_network(settings(args=None), annotations, args, ips)
    assert caught.value.code == 7 and words in str(caught.value)


def test_no_network_at_all_says_why() -> None:
    s = settings(args=None, defaultNetwork=None)
    with pytest.raises(CniError) as caught:
        choose_network(s, {}, {"K8S_POD_NAMESPACE": "kube-system"}, [])
    assert caught.value.code == 7
    assert "kube-system" in str(caught.value) and "defaultNetwork" in str(caught.value)
    reading = settings(args=None, defaultNetwork=None, k8sReadAnnotations=True)
    with pytest.raises(CniError) as caught:
        choose_network(reading, {}, {}, [])
    assert "no Kubernetes pod was read" in str(caught.value)


def test_choice_from_pod_and_namespace_annotations() -> None:
    s = settings(args=None, defaultNetwork=None, k8sReadAnnotations=True)
    seed = {"vxlan-cni.phdata.io/NetworkName": "red"}
    ours = {"xvm-cni.io/network": "red"}
    for pod in (seed, ours):
        assert choose_network(s, {}, {}, [], pod=pod).source == "name"
    # The pod's requested address picks its network; ours and the seed's keys.
    for key in ("vxlan-cni.phdata.io/RequestedAddress", "xvm-cni.io/address"):
        got = choose_network(s, {}, {}, [], pod={key: "10.20.1.9"})
        assert got.segment.name == "red" and [str(a) for a in got.requested] == ["10.20.1.9"]
    # The namespace's annotation names the network when the pod does not...
    by_ns = choose_network(s, {}, {"K8S_POD_NAMESPACE": "x"}, [], pod={},
                           namespace_annotations=ours)
    assert by_ns.segment.name == "red" and by_ns.source == "namespace annotation"
    # ...and the pod's own (or the invocation's) wins over it.
    assert choose_network(s, {}, {}, [], pod={"xvm-cni.io/network": "blue"},
                          namespace_annotations=ours).segment.name == "blue"
    assert choose_network(s, {"xvm-cni.io/network": "blue"}, {}, [], pod=seed
                          ).segment.name == "blue"
    with pytest.raises(CniError) as caught:
        choose_network(s, {}, {}, [], pod={**seed, "xvm-cni.io/network": "blue"})
    assert caught.value.code == 7 and "disagree" in str(caught.value)
    with pytest.raises(CniError) as caught:
        choose_network(s, {}, {}, [], pod={}, namespace_annotations={
            "xvm-cni.io/network": "green"})
    assert caught.value.code == 7 and "green" in str(caught.value)


def test_choose_segment_from_request() -> None:
    net = networks.parse(SEED)
    chosen = networks.choose_segment(net, Request("ADD", config=SEED))
    assert chosen.name == "vxlan-net@red"
    assert [str(a) for a in chosen.requested] == ["10.20.3.4"]


# --- slices ----------------------------------------------------------------------------

def test_slices_and_router_addresses() -> None:
    v4 = ipaddress.ip_network("10.10.0.0/16")
    host = ipaddress.ip_address("172.29.0.11")
    assert str(slice_of(v4, host, 24)) == "10.10.11.0/24"
    rng = host_range(v4, host, 24)
    assert str(rng.router) == "10.10.11.1"
    assert (str(ipaddress.ip_address(rng.first)), str(ipaddress.ip_address(rng.last))) == \
        ("10.10.11.2", "10.10.11.254")
    v6 = ipaddress.ip_network("fd00:30::/64")
    assert str(host_range(v6, host, 80).router) == "fd00:30::b:0:0:1"


def test_excluded_addresses_are_never_used() -> None:
    v4 = ipaddress.ip_network("10.10.0.0/16")
    first = host_range(v4, ipaddress.ip_address("172.29.0.0"), 24, exclude_first=10)
    assert str(first.router) == "10.10.0.10"
    last = host_range(v4, ipaddress.ip_address("172.29.0.255"), 24, exclude_last=5)
    assert str(ipaddress.ip_address(last.last)) == "10.10.255.249"
    gone = host_range(v4, ipaddress.ip_address("172.29.0.0"), 24, exclude_first=300)
    assert gone.router is None and gone.first > gone.last


def test_block_pools_keep_the_router_address(tmp_path: Path) -> None:
    ipam = RouterBlockIpam(ipaddress.IPv4Network("10.10.0.0/16"), tmp_path, None,
                           exclude_first=5)
    first = ipam.pools(["10.10.0.0_26"])[0]
    assert (str(first.first), str(first.last)) == ("10.10.0.6", "10.10.0.62")  # .5 routes
    later = ipam.pools(["10.10.7.64_26"])[0]
    assert (str(later.first), str(later.last)) == ("10.10.7.66", "10.10.7.126")
