"""doctor's check of this host's Node (Kubernetes control plane): present, with pod
CIDRs, and carrying the annotations the kernel would publish."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

from xvmcni.controlplane.base import Peer
from xvmcni.controlplane.k8sconfig import K8sSettings, publish_keys
from xvmcni.diagnose.k8speers import _own_node

NET = "knet"
MAC_KEY, UNDERLAY_KEY = publish_keys(NET)
ME = Peer("h1", ipaddress.ip_address("192.0.2.11"), "02:00:c0:00:02:0b", ("10.244.1.0/24",))


def node(annotations: dict[str, str] | None = None,
         cidrs: tuple[str, ...] = ("10.244.1.0/24",)) -> dict[str, Any]:
    return {"metadata": {"name": "h1", "annotations": annotations or {}},
            "spec": {"podCIDRs": list(cidrs)}}


def check(found_node: dict[str, Any] | None, expected: Peer | None = ME,
          encap: str = "vxlan") -> list[tuple[str, str, str]]:
    network: Any = SimpleNamespace(name=NET)
    return [(f.status, f.subject, f.cause)
            for f in _own_node(found_node, "h1", K8sSettings(), network, expected, encap)]


def statuses(found: list[tuple[str, str, str]]) -> list[str]:
    return [s for s, _, _ in found]


def test_published_and_current_passes() -> None:
    found = check(node({MAC_KEY: ME.vtep_mac, UNDERLAY_KEY: "192.0.2.11"}))
    assert statuses(found) == ["ok", "ok"], found
    assert "10.244.1.0/24" in found[0][2]


def test_missing_node_fails_naming_it() -> None:
    found = check(None)
    assert statuses(found) == ["fail"] and "h1" in found[0][2], found


def test_node_without_pod_cidrs_fails() -> None:
    found = check(node(cidrs=()))
    assert statuses(found) == ["fail"] and "spec.podCIDRs" in found[0][2], found


def test_annotations_absent_after_join_fail() -> None:
    found = check(node())
    assert statuses(found) == ["ok", "fail"] and "carries no" in found[1][2], found


def test_stale_mac_named_with_both_values() -> None:
    found = check(node({MAC_KEY: "02:00:00:00:00:01", UNDERLAY_KEY: "192.0.2.11"}))
    assert statuses(found) == ["ok", "fail"], found
    assert "stale" in found[1][2] and ME.vtep_mac in found[1][2], found
    assert "02:00:00:00:00:01" in found[1][2], found


def test_encap_none_publishes_no_mac() -> None:
    found = check(node({UNDERLAY_KEY: "192.0.2.11"}), encap="none")
    assert statuses(found) == ["ok", "ok"], found


def test_not_joined_checks_no_annotations() -> None:
    assert statuses(check(node(), expected=None)) == ["ok"]
