"""KubernetesControlPlane against a fake API (no server): peers and this host's CIDRs
from a list, nothing announced while the API server is unreachable, malformed Nodes
reported once and left out, annotations patched once after publish."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xvmcni.controlplane.base import Peer
from xvmcni.controlplane.k8sapi import ApiError, ApiUnavailable
from xvmcni.controlplane.k8sconfig import K8sSettings, publish_keys, read_node_state
from xvmcni.controlplane.kubernetes import KubernetesControlPlane

NET = "kube"


def node(name: str, cidr: str, address: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "annotations": annotations},
            "spec": {"podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


class FakeApi:
    def __init__(self, nodes: list[dict[str, Any]], up: bool = True) -> None:
        self.nodes = nodes
        self.up = up
        self.patches: list[tuple[str, Any]] = []
        self.closed = threading.Event()

    def list(self, path: str, params: Any = None) -> tuple[str, list[dict[str, Any]]]:
        if not self.up:
            raise ApiUnavailable("connection refused")
        return "10", list(self.nodes)

    def watch(self, path: str, version: str, timeout: int,
              params: Any = None) -> Iterator[dict[str, Any]]:
        self.closed.wait(timeout)
        raise ApiUnavailable("closed")
        yield {}  # a generator

    def get(self, path: str) -> dict[str, Any]:
        name = path.rsplit("/", 1)[1]
        for item in self.nodes:
            if item["metadata"]["name"] == name:
                return item
        raise ApiError(404, f"nodes {name!r} not found")

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        self.patches.append((path, body))
        # Applied in place: the reflector's copy holds these very dicts, as if the
        # watch had delivered the change.
        annotations = self.get(path)["metadata"]["annotations"]
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return {}

    def close(self) -> None:
        self.closed.set()


def wait(cond: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def plane(tmp_path: Path, api: FakeApi, **settings: Any) -> KubernetesControlPlane:
    return KubernetesControlPlane(K8sSettings(node_name="n1", **settings), NET, tmp_path,
                                  "vxlan", 202, connect=lambda: api)  # type: ignore[arg-type,return-value]


def test_peers_and_own_cidrs_from_the_list(tmp_path: Path) -> None:
    api = FakeApi([node("n1", "10.244.1.0/24", "10.0.0.1"),
                   node("n2", "10.244.2.0/24", "10.0.0.2")])
    cp = plane(tmp_path, api)
    seen: list[list[Peer]] = []
    cp.watch(seen.append)
    try:
        wait(lambda: bool(seen))
        assert [(p.name, str(p.underlay), p.pod_cidrs) for p in seen[-1]] == [
            ("n2", "10.0.0.2", ("10.244.2.0/24",))]
        state = read_node_state(tmp_path)
        assert state is not None and state.node == "n1"
        assert state.pod_cidrs == (ipaddress.ip_network("10.244.1.0/24"),)
    finally:
        cp.close()


def test_nothing_announced_while_the_api_server_is_away(tmp_path: Path) -> None:
    api = FakeApi([node("n2", "10.244.2.0/24", "10.0.0.2")], up=False)
    cp = plane(tmp_path, api)
    seen: list[list[Peer]] = []
    cp.watch(seen.append)
    try:
        # publish() before any list (family change included) must not announce [].
        cp.publish(Peer("n1", ipaddress.ip_address("fd00::1"), "02:00:00:00:00:01"))
        time.sleep(0.5)
        assert seen == []
        api.up = True
        wait(lambda: bool(seen), timeout=15)
        assert [p.name for p in seen[-1]] == ["n2"]
    finally:
        cp.close()


def test_malformed_node_reported_once_and_left_out(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    bad = node("n3", "10.244.3.0/24", "10.0.0.3")
    bad["spec"]["podCIDRs"] = ["10.244.3.0/33"]
    api = FakeApi([node("n2", "10.244.2.0/24", "10.0.0.2"), bad])
    cp = plane(tmp_path, api)
    seen: list[list[Peer]] = []
    with caplog.at_level(logging.ERROR, logger="xvmcni.controlplane.kubernetes"):
        cp.watch(seen.append)
        try:
            wait(lambda: bool(seen))
            cp._nodes_changed({n["metadata"]["name"]: n for n in api.nodes}, set())
        finally:
            cp.close()
    assert [p.name for p in seen[-1]] == ["n2"]
    lines = [r.getMessage() for r in caplog.records if "n3" in r.getMessage()]
    assert len(lines) == 1 and "'10.244.3.0/33' is not a CIDR" in lines[0], lines


def test_publish_patches_our_node_once(tmp_path: Path) -> None:
    api = FakeApi([node("n1", "10.244.1.0/24", "10.0.0.1")])
    cp = plane(tmp_path, api)
    cp.watch(lambda peers: None)
    try:
        wait(cp.reflector.synced.is_set)
        me = Peer("n1", ipaddress.ip_address("10.0.0.1"), "02:aa:bb:cc:dd:ee")
        cp.publish(me)
        wait(lambda: bool(api.patches))
        cp.publish(me)
        time.sleep(0.3)
        mac_key, underlay_key = publish_keys(NET)
        assert api.patches == [("/api/v1/nodes/n1", {"metadata": {"annotations": {
            mac_key: "02:aa:bb:cc:dd:ee", underlay_key: "10.0.0.1"}}})]
        cp.unpublish()
        wait(lambda: len(api.patches) == 2)
        assert api.patches[1][1] == {"metadata": {"annotations": {mac_key: None,
                                                                  underlay_key: None}}}
    finally:
        cp.close()
