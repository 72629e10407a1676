"""Pod CIDRs claimed through a control plane (routed + etcd), with an in-memory
claimer standing in for etcd's compare-and-create."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.controlplane.etcd import ClaimsExhausted
from xvmcni.errors import INVALID_CONFIG, CniError
from xvmcni.ipam import podcidrs
from xvmcni.ipam.podcidrs import CidrClaimSettings

V4 = ipaddress.ip_network("10.244.0.0/22")
V6 = ipaddress.ip_network("fd00:244::/48")


class Store:
    """Claims of every host, as etcd holds them."""

    def __init__(self) -> None:
        self.claims: dict[str, str] = {}


class Claimer:
    def __init__(self, store: Store, me: str) -> None:
        self.store, self.me = store, me

    def owned(self, kind: str) -> list[str]:
        prefix = f"{kind}/"
        return sorted(k[len(prefix):] for k, host in self.store.claims.items()
                      if k.startswith(prefix) and host == self.me)

    def claim(self, kind: str, candidates: Iterable[str]) -> str:
        for item in candidates:
            if f"{kind}/{item}" not in self.store.claims:
                self.store.claims[f"{kind}/{item}"] = self.me
                return item
        raise ClaimsExhausted("all held")


def settings(*clusters: Any, v4: int = 24, v6: int = 64) -> CidrClaimSettings:
    return CidrClaimSettings(tuple(clusters),
                             tuple(v4 if c.version == 4 else v6 for c in clusters))


def test_hosts_get_distinct_cidrs_until_exhausted(tmp_path: Path) -> None:
    store = Store()
    got = []
    for i in range(4):  # a /22 holds four /24s
        held = podcidrs.hold_cidrs(Claimer(store, f"h{i}"), settings(V4), tmp_path / f"h{i}")
        assert len(held) == 1 and held[0].prefixlen == 24 and held[0].subnet_of(V4)
        got.append(held[0])
    assert len(set(got)) == 4
    with pytest.raises(ClaimsExhausted):
        podcidrs.hold_cidrs(Claimer(store, "h4"), settings(V4), tmp_path / "h4")


def test_a_host_keeps_its_cidr_across_restarts_and_a_lost_state_dir(tmp_path: Path) -> None:
    store = Store()
    first = podcidrs.hold_cidrs(Claimer(store, "a"), settings(V4, V6), tmp_path / "a")
    assert [c.version for c in first] == [4, 6]
    assert podcidrs.hold_cidrs(Claimer(store, "a"), settings(V4, V6), tmp_path / "a") == first
    # A reboot that lost the state dir: etcd's claim by host name wins.
    again = podcidrs.hold_cidrs(Claimer(store, "a"), settings(V4, V6), tmp_path / "new")
    assert again == first
    assert len(store.claims) == 2


def test_a_cidr_listed_but_reclaimed_is_taken_back_when_free(tmp_path: Path) -> None:
    store = Store()
    first = podcidrs.hold_cidrs(Claimer(store, "a"), settings(V4), tmp_path)
    store.claims.clear()  # gone longer than reclaimAfter
    assert podcidrs.hold_cidrs(Claimer(store, "a"), settings(V4), tmp_path) == first


def test_claims_file_is_what_the_plugin_reads(tmp_path: Path) -> None:
    held = podcidrs.hold_cidrs(Claimer(Store(), "a"), settings(V4, V6), tmp_path)
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["host"] == "a"
    assert podcidrs.held(tmp_path, settings(V4, V6)) == held
    # Entries of another size or outside the cluster are not ours.
    assert podcidrs.held(tmp_path, settings(V4, v4=25)) == ()


def test_ipv6_candidates_are_lazy_and_inside() -> None:
    big = ipaddress.ip_network("fd00::/32")  # 2**32 /64s: never listed whole
    first = next(podcidrs.candidates(big, 64, "host"))
    assert podcidrs.cidr_of_key(first).subnet_of(big)  # type: ignore[arg-type]


def conf(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": "rt", "type": "xvm-cni", "model": "routed",
        "hostInterface": "eth0", "clusterCIDR": ["10.244.0.0/16", "fd00:244::/48"],
        "dataDir": str(tmp_path),
        "controlPlane": {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"]}}
    raw.update(extra)
    return raw


def test_routed_with_etcd_parses_and_reads_claims(tmp_path: Path) -> None:
    net = networks.parse(conf(tmp_path, podCIDRPrefix=26))
    assert net.etcd is not None and net.cidrs is not None
    assert net.cidrs.prefix(4) == 26 and net.cidrs.prefix(6) == 64
    assert networks.routed_settings(net).pod_cidrs == ()
    podcidrs.hold_cidrs(Claimer(Store(), "a"), net.cidrs, net.state_dir)
    cidrs = networks.routed_settings(net).pod_cidrs
    assert [c.prefixlen for c in cidrs] == [26, 64]


def test_routed_with_etcd_and_an_explicit_pod_cidr_claims_nothing(tmp_path: Path) -> None:
    net = networks.parse(conf(tmp_path, podCIDR="10.244.7.0/24"))
    assert net.cidrs is None
    assert [str(c) for c in networks.routed_settings(net).pod_cidrs] == ["10.244.7.0/24"]


@pytest.mark.parametrize("extra", [
    {"clusterCIDR": None},
    {"podCIDRPrefix": 12},
    {"podCIDRPrefix": 31},
    {"podCIDRPrefixIPv6": 40},
    {"clusterCIDR": "10.244.0.0/16", "podCIDRPrefixIPv6": 64},
    {"rangeStart": "10.244.0.10"},
])
def test_bad_claim_settings_are_refused(tmp_path: Path, extra: dict[str, Any]) -> None:
    with pytest.raises(CniError) as err:
        networks.parse(conf(tmp_path, **extra))
    assert err.value.code == INVALID_CONFIG
