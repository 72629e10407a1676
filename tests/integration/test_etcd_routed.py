"""The ``routed`` model with the etcd control plane (encap vxlan) across a routed
underlay: three simulated hosts in two subnets behind a router, etcd in its own
namespace, an xvm-cnid per host, no 'podCIDR' anywhere.

Checked: every host claims a distinct pod CIDR of the cluster CIDR (and keeps it
when its agent restarts); pods on all hosts reach each other; every host holds
exactly one permanent neighbour, one FDB entry and one route per remote host, and
nothing else of ours; a host whose lease expires leaves every peer within the TTL
while keeping its own data path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdServer
from xvmcni.lab import invoke, plumbing, simhost

from .conftest import Host, start_agent, stop_agent
from .routed_lab import CLUSTER, NETWORK, Lab, fdb, ip, neighbours, ping, routes_of

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")]

TTL = 3
ETCD_ADDRESS = "172.31.1.5"
VXLAN_DEV = "xvmrv1"


class EtcdLab(Lab):
    etcd: EtcdServer | None = None

    def start_etcd(self) -> EtcdServer:
        netns = simhost.unique_name("xrE")
        simhost.create_host(self.switches["a"], netns, "petcd", f"{ETCD_ADDRESS}/24",
                            record=self.record)
        ip("-n", netns, "route", "add", "default", "via", "172.31.1.254")
        self.etcd = EtcdServer(self.tmp / "etcd", host=ETCD_ADDRESS, netns=netns,
                               client_port=2379, peer_port=2380)
        self.etcd.start()
        return self.etcd

    def destroy(self) -> None:
        for name, host in self.hosts.items():  # kept for a failure's diagnosis
            log = host.data_dir.parent / "agent.log"
            if log.exists():
                shutil.copy(log, self.tmp / f"{name}-agent.log")
        try:
            super().destroy()  # agents first: they must not outlive etcd's namespace
        finally:
            if self.etcd is not None:
                self.etcd.stop()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[EtcdLab]:
    made = EtcdLab(tmp_path)
    try:
        yield made
    finally:
        made.destroy()


def etcd_config(lab: EtcdLab, name: str, **extra: Any) -> dict[str, Any]:
    assert lab.etcd is not None
    return lab.config(name, podCIDR=None, controlPlane={
        "type": "etcd", "endpoints": [lab.etcd.endpoint], "ttl": TTL,
        "prefix": f"/xvm-test-{os.getpid()}"}, **extra)


def boot(lab: EtcdLab, name: str, **extra: Any) -> None:
    host = lab.hosts[name]
    conf_dir = host.data_dir.parent / "conf"
    conf_dir.mkdir(exist_ok=True)
    conf = {k: v for k, v in etcd_config(lab, name, **extra).items() if k != "agentSocket"}
    (conf_dir / "10-routed.conf").write_text(json.dumps(conf))
    start_agent(host, env={"XVM_CNI_HOSTNAME": name})


def claimed(host: Host) -> list[str]:
    try:
        data = json.loads((host.data_dir / NETWORK / "claims.json").read_text())
    except FileNotFoundError:
        return []
    return [str(c).replace("_", "/") for c in data["blocks"]]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def state(host: Host) -> tuple[list[str], list[str], list[str]]:
    """This host's programmed peers: route destinations, neighbour addresses (the
    remote CIDRs' network addresses, the onlink next hops), FDB destinations (the
    remote underlay addresses)."""
    return (sorted(r["dst"] for r in routes_of(host.name)),
            sorted(n["dst"] for n in neighbours(host.name, VXLAN_DEV)),
            sorted(e["dst"] for e in fdb(host.name, VXLAN_DEV)))


def expected(lab: EtcdLab, name: str, members: list[str],
             cidrs: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    others = [m for m in members if m != name]
    return (sorted(cidrs[m] for m in others),
            sorted(str(ipaddress.ip_network(cidrs[m]).network_address) for m in others),
            sorted(lab.hosts[m].sim.address.split("/")[0] for m in others))


def expect_peers(lab: EtcdLab, hosts: list[str], members: list[str],
                 cidrs: dict[str, str], timeout: float) -> None:
    for name in hosts:
        want = expected(lab, name, members, cidrs)
        try:
            wait_for(lambda name=name, want=want: state(lab.hosts[name]) == want,  # type: ignore[misc]
                     timeout, f"peers of {name} to be {want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; they are {state(lab.hosts[name])}") from None


def test_routed_vxlan_over_etcd_across_a_router(lab: EtcdLab) -> None:
    names = ["h1", "h2", "h3"]
    lab.build(tuple(names))
    lab.start_etcd()
    for name in names:
        boot(lab, name)
    for name in names:
        wait_for(lambda name=name: len(claimed(lab.hosts[name])) == 1,  # type: ignore[misc]
                 15, f"{name}'s pod CIDR claim")
    cidrs = {name: claimed(lab.hosts[name])[0] for name in names}
    assert len(set(cidrs.values())) == 3, f"hosts share a pod CIDR: {cidrs}"
    for cidr in cidrs.values():
        net = ipaddress.ip_network(cidr)
        assert net.prefixlen == 24 and net.subnet_of(ipaddress.ip_network(CLUSTER))

    pods: dict[str, tuple[str, str]] = {}
    for i, name in enumerate(names):
        pods[name] = lab.add_pod(name, etcd_config(lab, name), f"rt{i}")
        assert ipaddress.ip_address(pods[name][1]) in ipaddress.ip_network(cidrs[name])

    expect_peers(lab, names, names, cidrs, timeout=10)
    for src in names:
        for dst in names:
            if src != dst:
                assert ping(lab.hosts[src], pods[src][0], pods[dst][1]), f"{src} -> {dst}"

    # h3's agent dies: its lease expires and the others drop it within the TTL; h3
    # keeps its own data path.
    stop_agent(lab.hosts["h3"], signal.SIGKILL)
    gone = time.monotonic()
    expect_peers(lab, ["h1", "h2"], ["h1", "h2"], cidrs, timeout=TTL + 2)
    assert time.monotonic() - gone <= TTL + 2
    assert state(lab.hosts["h3"]) == expected(lab, "h3", names, cidrs)
    assert ping(lab.hosts["h1"], pods["h1"][0], pods["h2"][1])

    # etcd away: the data path stays, and an ADD allocates from the claimed CIDR.
    assert lab.etcd is not None
    lab.etcd.kill()
    extra = lab.add_pod("h1", etcd_config(lab, "h1"), "rt-extra")
    assert ipaddress.ip_address(extra[1]) in ipaddress.ip_network(cidrs["h1"])
    assert ping(lab.hosts["h1"], extra[0], pods["h2"][1])
    lab.etcd.start()

    # Back: it keeps its pod CIDR (its claim is found by name) and rejoins everywhere.
    boot(lab, "h3")
    expect_peers(lab, names, names, cidrs, timeout=10)
    assert claimed(lab.hosts["h3"]) == [cidrs["h3"]]
    assert ping(lab.hosts["h1"], pods["h1"][0], pods["h3"][1])
    assert ping(lab.hosts["h3"], pods["h3"][0], pods["h2"][1])


def test_pod_cidrs_exhausted(lab: EtcdLab) -> None:
    """Three agents race for the two /24s of a /23: two distinct winners; the third
    host's ADD fails with code 102 and says why."""
    names = ["h1", "h2", "h3"]
    lab.build(tuple(names))
    lab.start_etcd()
    small = {"clusterCIDR": "10.250.0.0/23", "podCIDRPrefix": 24}
    for name in names:
        boot(lab, name, **small)
    wait_for(lambda: sum(len(claimed(lab.hosts[n])) for n in names) == 2, 15,
             "two hosts to claim a pod CIDR")
    holders = [n for n in names if claimed(lab.hosts[n])]
    assert len({claimed(lab.hosts[n])[0] for n in holders}) == 2
    loser = next(n for n in names if n not in holders)
    host = lab.hosts[loser]
    res = host.cni("ADD", etcd_config(lab, loser, **small), "rt-none", host.new_pod())
    assert res.rc != 0 and res.out is not None, res.stdout
    assert res.out["code"] == 102, res.out
    assert "every pod CIDR" in res.out["msg"], res.out
    assert claimed(host) == []


