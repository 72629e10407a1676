"""The etcd control plane's config section, the l2 fields it changes, the block IPAM's
settings and candidates, and that nothing imports the etcd client before it is used."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.controlplane import etcdconfig
from xvmcni.controlplane.etcdconfig import Endpoint
from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.ipam import blocks
from xvmcni.ipam.blocks import BlockIpam

SEED: dict[str, Any] = {
    "cniVersion": "1.0.0", "name": "net1", "type": "xvm-cni", "hostInterface": "eth0",
    "vxlanID": 10, "subnet": "10.244.0.0/16", "dataDir": "/var/lib/cni/xvm-cni",
    "controlPlane": {"type": "etcd", "endpoints": ["http://10.0.0.5:2379"]},
}


def with_cp(**cp: Any) -> dict[str, Any]:
    return {**SEED, "controlPlane": {**SEED["controlPlane"], **cp}}


def test_defaults_and_parsed_fields() -> None:
    net = networks.parse(SEED)
    assert net.etcd is not None and net.blocks is not None
    assert net.etcd.endpoints == (Endpoint("10.0.0.5", 2379, False),)
    assert (net.etcd.prefix, net.etcd.ttl, net.etcd.reclaim_after) == ("/xvm-cni", 15, 86400)
    assert net.l2.group is None  # no multicast group with a control plane
    assert net.slices is None and net.blocks.prefix == 26


def test_endpoints_tls_and_ipv6() -> None:
    settings = etcdconfig.parse({"endpoints": ["https://[fd00::5]:2379", "https://etcd2"],
                                 "caFile": "/etc/ca.pem", "certFile": "/etc/c.pem",
                                 "keyFile": "/etc/k.pem", "ttl": 30, "prefix": "/x"})
    assert settings.endpoints == (Endpoint("fd00::5", 2379, True), Endpoint("etcd2", 2379, True))
    assert str(settings.endpoints[0]) == "https://[fd00::5]:2379"
    assert settings.secure and settings.ttl == 30


@pytest.mark.parametrize(("cp", "fragment"), [
    ({"endpoints": []}, "endpoints"),
    ({"endpoints": "http://a:1"}, "endpoints"),
    ({"endpoints": [5]}, "endpoints"),
    ({"endpoints": ["ftp://a:1"]}, "http://"),
    ({"endpoints": ["http://a:99999"]}, "port"),
    ({"endpoints": ["http://a:x"]}, "port"),
    ({"endpoints": ["http://:2379"]}, "host"),
    ({"endpoints": ["http://a", "https://b"]}, "mixes"),
    ({"endpoints": ["https://a"]}, "caFile"),
    ({"caFile": "/ca.pem"}, "TLS"),
    ({"endpoints": ["https://a"], "caFile": "ca.pem"}, "absolute"),
    ({"endpoints": ["https://a"], "caFile": "/ca", "certFile": "/c"}, "keyFile"),
    ({"ttl": 1}, "ttl"),
    ({"ttl": "15"}, "ttl"),
    ({"ttl": True}, "ttl"),
    ({"prefix": "xvm"}, "prefix"),
    ({"prefix": "/xvm/"}, "prefix"),
    ({"reclaimAfter": 2}, "reclaimAfter"),
])
def test_bad_control_plane_sections_are_code_7(cp: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CniError) as info:
        networks.parse(with_cp(**cp))
    assert info.value.code == INVALID_CONFIG
    assert fragment in str(info.value)


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"blockSize": 8}, "blockSize"),
    ({"blockSize": 31}, "blockSize"),
    ({"perHostPrefix": 24}, "perHostPrefix"),
    ({"rangeStart": "10.244.0.10"}, "rangeStart"),
    ({"group": "239.1.1.2"}, "group"),
])
def test_l2_fields_that_do_not_fit_etcd_are_refused(extra: dict[str, Any],
                                                    fragment: str) -> None:
    with pytest.raises(CniError) as info:
        networks.parse({**SEED, **extra})
    assert info.value.code == INVALID_CONFIG
    assert fragment in str(info.value)


def test_without_control_plane_nothing_changes() -> None:
    raw = {k: v for k, v in SEED.items() if k != "controlPlane"}
    net = networks.parse(raw)
    assert net.etcd is None and net.blocks is None and net.slices is not None
    assert str(net.l2.group) == "239.1.1.1"


def test_candidates_start_per_host_and_prefer_held_blocks() -> None:
    subnet = ipaddress.IPv4Network("10.0.0.0/24")
    a = blocks.candidates(subnet, 26, "host-a", [])
    assert sorted(a) == sorted(blocks.block_key(b) for b in subnet.subnets(new_prefix=26))
    assert blocks.candidates(subnet, 26, "host-a", ["10.0.0.128_26"])[0] == "10.0.0.128_26"
    starts = {blocks.candidates(subnet, 26, f"host-{i}", [])[0] for i in range(20)}
    assert len(starts) > 1  # hosts do not all race for the same first block


def test_block_ipam_reads_only_blocks_inside_the_subnet(tmp_path: Path) -> None:
    blocks.write_claims(tmp_path, "me", ["10.244.0.64_26", "192.168.0.0_26", "junk"])
    ipam = BlockIpam(ipaddress.IPv4Network("10.244.0.0/16"),
                     ipaddress.IPv4Address("10.244.0.1"), tmp_path, None)
    pools = ipam.pools()
    assert [(str(p.first), str(p.last)) for p in pools] == [("10.244.0.64", "10.244.0.127")]
    assert ipam.usage(None).size == 64


def test_no_etcd_client_is_imported_until_an_etcd_network_is_served() -> None:
    code = ("import sys, xvmcni.agent.main, xvmcni.networks as n, xvmcni.cmd.plugin\n"
            f"n.parse({SEED!r})\n"
            "assert not [m for m in sys.modules if m.startswith(('pyetcd', 'grpc'))]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_requested_addresses_must_lie_in_this_hosts_blocks(tmp_path: Path) -> None:
    blocks.write_claims(tmp_path, "me", ["10.244.0.64_26"])
    ipam = BlockIpam(ipaddress.IPv4Network("10.244.0.0/16"),
                     ipaddress.IPv4Address("10.244.0.1"), tmp_path, None)
    ipam.validate([ipaddress.IPv4Address("10.244.0.70")])
    for wrong, fragment in (("10.244.1.5", "outside this host's address blocks"),
                            ("10.245.0.5", "outside subnet")):
        with pytest.raises(CniError) as info:
            ipam.validate([ipaddress.IPv4Address(wrong)])
        assert info.value.code == INVALID_CONFIG
        assert fragment in str(info.value)
