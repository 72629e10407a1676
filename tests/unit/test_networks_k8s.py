"""Parsing networks with controlPlane kubernetes: routed only, no 'podCIDR' (the
Node's), $PROTOCOL as the route protocol, and the Node's CIDRs from the agent's file."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from xvmcni import networks
from xvmcni.controlplane import k8sconfig
from xvmcni.errors import CniError


def raw(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "kube", "type": "xvm-cni",
                            "model": "routed", "hostInterface": "eth0",
                            "clusterCIDR": "10.244.0.0/16", "dataDir": str(tmp_path),
                            "controlPlane": {"type": "kubernetes"}}
    conf.update(extra)
    return conf


def test_parsed_without_pod_cidrs_until_the_agent_writes_them(tmp_path: Path) -> None:
    network = networks.parse(raw(tmp_path))
    assert network.k8s is not None and network.follows_peers
    assert networks.routed_settings(network).pod_cidrs == ()
    k8sconfig.write_node_state(network.state_dir, k8sconfig.NodeState(
        "vm-001", (ipaddress.ip_network("10.244.3.0/24"),), 200))
    settings = networks.routed_settings(network)
    assert [str(c) for c in settings.pod_cidrs] == ["10.244.3.0/24"]
    assert settings.route_protocol == 200


def test_protocol_from_the_environment(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTOCOL", "200")
    assert networks.parse(raw(tmp_path)).settings.route_protocol == 200  # type: ignore[union-attr]
    configured = networks.parse(raw(tmp_path, routeProtocol=204))
    assert configured.settings.route_protocol == 204  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "why"), [
    ({"model": "l2", "subnet": "10.1.0.0/16"}, "needs"),
    ({"podCIDR": "10.244.1.0/24"}, "does not apply"),
    ({"rangeStart": "10.244.1.10"}, "does not apply"),
])
def test_refused(tmp_path: Path, extra: dict[str, Any], why: str) -> None:
    with pytest.raises(CniError, match=why):
        networks.parse(raw(tmp_path, **extra))


def test_node_state_written_by_many_threads_at_once(tmp_path: Path) -> None:
    """The agent's watch and an ADD may write k8s-node.json together: every write
    lands whole, none fails, no temporary file is left."""
    import threading
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(50):
                k8sconfig.write_node_state(tmp_path, k8sconfig.NodeState(
                    f"n{i}", (ipaddress.ip_network(f"10.244.{i}.0/24"),), 202))
        except OSError as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert k8sconfig.read_node_state(tmp_path) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["k8s-node.json"]
