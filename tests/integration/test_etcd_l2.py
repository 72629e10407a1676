"""``l2`` with the etcd control plane across a routed underlay that carries no
multicast: three simulated hosts in two underlay subnets behind a router
namespace, etcd in its own namespace, an xvm-cnid on every host.

Checked: pods on all hosts reach each other (and, as the control case, do not
without a control plane); exactly one all-zeros FDB entry per remote host and no
other permanent entry of ours; a host whose lease expires leaves every flood list
within the TTL; etcd stopped: pods keep talking and an ADD still works from a
known block; etcd back: the watches re-sync.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdServer
from xvmcni import plugin_file
from xvmcni.lab import plumbing, simhost

from .conftest import Host, ip, start_agent, stop_agent

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")]

TTL = 3
SUBNET_A, SUBNET_B = "172.31.1", "172.31.2"
ROUTER_A, ROUTER_B = f"{SUBNET_A}.254", f"{SUBNET_B}.254"
ETCD_ADDRESS = f"{SUBNET_A}.5"


@dataclass
class RoutedLab:
    """Everything the test made, removed in reverse by ``teardown``."""

    tmp: Path
    namespaces: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    etcd: EtcdServer | None = None

    def record(self, netns: str) -> None:
        self.namespaces.append(netns)

    def teardown(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                stop_agent(host, signal.SIGKILL)
            simhost.remove_all(host.pods)
        if self.etcd is not None:
            self.etcd.stop()
        simhost.remove_all(list(reversed(self.namespaces)))


def nsenter(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def build(lab: RoutedLab) -> tuple[str, str]:
    """Two switches, a router between them (forwarding on, no multicast routing), an
    etcd namespace on subnet A. Returns the switch namespaces."""
    switch_a, switch_b = simhost.unique_name("xeA"), simhost.unique_name("xeB")
    simhost.create_switch(switch_a, lab.record)
    simhost.create_switch(switch_b, lab.record)
    router = simhost.unique_name("xeR")
    simhost.create_host(switch_a, router, "rtr", f"{ROUTER_A}/24", record=lab.record)
    ip("-n", switch_b, "link", "add", "rtr", "type", "veth", "peer", "name", "eth1",
       "netns", router)
    ip("-n", switch_b, "link", "set", "rtr", "master", plumbing.SWITCH_BRIDGE, "up")
    ip("-n", router, "addr", "add", f"{ROUTER_B}/24", "dev", "eth1")
    ip("-n", router, "link", "set", "eth1", "up")
    # Set explicitly: a new namespace's default is not the same on every kernel.
    forward = nsenter(router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    assert forward.returncode == 0, forward.stderr
    etcd_ns = simhost.unique_name("xeE")
    simhost.create_host(switch_a, etcd_ns, "etcd", f"{ETCD_ADDRESS}/24", record=lab.record)
    ip("-n", etcd_ns, "route", "add", "default", "via", ROUTER_A)
    lab.etcd = EtcdServer(lab.tmp / "etcd", host=ETCD_ADDRESS, netns=etcd_ns,
                          client_port=2379, peer_port=2380)
    return switch_a, switch_b


def add_host(lab: RoutedLab, switch: str, address: str, router: str, index: int) -> Host:
    netns = simhost.unique_name("xeH")
    sim = simhost.create_host(switch, netns, f"h{index}", f"{address}/24", record=lab.record)
    ip("-n", netns, "route", "add", "default", "via", router)
    host = Host(sim=sim, data_dir=lab.tmp / f"h{index}" / "data")
    host.data_dir.mkdir(parents=True)
    host.plugin = str(plugin_file.write(lab.tmp / f"h{index}" / "bin" / "xvm-cni"))
    lab.hosts.append(host)
    return host


def network(host: Host, etcd: EtcdServer | None, **extra: Any) -> dict[str, Any]:
    conf = host.config(**extra)
    if etcd is not None:
        conf["controlPlane"] = {"type": "etcd", "endpoints": [etcd.endpoint], "ttl": TTL,
                                "prefix": f"/xvm-test-{os.getpid()}"}
        conf["blockSize"] = 28
    return conf


def write_conf(host: Host, conf: dict[str, Any]) -> None:
    conf_dir = host.data_dir.parent / "conf"
    conf_dir.mkdir(exist_ok=True)
    without_socket = {k: v for k, v in conf.items() if k != "agentSocket"}
    (conf_dir / "10-xvm.conf").write_text(json.dumps(without_socket))


def name_of(host: Host) -> str:
    return f"h-{host.sim.address.split('/')[0]}"


def boot_agent(host: Host) -> None:
    start_agent(host, env={"XVM_CNI_HOSTNAME": name_of(host)})


def pod_address(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def fdb(host: Host) -> list[dict[str, Any]]:
    """The VXLAN device's own FDB entries (those with a remote: ``dst``)."""
    out = subprocess.run(["bridge", "-j", "-n", host.name, "fdb", "show", "dev", "xvmvx10"],
                         capture_output=True, text=True, check=True).stdout
    return [e for e in json.loads(out or "[]") if "dst" in e]


def flood_list(host: Host) -> list[str]:
    return sorted(e["dst"] for e in fdb(host) if e["mac"] == "00:00:00:00:00:00")


def underlay(host: Host) -> str:
    return host.sim.address.split("/")[0]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pings(host: Host, pod: str, address: str, count: int = 1) -> bool:
    res = host.in_ns(plumbing.netns_path(pod) if not pod.startswith("/") else pod,
                     "busybox", "ping", "-c", str(count), "-W", "2", address)
    return res.returncode == 0


