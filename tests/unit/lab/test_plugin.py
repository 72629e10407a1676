"""Which plugin and configuration a lab's hosts get."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvmcni.lab import plugin
from xvmcni.lab.model import Lab
from xvmcni.lab.names import LabError


def test_flavor_follows_the_executable_name() -> None:
    assert plugin.plugin_flavor("/usr/lib/cni/bridge") == "bridge"
    assert plugin.plugin_flavor("/x/bin/xvm-cni") == "xvm"
    assert plugin.config_file_name("xvm") == "10-xvm.conf"
    assert plugin.config_file_name("bridge") == "10-reference.conf"


def test_xvm_hosts_share_the_network_but_not_data_or_agent(tmp_path: Path) -> None:
    lab = Lab(name="xtc", plugin="", flavor="xvm", agent=True)
    one = plugin.host_config(lab, 1, tmp_path / "h1")
    two = plugin.host_config(lab, 2, tmp_path / "h2")
    assert {k: v for k, v in one.items() if k not in ("dataDir", "agentSocket")} == \
        plugin.XVM_CONFIG
    assert one["dataDir"] != two["dataDir"]
    assert one["agentSocket"] == lab.agent_socket("h1") != two["agentSocket"]
    lab.agent = False
    assert "agentSocket" not in plugin.host_config(lab, 1, tmp_path / "h1")


def test_reference_hosts_get_a_subnet_each(tmp_path: Path) -> None:
    lab = Lab(name="xtc", plugin="", flavor="bridge")
    subnets = {plugin.host_config(lab, i, tmp_path / f"h{i}")["ipam"]["subnet"]
               for i in (1, 2, 3)}
    assert subnets == {"10.88.1.0/24", "10.88.2.0/24", "10.88.3.0/24"}


def test_an_explicit_plugin_must_be_executable(tmp_path: Path) -> None:
    path = tmp_path / "plugin"
    path.write_text("#!/bin/sh\n")
    with pytest.raises(LabError, match="not an executable file"):
        plugin.find_plugin(str(path))
    path.chmod(0o755)
    assert plugin.find_plugin(str(path)) == str(path)


@pytest.mark.parametrize("model", ["l2", "routed"])
def test_etcd_hosts_are_valid_networks_that_find_each_other_in_etcd(
        tmp_path: Path, model: str) -> None:
    """--control etcd: every host's config parses, names the lab's etcd, and (routed)
    lists no pod CIDR and no peers: the host claims one and learns the others."""
    from xvmcni import networks
    lab = Lab(name="xtc", plugin="", flavor="xvm", agent=True, model=model, control="etcd",
              family="dual" if model == "routed" else "ipv4")
    config = plugin.host_config(lab, 1, tmp_path / "h1")
    assert config["controlPlane"]["type"] == "etcd"
    assert config["controlPlane"]["endpoints"] == ["http://172.30.0.2:2379"]
    assert "podCIDR" not in config and "group" not in config
    network = networks.parse(config)
    assert network.etcd is not None and network.static_peers is None
    if model == "routed":
        assert network.cidrs is not None and len(network.cidrs.cluster_cidrs) == 2
    else:
        assert network.blocks is not None and network.l2.group is None