DUAL = {"clusterCIDR": [CLUSTER, "fd00:250::/48"]}


def add_without_agent(lab: EtcdLab, name: str,
                      container: str) -> tuple[str, dict[str, Any]]:
    """ADD by the in-process plugin, no agent anywhere: the plugin claims itself,
    under the host name a runtime's environment gives it."""
    host = lab.hosts[name]
    pod = host.new_pod()
    plumbing.bring_up_lo(pod)
    env = {**invoke.cni_env("ADD", container, pod), "XVM_CNI_HOSTNAME": name}
    res = host.cni("ADD", etcd_config(lab, name, **DUAL), container, pod, env=env)
    assert res.rc == 0 and res.out is not None, f"{res.stdout} {res.stderr}"
    return pod, res.out


def test_dual_stack_claims_by_the_plugin_with_no_agent(lab: EtcdLab) -> None:
    """With no agent running, the first ADD on each host claims an IPv4 /24 and an
    IPv6 /64 itself; a second ADD keeps them; agents started later take over the
    same claims and connect the hosts in both families."""
    names = ["h1", "h3"]
    lab.build(tuple(names))
    lab.start_etcd()
    added = {n: add_without_agent(lab, n, f"nd-{n}") for n in names}
    results = {n: added[n][1] for n in names}
    cidrs = {n: claimed(lab.hosts[n]) for n in names}
    for name in names:
        assert [ipaddress.ip_network(c).prefixlen for c in cidrs[name]] == [24, 64], cidrs
        addresses = [ipaddress.ip_interface(i["address"]).ip for i in results[name]["ips"]]
        assert sorted(a.version for a in addresses) == [4, 6]
        assert all(any(a in ipaddress.ip_network(c) for c in cidrs[name]) for a in addresses)
    assert not set(cidrs["h1"]) & set(cidrs["h3"]), cidrs
    add_without_agent(lab, "h1", "nd-again")
    assert claimed(lab.hosts["h1"]) == cidrs["h1"]

    for name in names:
        boot(lab, name, **DUAL)
    v6 = {n: next(ipaddress.ip_interface(i["address"]).ip for i in results[n]["ips"]
                  if ":" in i["address"]) for n in names}
    wait_for(lambda: ping(lab.hosts["h1"], added["h1"][0], str(v6["h3"]), count=1), 15,
             "h1's pod to reach h3's pod over IPv6")
    assert ping(lab.hosts["h3"], added["h3"][0], str(results["h1"]["ips"][0]["address"]
                                                      ).split("/")[0])
    for name in names:
        assert claimed(lab.hosts[name]) == cidrs[name], "the agent kept the plugin's claims"
