"""Node objects -> peers, without a server: seed 001's annotations as written, seed
002's IPv6 addresses from a prefix, per-family peers for encap none, malformed data
reported (never raised)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from xvmcni.controlplane import k8sconfig, k8snodes
from xvmcni.controlplane.k8sconfig import K8sSettings, publish_keys
from xvmcni.errors import CniError

NET = "net3"


def node(name: str = "vm-003", cidrs: list[str] | None = None,
         internal: list[str] | None = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"podCIDRs": cidrs or []},
            "status": {"addresses": [{"type": "InternalIP", "address": a}
                                     for a in internal or []]
                       + [{"type": "Hostname", "address": name}]}}


def test_seed_001_annotations_work_as_written() -> None:
    settings = k8sconfig.parse({"cidrAnnotation": "cidr.example.com/net3",
                                "addressAnnotation": "node-ip.nordix.org/net3"}, NET, {})
    n = node(cidrs=["10.244.3.0/24"], internal=["192.168.1.3"], annotations={
        "cidr.example.com/net3": "192.168.55.0/26,fd00:5::1:0/112",
        "node-ip.nordix.org/net3": "192.168.2.3,1000::1:c0a8:203"})
    view = k8snodes.view(n, settings, NET)
    assert not view.problems
    assert [str(c) for c in view.pod_cidrs] == ["192.168.55.0/26", "fd00:5::1:0/112"]
    assert view.address(4) == ipaddress.ip_address("192.168.2.3")
    assert view.address(6) == ipaddress.ip_address("1000::1:c0a8:203")
    peers, skipped = k8snodes.peers_of(view, "none", 4)
    assert not skipped
    assert [(str(p.underlay), p.pod_cidrs) for p in peers] == [
        ("192.168.2.3", ("192.168.55.0/26",)), ("1000::1:c0a8:203", ("fd00:5::1:0/112",))]


def test_environment_fills_what_the_section_leaves_out() -> None:
    env = {"NODE_NAME": "vm-003", "CIDR_ANNOTATION": "cidr.example.com/net3",
           "ADDRESS_ANNOTATION": "adr.example.com/net3", "IPV6_PREFIX": "1000::1:"}
    settings = k8sconfig.parse({}, NET, env)
    assert (settings.node_name, settings.cidr_annotation, settings.address_annotation,
            settings.ipv6_prefix) == ("vm-003", "cidr.example.com/net3",
                                      "adr.example.com/net3", "1000::1:")
    assert k8sconfig.parse({"nodeName": "other"}, NET, env).node_name == "other"
    assert k8sconfig.route_protocol({}, {"PROTOCOL": "200"}) == 200
    assert k8sconfig.route_protocol({"routeProtocol": 203}, {"PROTOCOL": "200"}) is None
    assert k8sconfig.route_protocol({}, {}) is None


@pytest.mark.parametrize(("section", "env", "why"), [
    ({"cidrAnnotation": "not a key"}, {}, "not an annotation key"),
    ({}, {"ADDRESS_ANNOTATION": "/x"}, "not an annotation key"),
    ({"ipv6Prefix": "1000::/120"}, {}, "leaves no room"),
    ({}, {"IPV6_PREFIX": "zz::"}, "not usable"),
    ({"kubeconfig": "relative/path"}, {}, "absolute path"),
    ({"resync": 1}, {}, "out of range"),
])
def test_bad_settings_are_refused_with_the_field(section: dict[str, Any], env: dict[str, str],
                                                 why: str) -> None:
    with pytest.raises(CniError, match=why):
        k8sconfig.parse(section, NET, env)


def test_bad_protocol_in_the_environment() -> None:
    with pytest.raises(CniError, match="PROTOCOL"):
        k8sconfig.route_protocol({}, {"PROTOCOL": "two hundred"})


@pytest.mark.parametrize(("prefix", "v6"), [
    ("1000::1:", "1000::1:c0a8:203"),          # seed 001 / xcluster's text form
    ("1000:1::/96", "1000:1::c0a8:203"),       # seed 002's prefix=1000:1::/96
])
def test_ipv6_from_prefix_and_ipv4(prefix: str, v6: str) -> None:
    settings = K8sSettings(ipv6_prefix=prefix)
    view = k8snodes.view(node(cidrs=["11.0.3.0/24", "1100:300::/64"],
                              internal=["192.168.2.3"]), settings, NET)
    assert view.address(6) == ipaddress.ip_address(v6)
    peers, _ = k8snodes.peers_of(view, "none", 4)
    assert {str(p.underlay) for p in peers} == {"192.168.2.3", v6}


def test_ipv4_only_node_without_prefix_is_refused_with_a_clear_reason() -> None:
    view = k8snodes.view(node(cidrs=["11.0.3.0/24", "1100:300::/64"],
                              internal=["192.168.2.3"]), K8sSettings(), NET)
    peers, skipped = k8snodes.peers_of(view, "none", 4)
    assert [p.pod_cidrs for p in peers] == [("11.0.3.0/24",)]
    assert len(skipped) == 1 and "IPV6_PREFIX" in skipped[0] and "ARP" in skipped[0]
    # Over VXLAN every family rides the IPv4 underlay: nothing is missing.
    peers, skipped = k8snodes.peers_of(view, "vxlan", 4)
    assert not skipped and peers[0].pod_cidrs == ("11.0.3.0/24", "1100:300::/64")


@pytest.mark.parametrize("annotations", [
    {"cidr.example.com/net3": "192.168.55.0/33"},
    {"cidr.example.com/net3": "192.168.55.1/26"},           # host bits set
    {"cidr.example.com/net3": "10.0.0.0/24,10.1.0.0/24"},    # two IPv4
    {"cidr.example.com/net3": "192.168.55.0/26", "node-ip.nordix.org/net3": "vm-003"},
])
def test_malformed_annotations_leave_the_node_out_with_a_reason(
        annotations: dict[str, str]) -> None:
    settings = K8sSettings(cidr_annotation="cidr.example.com/net3",
                           address_annotation="node-ip.nordix.org/net3")
    view = k8snodes.view(node(annotations=annotations), settings, NET)
    assert view.problems and all("annotation" in p for p in view.problems)
    assert k8snodes.peers_of(view, "none", 4) == ([], [])


def test_published_underlay_and_mac_are_used_together() -> None:
    mac_key, underlay_key = publish_keys(NET)
    n = node(cidrs=["10.244.1.0/24"], internal=["172.31.1.12"],
             annotations={mac_key: "0A:BB:CC:DD:EE:01", underlay_key: "172.31.1.12"})
    view = k8snodes.view(n, K8sSettings(), NET)
    assert k8snodes.peers_of(view, "vxlan", 4)[0][0].vtep_mac == "0a:bb:cc:dd:ee:01"
    # An address annotation naming another address: the MAC was not published for it.
    view = k8snodes.view(n, K8sSettings(address_annotation="adr.example.com/n"), NET)
    assert view.address(4) is None  # the node has no such annotation: not on this net
    n["metadata"]["annotations"]["adr.example.com/n"] = "192.168.2.3"
    view = k8snodes.view(n, K8sSettings(address_annotation="adr.example.com/n"), NET)
    peer = k8snodes.peers_of(view, "vxlan", 4)[0][0]
    assert (str(peer.underlay), peer.vtep_mac) == ("192.168.2.3", "")


def test_old_servers_podcidr_and_missing_fields() -> None:
    n: dict[str, Any] = {"metadata": {"name": "x"}, "spec": {"podCIDR": "10.244.7.0/24"},
                         "status": {"addresses": [{"type": "InternalIP",
                                                   "address": "10.0.0.7"}]}}
    assert [str(c) for c in k8snodes.view(n, K8sSettings(), NET).pod_cidrs] == \
        ["10.244.7.0/24"]
    bare = k8snodes.view({"metadata": {"name": "y"}}, K8sSettings(), NET)
    assert bare.pod_cidrs == () and not bare.problems
    assert k8snodes.peers_of(bare, "vxlan", 4) == ([], [])


def test_network_names_that_cannot_be_annotation_keys_are_refused() -> None:
    with pytest.raises(CniError, match="annotation key"):
        k8sconfig.parse({}, "x" * 60, {})
    with pytest.raises(CniError, match="annotation key"):
        k8sconfig.parse({}, "net_", {})
