"""networks.parse(): the seed's configuration format (common fields, the l2 model's and
the slice IPAM's sections), defaults and every refusal."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from xvmcni.ipam.slices import SliceSettings
from xvmcni.models.l2 import DEFAULT_GROUP, DEFAULT_PORT


def parse(raw: dict[str, Any]) -> SimpleNamespace:
    """The three sections of a parsed network as one flat view, for terse asserts."""
    net = networks.parse(raw)
    slices = net.slices or SliceSettings()
    return SimpleNamespace(**{**vars(net.config), **vars(net.l2), **vars(slices),
                              "state_dir": net.state_dir, "network": net})

SEED: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "xvm-network",
    "type": "xvm-cni",
    "hostInterface": "eth0",
    "vxlanID": 10,
    "mtu": 1500,
    "subnet": "10.244.0.0/16",
    "gateway": "10.244.0.1",
    "dataDir": "/var/lib/cni/xvm-cni",
}

DROP = object()  # marks a key to remove from the seed


def config(**changes: Any) -> dict[str, Any]:
    out = dict(SEED)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_seed_config_parses() -> None:
    conf = parse(config())
    assert conf.cni_version == "1.0.0"
    assert conf.name == "xvm-network"
    assert conf.host_interface == "eth0"
    assert conf.vxlan_id == 10
    assert conf.mtu == 1500
    assert conf.subnet == IPv4Network("10.244.0.0/16")
    assert conf.gateway == IPv4Address("10.244.0.1")
    assert conf.data_dir == Path("/var/lib/cni/xvm-cni")
    assert conf.state_dir == Path("/var/lib/cni/xvm-cni/xvm-network")
    assert conf.ipam is None
    assert conf.prev_result is None
    assert conf.raw == SEED


def test_defaults() -> None:
    conf = parse(config(gateway=DROP, mtu=DROP, dataDir=DROP, subnet="10.50.8.0/21"))
    assert conf.gateway == IPv4Address("10.50.8.1")  # first address of the subnet
    assert conf.group == DEFAULT_GROUP == IPv4Address("239.1.1.1")
    assert conf.port == DEFAULT_PORT == 8472
    assert conf.mtu == 1500
    assert conf.data_dir == Path("/var/lib/cni/xvm-cni")
    assert conf.range_start is None
    assert conf.range_end is None
    assert conf.per_host_prefix is None
    assert conf.ip_masq is False
    assert conf.routes == []
    assert conf.log_level == "info"


def test_missing_cni_version_means_0_1_0() -> None:
    assert parse(config(cniVersion=DROP)).cni_version == "0.1.0"


def test_optional_fields() -> None:
    conf = parse(config(rangeStart="10.244.10.0", rangeEnd="10.244.10.255", perHostPrefix=20,
                        group="239.9.9.9", port=4789, ipMasq=True, logLevel="DEBUG",
                        routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16",
                                                       "gw": "10.244.0.1"}]))
    assert conf.range_start == IPv4Address("10.244.10.0")
    assert conf.range_end == IPv4Address("10.244.10.255")
    assert conf.per_host_prefix == 20
    assert conf.group == IPv4Address("239.9.9.9")
    assert conf.port == 4789
    assert conf.ip_masq is True
    assert conf.log_level == "debug"
    assert [str(r.dst) for r in conf.routes] == ["0.0.0.0/0", "192.168.0.0/16"]
    assert conf.routes[1].gw == IPv4Address("10.244.0.1")


@pytest.mark.parametrize(
    "ipam",
    [
        {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]]},
        {"type": "host-local", "subnet": "10.99.0.0/16"},
    ],
    ids=["ranges", "subnet"],
)
def test_subnet_from_delegated_ipam(ipam: dict[str, Any]) -> None:
    conf = parse(config(subnet=DROP, gateway=DROP, ipam=ipam))
    assert conf.subnet == IPv4Network("10.99.0.0/16")
    assert conf.gateway == IPv4Address("10.99.0.1")
    assert conf.ipam == ipam


def test_top_level_subnet_wins_over_ipam() -> None:
    conf = parse(config(ipam={"type": "host-local",
                              "ranges": [[{"subnet": "10.99.0.0/16"}]]}))
    assert conf.subnet == IPv4Network("10.244.0.0/16")


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("vni-zero", {"vxlanID": 0}, INVALID_CONFIG, "vxlanID"),
    ("vni-too-big", {"vxlanID": 16777216}, INVALID_CONFIG, "16777215"),
    ("vni-string", {"vxlanID": "10"}, INVALID_CONFIG, "vxlanID"),
    ("vni-bool", {"vxlanID": True}, INVALID_CONFIG, "boolean"),
    ("vni-missing", {"vxlanID": DROP}, INVALID_CONFIG, "vxlanID"),
    ("subnet-host-bits", {"subnet": "10.244.0.1/16"}, INVALID_CONFIG, "host bits"),
    ("subnet-not-cidr", {"subnet": "notacidr"}, INVALID_CONFIG, "notacidr"),
    ("subnet-ipv6", {"subnet": "fd00:10:244::/64"}, INVALID_CONFIG, "IPv6"),
    ("subnet-missing", {"subnet": DROP}, INVALID_CONFIG, "subnet"),
    ("subnet-too-small", {"subnet": "10.244.0.0/31", "gateway": DROP}, INVALID_CONFIG,
     "too small"),
    ("gateway-outside", {"gateway": "10.245.0.1"}, INVALID_CONFIG, "10.245.0.1"),
    ("gateway-network", {"gateway": "10.244.0.0"}, INVALID_CONFIG, "10.244.0.0"),
    ("gateway-broadcast", {"gateway": "10.244.255.255"}, INVALID_CONFIG, "10.244.255.255"),
    ("gateway-not-ip", {"gateway": "gw"}, INVALID_CONFIG, "gateway"),
    ("no-host-interface", {"hostInterface": DROP}, INVALID_CONFIG, "hostInterface"),
    ("empty-host-interface", {"hostInterface": ""}, INVALID_CONFIG, "hostInterface"),
    ("no-name", {"name": DROP}, INVALID_CONFIG, "name"),
    ("bad-name-space", {"name": "xvm network"}, INVALID_CONFIG, "xvm network"),
    ("bad-name-slash", {"name": "../etc"}, INVALID_CONFIG, "../etc"),
    ("name-not-string", {"name": 5}, INVALID_CONFIG, "name"),
    ("range-start-outside", {"rangeStart": "10.245.0.10"}, INVALID_CONFIG, "rangeStart"),
    ("range-end-outside", {"rangeEnd": "192.168.0.1"}, INVALID_CONFIG, "rangeEnd"),
    ("range-inverted", {"rangeStart": "10.244.0.20", "rangeEnd": "10.244.0.10"},
     INVALID_CONFIG, "after"),
    ("mtu-low", {"mtu": 575}, INVALID_CONFIG, "mtu"),
    ("mtu-high", {"mtu": 65536}, INVALID_CONFIG, "mtu"),
    ("mtu-string", {"mtu": "1500"}, INVALID_CONFIG, "mtu"),
    ("ipam-without-type", {"ipam": {"subnet": "10.244.0.0/16"}}, INVALID_CONFIG, "type"),
    ("ipam-not-object", {"ipam": "host-local"}, INVALID_CONFIG, "ipam"),
    ("group-not-multicast", {"group": "10.1.1.1"}, INVALID_CONFIG, "multicast"),
    ("port-zero", {"port": 0}, INVALID_CONFIG, "port"),
    ("per-host-prefix-too-long", {"perHostPrefix": 31}, INVALID_CONFIG, "perHostPrefix"),
    ("per-host-prefix-shorter-than-subnet", {"perHostPrefix": 8}, INVALID_CONFIG,
     "perHostPrefix"),
    ("log-level", {"logLevel": "loud"}, INVALID_CONFIG, "logLevel"),
    ("bridge-too-long", {"bridge": "b" * 16}, INVALID_CONFIG, "bridge"),
    ("route-without-dst", {"routes": [{"gw": "10.244.0.1"}]}, INVALID_CONFIG, "dst"),
    ("route-bad-dst", {"routes": [{"dst": "nowhere"}]}, INVALID_CONFIG, "nowhere"),
    ("ip-masq-string", {"ipMasq": "yes"}, INVALID_CONFIG, "ipMasq"),
    ("cni-version-unsupported", {"cniVersion": "9.9.9"}, INCOMPATIBLE_VERSION, "9.9.9"),
    ("cni-version-number", {"cniVersion": 1.0}, INVALID_CONFIG, "cniVersion"),
    ("prev-result-garbage", {"prevResult": {"ips": [{"address": "nope"}]}}, DECODE_FAILURE,
     "result"),
]


@pytest.mark.parametrize(("changes", "code", "fragment"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_config(changes: dict[str, Any], code: int, fragment: str) -> None:
    with pytest.raises(CniError) as info:
        parse(config(**changes))
    err = info.value
    assert err.code == code
    # The message must point at what is wrong, not just say "invalid".
    assert fragment in str(err)


def test_delegated_ipam_without_any_subnet() -> None:
    with pytest.raises(CniError) as info:
        parse(config(subnet=DROP, gateway=DROP, ipam={"type": "host-local"}))
    assert info.value.code == INVALID_CONFIG
    assert "subnet" in info.value.msg


def test_error_object_shape() -> None:
    with pytest.raises(CniError) as info:
        parse(config(vxlanID=0))
    out = info.value.to_dict("1.0.0")
    assert out["cniVersion"] == "1.0.0"
    assert out["code"] == INVALID_CONFIG
    assert "vxlanID" in out["msg"]


@pytest.mark.parametrize("overrides", [{"agentSocket": 5}, {"agentTimeout": "30"},
                                       {"agentTimeout": 0}, {"agentTimeout": True}])
def test_agent_fields_are_checked(overrides: dict[str, Any]) -> None:
    with pytest.raises(CniError) as info:
        parse({**SEED, **overrides})
    assert info.value.code == 7


def test_agent_fields_accepted() -> None:
    parse({**SEED, "agentSocket": "/run/x.sock", "agentTimeout": 2.5})


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"model": "mesh"}, "model"),
    ({"model": 3}, "model"),
    ({"controlPlane": {"type": "etcd"}}, "controlPlane"),
    ({"controlPlane": "multicast"}, "controlPlane"),
    ({"agentTimeout": float("inf")}, "agentTimeout"),
    ({"routes": [{"dst": "10.0.0.0/8", "gw": 167772161}]}, "gw"),
])
def test_unknown_parts_and_odd_values_are_refused(changes: dict[str, Any],
                                                  fragment: str) -> None:
    with pytest.raises(CniError) as info:
        parse(config(**changes))
    assert info.value.code == INVALID_CONFIG
    assert fragment in str(info.value)


def test_model_and_control_plane_defaults() -> None:
    conf = parse(config())
    assert conf.model == "l2"
    assert conf.control_plane == "multicast"
    assert parse(config(model="l2", controlPlane={"type": "multicast"})).model == "l2"