def expect_flood_lists(hosts: list[Host], members: list[Host], timeout: float) -> None:
    for host in members:
        others = sorted(underlay(h) for h in members if h is not host)
        wait_for(lambda host=host, others=others: flood_list(host) == others,  # type: ignore[misc]
                 timeout, f"flood list of {host.name} to be {others}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[RoutedLab]:
    made = RoutedLab(tmp_path)
    try:
        yield made
    finally:
        made.teardown()


def three_hosts(lab: RoutedLab) -> list[Host]:
    switch_a, switch_b = build(lab)
    return [add_host(lab, switch_a, f"{SUBNET_A}.11", ROUTER_A, 1),
            add_host(lab, switch_a, f"{SUBNET_A}.12", ROUTER_A, 2),
            add_host(lab, switch_b, f"{SUBNET_B}.13", ROUTER_B, 3)]


def test_multicast_does_not_cross_the_router(lab: RoutedLab) -> None:
    """The control case: without a control plane, the host behind the router is cut off."""
    hosts = three_hosts(lab)
    pods, addresses = [], []
    for i, host in enumerate(hosts):
        pod = host.new_pod()
        conf = network(host, None)
        addresses.append(pod_address(host.add(conf, f"mc{i}", pod)))
        pods.append(pod)
    assert pings(hosts[0], pods[0], addresses[1], count=2), "same subnet must work"
    assert not pings(hosts[0], pods[0], addresses[2], count=2)
    assert not pings(hosts[2], pods[2], addresses[0], count=2)


def test_l2_over_etcd_across_a_router(lab: RoutedLab) -> None:
    hosts = three_hosts(lab)
    assert lab.etcd is not None
    lab.etcd.start()
    for host in hosts:
        write_conf(host, network(host, lab.etcd))
        boot_agent(host)
    pods, addresses = [], []
    for i, host in enumerate(hosts):
        pod = host.new_pod()
        conf = network(host, lab.etcd)
        addresses.append(pod_address(host.add(conf, f"et{i}", pod)))
        pods.append(pod)
    blocks = {str(ipaddress.ip_network(f"{a}/28", strict=False)) for a in addresses}
    assert len(blocks) == 3, f"hosts share a block: {addresses}"
    for host in hosts:
        claims = json.loads((host.data_dir / "xvm-network" / "claims.json").read_text())
        assert claims["host"] == name_of(host) and len(claims["blocks"]) == 1

    expect_flood_lists(hosts, hosts, timeout=10)
    for i, host in enumerate(hosts):
        for j, address in enumerate(addresses):
            if i != j:
                assert pings(host, pods[i], address), f"pod {i} -> pod {j}"
    for host in hosts:
        permanent = [e for e in fdb(host) if e.get("state") == "permanent"]
        assert sorted(e["dst"] for e in permanent) == flood_list(host)
        assert all(e["mac"] == "00:00:00:00:00:00" for e in permanent), permanent
        link = json.loads(ip("-j", "-d", "-n", host.name, "link", "show", "xvmvx10"))[0]
        assert "group" not in link["linkinfo"]["info_data"]

    # Host 3's agent dies: its lease expires and the others drop it within the TTL.
    stop_agent(hosts[2], signal.SIGKILL)
    gone = time.monotonic()
    expect_flood_lists(hosts, hosts[:2], timeout=TTL + 2)
    assert time.monotonic() - gone <= TTL + 2
    assert flood_list(hosts[2]) == sorted([underlay(hosts[0]), underlay(hosts[1])]), \
        "a host without its agent keeps its data path"
    boot_agent(hosts[2])
    expect_flood_lists(hosts, hosts, timeout=10)
    assert pings(hosts[0], pods[0], addresses[2])

    # etcd away: nothing is unprogrammed, pods keep talking, ADD works from a known block.
    lab.etcd.kill()
    time.sleep(TTL + 1)
    for host in hosts:
        assert flood_list(host) == sorted(underlay(h) for h in hosts if h is not host)
    assert pings(hosts[0], pods[0], addresses[2], count=3)
    assert pings(hosts[2], pods[2], addresses[1], count=3)
    extra = hosts[0].new_pod()
    added = hosts[0].add(network(hosts[0], lab.etcd), "et-extra", extra)
    assert pod_address(added) in {str(a) for a in ipaddress.ip_network(
        json.loads((hosts[0].data_dir / "xvm-network" / "claims.json").read_text())
        ["blocks"][0].replace("_", "/"))}
    assert pings(hosts[0], extra, addresses[2])

    # etcd back: the watches resume; a host that then goes is dropped everywhere.
    lab.etcd.start()
    stop_agent(hosts[1], signal.SIGKILL)
    expect_flood_lists(hosts, [hosts[0], hosts[2]], timeout=TTL + 15)
    boot_agent(hosts[1])
    expect_flood_lists(hosts, hosts, timeout=15)
    assert pings(hosts[1], pods[1], addresses[2])

    # Host 1 leaves (its last containers go): its record is withdrawn at once.
    conf = network(hosts[0], lab.etcd)
    for container, pod in (("et0", pods[0]), ("et-extra", extra)):
        assert hosts[0].cni("DEL", conf, container, pod).rc == 0
    expect_flood_lists(hosts, hosts[1:], timeout=TTL)
    # It joins again with its agent down: the in-process ADD programs the flood list
    # from the agent's cached peer set, and the others learn its pod from its floods.
    stop_agent(hosts[0])
    again = hosts[0].new_pod()
    rejoined = hosts[0].add(conf, "et-again", again)
    assert flood_list(hosts[0]) == sorted(underlay(h) for h in hosts[1:])
    assert pings(hosts[0], again, addresses[2])
    assert pod_address(rejoined) != addresses[1]
